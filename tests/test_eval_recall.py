"""Open-world AR@k (docs/protocols.md#42-open-world-ar): the fast matcher and the pycocotools backend equal an
independent, literal pycocotools-based implementation, and the seen-class budget rule holds."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ovis.eval import evaluate
from ovis.eval.protocols import flag_seen
from ovis.eval.recall import AUC_BUDGETS, compute_recall, oln_auc
from ovis.eval.synthetic import class_agnostic, synthetic_detections

REAL = Path(__file__).parent / "data" / "real"
VAL = REAL / "coco_mini" / "annotations" / "instances_val2017.json"
VOC = {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}
BUDGETS = (10, 20, 30, 50, 100, 300, 500, 1000, 1500)


class LiteralSeenEval(COCOeval):
    """docs/protocols.md#42-open-world-ar written out: seen GT ignored in matching; detections whose IoU-0.5 match is a
    seen GT are deleted from the image's list before accumulation."""

    def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802,N803
        p = self.params
        gt = [g for c in p.catIds for g in self._gts[imgId, c]]
        dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if not gt and not dt:
            return None
        ign = [int(bool(g["iscrowd"]) or g["ignored_split"] == 1 or not aRng[0] <= g["area"] <= aRng[1]) for g in gt]
        gorder = np.argsort(ign, kind="mergesort")
        gt = [gt[i] for i in gorder]
        ign = np.array([ign[i] for i in gorder])
        dorder = np.argsort([-d["score"] for d in dt], kind="mergesort")[:maxDet]
        dt = [dt[i] for i in dorder]
        ious = self.ious[imgId, catId]
        ious = ious[:, gorder] if len(ious) else ious
        T, G, D = len(p.iouThrs), len(gt), len(dt)
        gtm, dtm, dtig = np.zeros((T, G)), np.zeros((T, D)), np.zeros((T, D))
        seen_hit = np.zeros(D, dtype=bool)
        for ti, t in enumerate(p.iouThrs):
            for di in range(D):
                best, m = min(t, 1 - 1e-10), -1
                for gi in range(G):
                    if gtm[ti, gi] > 0 and not gt[gi]["iscrowd"]:
                        continue
                    if m > -1 and ign[m] == 0 and ign[gi] == 1:
                        break
                    if ious[di, gi] >= best:
                        best, m = ious[di, gi], gi
                if m == -1:
                    continue
                dtig[ti, di], dtm[ti, di], gtm[ti, m] = ign[m], gt[m]["id"], dt[di]["id"]
                if ti == 0:
                    seen_hit[di] = gt[m]["ignored_split"] == 1
        outside = np.array([not aRng[0] <= d["area"] <= aRng[1] for d in dt]).reshape(1, D)
        dtig = np.logical_or(dtig, np.logical_and(dtm == 0, np.repeat(outside, T, 0)))
        keep = ~seen_hit
        return {
            "image_id": imgId, "category_id": catId, "aRng": aRng, "maxDet": maxDet,
            "dtIds": [d["id"] for d, k in zip(dt, keep) if k], "gtIds": [g["id"] for g in gt],
            "dtMatches": dtm[:, keep], "gtMatches": gtm, "dtScores": [d["score"] for d, k in zip(dt, keep) if k],
            "gtIgnore": ign, "dtIgnore": dtig[:, keep],
        }


def literal_metrics(gt: dict, dets: list[dict], iou_type: str, budgets=BUDGETS) -> tuple[np.ndarray, dict]:
    """Recall array and AR@k / AR_s,m,l@100 / AUC from LiteralSeenEval (all budgets by value)."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        dets = [{k: v for k, v in d.items() if not (iou_type == "segm" and k == "bbox")} for d in dets]
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(dets)))
        ev = LiteralSeenEval(coco_gt, coco_dt, iou_type)
        ev.params.useCats = 0
        ev.params.maxDets = list(budgets)
        ev.evaluate()
        ev.accumulate()
    rec = ev.eval["recall"]

    def ar(k: int, area: int = 0) -> float:
        s = rec[:, :, area, budgets.index(k)]
        return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0

    out = {f"AR@{k}": ar(k) for k in budgets}
    if 100 in budgets:
        out.update({"AR_s@100": ar(100, 1), "AR_m@100": ar(100, 2), "AR_l@100": ar(100, 3)})
    if 1000 in budgets:
        x = np.log(AUC_BUDGETS) / np.log(1000)
        y = [0.0] + [out[f"AR@{k}"] for k in AUC_BUDGETS[1:]]
        out["AUC"] = float(np.trapezoid(y, x))
    return rec, out


@pytest.fixture(scope="module")
def mini() -> tuple[dict, list[dict]]:
    gt = json.loads(VAL.read_text())
    dets = synthetic_detections(gt, per_image=30, seed=3, duplicates=3)
    return gt, class_agnostic(dets, 1)[: len(dets) // 2] + dets[len(dets) // 2 :]


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_every_number_equals_literal_pycocotools_reference(mini, iou_type):
    gt, dets = mini
    _, expected = literal_metrics(flag_seen(gt, VOC), dets, iou_type)
    for backend in ("fast", "pycocotools"):
        got = evaluate("coco_voc_nonvoc", gt, dets, iou_type, backend=backend)["metrics"]
        assert got.keys() == expected.keys()
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, abs=1e-9), (backend, key)
    assert 0 < expected["AR@10"] < expected["AR@30"] <= expected["AR@1500"] < 1


def test_fast_recall_is_bit_identical_with_other_budget_lists(mini):
    gt, dets = mini
    flagged = flag_seen(gt, VOC)
    for budgets in ((7,), (3, 25), (1, 5, 12, 40)):
        ref, _ = literal_metrics(flagged, dets, "bbox", budgets)
        fast = compute_recall(flagged, [{k: d[k] for k in ("image_id", "category_id", "score", "bbox")} for d in dets],
                              "bbox", budgets, backend="fast")
        np.testing.assert_array_equal(fast, ref)


def _gt(anns: list[dict], seen: set[int], images=((1, 100, 100),)) -> dict:
    return {
        "images": [{"id": i, "height": h, "width": w} for i, h, w in images],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": i + 1, "image_id": a.get("image_id", 1), "category_id": a["cat"], "bbox": a["bbox"],
             "area": a["bbox"][2] * a["bbox"][3], "iscrowd": a.get("iscrowd", 0),
             "segmentation": [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1],
                               a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3], a["bbox"][0],
                               a["bbox"][1] + a["bbox"][3]]],
             "ignored_split": int(a["cat"] in seen)}
            for i, a in enumerate(anns)
        ],
    }


def _dets(boxes_scores, image_id=1):
    return [{"image_id": image_id, "category_id": 1, "bbox": list(b), "score": s} for b, s in boxes_scores]


def _both(gt, dets, budgets):
    fast = compute_recall(gt, dets, "bbox", budgets, backend="fast")
    ref = compute_recall(gt, dets, "bbox", budgets, backend="pycocotools")
    lit, _ = literal_metrics(gt, dets, "bbox", budgets)
    np.testing.assert_array_equal(fast, ref)
    np.testing.assert_array_equal(fast, lit)
    return fast


def test_seen_class_hits_do_not_consume_the_budget():
    # one seen object (category 1) and one unseen (2); the top detection hits the seen object
    gt = _gt([{"cat": 1, "bbox": [0, 0, 40, 40]}, {"cat": 2, "bbox": [50, 50, 40, 40]}], seen={1})
    dets = _dets([([0, 0, 40, 40], 0.9), ([50, 50, 40, 40], 0.8)])
    rec = _both(gt, dets, (1, 2))
    assert (rec[:, 0, 0, 0] == 1.0).all()  # AR@1 = 1: the seen hit left the list, the unseen moved up
    # without the rule (no seen flags: the seen object becomes a target) the top-1 finds one of two
    unflagged = _gt([{"cat": 1, "bbox": [0, 0, 40, 40]}, {"cat": 2, "bbox": [50, 50, 40, 40]}], seen=set())
    assert (_both(unflagged, dets, (1, 2))[:, 0, 0, 0] == 0.5).all()


def test_only_one_duplicate_per_seen_object_is_removed():
    gt = _gt([{"cat": 1, "bbox": [0, 0, 40, 40]}, {"cat": 2, "bbox": [50, 50, 40, 40]}], seen={1})
    dets = _dets([([0, 0, 40, 40], 0.9), ([1, 1, 40, 40], 0.85), ([50, 50, 40, 40], 0.8)])
    rec = _both(gt, dets, (1, 3))
    assert (rec[:, 0, 0, 0] == 0.0).all()  # the duplicate on the seen object still takes slot 1
    assert rec[0, 0, 0, 1] == 1.0
    # the budget is refilled only from within the top max(budgets): cut to 2 before the removal
    assert _both(gt, dets, (1, 2))[0, 0, 0, 1] == 0.0


def test_duplicates_on_one_gt_count_once():
    gt = _gt([{"cat": 2, "bbox": [10, 10, 50, 50]}, {"cat": 2, "bbox": [60, 60, 30, 30]}], seen=set())
    dets = _dets([([10, 10, 50, 50], 0.9), ([11, 10, 50, 50], 0.8), ([10, 11, 50, 50], 0.7), ([60, 60, 30, 30], 0.1)])
    rec = _both(gt, dets, (3, 4))
    assert rec[0, 0, 0, 0] == 0.5 and rec[0, 0, 0, 1] == 1.0


def test_crowd_gt_absorbs_any_number_and_is_not_a_target():
    gt = _gt([{"cat": 2, "bbox": [0, 0, 80, 80], "iscrowd": 1}, {"cat": 2, "bbox": [85, 85, 10, 10]}], seen=set())
    dets = _dets([([0, 0, 40, 40], 0.9), ([40, 40, 40, 40], 0.8), ([85, 85, 10, 10], 0.7)])
    rec = _both(gt, dets, (2, 3))
    assert rec[0, 0, 0, 0] == 0.0 and rec[0, 0, 0, 1] == 1.0  # npig = 1: crowd ignored


def test_images_without_gt_and_without_detections():
    gt = _gt([{"cat": 2, "bbox": [10, 10, 30, 30]}], seen=set(), images=((1, 100, 100), (2, 100, 100), (3, 50, 60)))
    dets = _dets([([10, 10, 30, 30], 0.5)]) + _dets([([0, 0, 20, 20], 0.99)], image_id=2)
    rec = _both(gt, dets, (1, 10))
    assert (rec[:, 0, 0, :] == 1.0).all()


def test_no_unseen_gt_gives_minus_one_and_empty_detections_zero():
    only_seen = _gt([{"cat": 1, "bbox": [0, 0, 40, 40]}], seen={1})
    assert (_both(only_seen, _dets([([0, 0, 40, 40], 0.9)]), (1,)) == -1).all()
    res = evaluate("coco_voc_nonvoc", _gt([{"cat": 2, "bbox": [0, 0, 40, 40]}], seen=set()), [], "bbox",
                   partition={"base": [1], "novel": [2]})
    assert all(v == 0.0 for k, v in res["metrics"].items() if k.startswith("AR@") or k == "AUC")
    assert res["metrics"]["AR_m@100"] == 0.0 and res["metrics"]["AR_s@100"] is None  # no small GT
    assert "empty" in res["notes"][0]


def test_auc_reproduces_oln_box_readme():
    ar = {10: 0.180, 30: 0.265, 50: 0.296, 100: 0.334, 300: 0.390, 500: 0.415, 1000: 0.450}
    assert oln_auc(ar) == pytest.approx(0.248, abs=5e-4)


def test_ldet_variant_caps_the_list_at_100():
    gt = _gt([{"cat": 2, "bbox": [10, 10, 30, 30]}], seen=set())
    dets = _dets([([60, 60, 30, 30], 0.9 - i * 1e-3) for i in range(100)] + [([10, 10, 30, 30], 0.01)])
    full = evaluate("coco_voc_nonvoc", gt, dets, "bbox", partition={"base": [1], "novel": [2]})["metrics"]
    ldet = evaluate("coco_voc_nonvoc_ldet", gt, dets, "bbox", partition={"base": [1], "novel": [2]})["metrics"]
    assert list(ldet) == ["AR@10", "AR@20", "AR@30", "AR@50", "AR@100", "AR_s@100", "AR_m@100", "AR_l@100"]
    assert ldet["AR@100"] == 0.0 and full["AR@300"] == 1.0
