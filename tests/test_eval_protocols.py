"""COCO and CPL/XPM protocols equal pycocotools; detections are checked with clear errors."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ovis.eval import EvalInputError, evaluate, get_protocol
from ovis.eval.protocols import metrics_markdown
from ovis.eval.report import evaluate_run
from ovis.eval.synthetic import synthetic_detections
from ovis.io import write_json_atomic
from ovis.protocols import PROTOCOLS
from ovis.runs import RunLayout

REAL = Path(__file__).parent / "data" / "real"
API = REAL / "cocoapi_val2014_100"
VAL = REAL / "coco_mini" / "annotations" / "instances_val2017.json"
SPLIT = json.loads((Path(__file__).parents[1] / "ovis" / "data" / "resources" / "coco_ovr_48_17.json").read_text())
BASE = [c["id"] for c in SPLIT["base"]]
NOVEL = [c["id"] for c in SPLIT["novel"]]


@pytest.mark.parametrize("iou_type,results", [("bbox", "instances_val2014_fakebbox100_results.json"),
                                              ("segm", "instances_val2014_fakesegm100_results.json")])
def test_coco_stats_equal_published_pycocotools_values(iou_type, results):
    expected = json.loads((API / "expected_stats_pycocotools.json").read_text())[iou_type]["stats"]
    res = evaluate("coco", str(API / "instances_val2014_100.json"), str(API / results), iou_type)
    assert res["protocol"] == "coco" and res["iou_type"] == iou_type
    np.testing.assert_allclose(res["metrics"]["stats"], list(expected.values()), rtol=0, atol=1e-12)


def _split_gt(gt: dict, keep: list[int]) -> dict:
    """What the splits stage writes: categories/annotations of `keep`, images with one of them."""
    anns = [a for a in gt["annotations"] if a["category_id"] in keep]
    imgs = {a["image_id"] for a in anns}
    return {**gt, "categories": [c for c in gt["categories"] if c["id"] in keep],
            "annotations": anns, "images": [i for i in gt["images"] if i["id"] in imgs]}


def _independent_eval(gt: dict, dets: list[dict], iou_type: str) -> tuple[dict[int, float], list[float]]:
    """Per-category AP50 (mean precision at IoU .5, area all, 100 dets) of categories with GT; stats."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        clean = [{k: v for k, v in d.items() if not (iou_type == "segm" and k == "bbox")} for d in dets]
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(clean))), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    per_cat = {}
    for k, c in enumerate(ev.params.catIds):
        prec = ev.eval["precision"][0, :, k, 0, 2]
        if (prec > -1).any():
            per_cat[c] = float(prec.mean())
    return per_cat, list(ev.stats)


def _split_mean(per_cat: dict[int, float], cats: list[int]) -> float:
    vals = [v for c, v in per_cat.items() if c in cats]
    return float(np.mean(vals)) if vals else -1.0


@pytest.fixture(scope="module")
def generalized() -> tuple[dict, list[dict]]:
    gt = _split_gt(json.loads(VAL.read_text()), BASE + NOVEL)
    return gt, synthetic_detections(gt, per_image=12, seed=5)


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_ovr_ap50_per_split_equals_independent_pycocotools(generalized, iou_type):
    gt, dets = generalized
    res = evaluate("coco_ovr_48_17", gt, dets, iou_type)
    m = res["metrics"]
    per_cat, stats = _independent_eval(gt, dets, iou_type)
    for key, cats in (("AP50_base", BASE), ("AP50_novel", NOVEL), ("AP50_all", BASE + NOVEL)):
        assert m[key] == pytest.approx(_split_mean(per_cat, cats), abs=1e-9), key
    np.testing.assert_allclose(m["stats"], stats, rtol=0, atol=1e-12)
    assert 0 < m["AP50_novel"] < 1 and 0 < m["AP50_base"] < 1
    assert set(res["per_class_AP50"]) == {c["name"] for c in gt["categories"]}


def test_segm_area_ranges_use_mask_area_not_the_results_bbox(generalized):
    gt, dets = generalized  # synthetic entries carry a jittered bbox that is not the mask's box
    ours = evaluate("coco", gt, dets, "segm")["metrics"]["stats"]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = json.loads(json.dumps(gt))
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(json.loads(json.dumps(dets))), "segm")  # bbox kept
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ours[:3] == pytest.approx(list(ev.stats[:3]), abs=1e-12)  # AP, AP50, AP75 do not care
    assert ours[3:6] != pytest.approx(list(ev.stats[3:6]), abs=1e-6)  # APs/m/l would shift
    box = evaluate("coco", gt, dets, "segm", segm_area="box")
    np.testing.assert_allclose(box["metrics"]["stats"], ev.stats, rtol=0, atol=1e-12)  # pycocotools' convention
    assert box["segm_area"] == "box" and "segm size ranges from the box area" in metrics_markdown(box)
    with pytest.raises(EvalInputError, match=r"detections\[0\] \(image \d+\): 'bbox' must be 4 finite numbers"):
        evaluate("coco", gt, [{k: v for k, v in d.items() if k != "bbox"} for d in dets], "segm", segm_area="box")
    with pytest.raises(EvalInputError, match="segm_area=box applies to the AP protocols"):
        evaluate("coco_voc_nonvoc", gt, dets, "segm", segm_area="box")


def test_constrained_novel_gt_reports_base_as_minus_one(generalized):
    gt, dets = generalized
    novel_gt = _split_gt(gt, NOVEL)
    novel_dets = [d for d in dets if d["category_id"] in NOVEL and d["image_id"] in {i["id"] for i in novel_gt["images"]}]
    m = evaluate("coco_ovr_48_17", novel_gt, novel_dets, "segm")["metrics"]
    assert m["AP50_base"] is None and m["AP50_novel"] == m["AP50_all"] > 0


def test_partition_overrides_the_packaged_split(generalized):
    gt, dets = generalized
    part = {"protocol": "demo_ovr", "base": [{"id": 1, "name": "person"}], "novel": [{"id": 3, "name": "car"}]}
    m = evaluate("demo_ovr", gt, dets, "bbox", partition=part)["metrics"]
    assert m["AP50_base"] == pytest.approx(_independent_eval(gt, dets, "bbox")[0][1], abs=1e-12)
    assert get_protocol("demo_open_world").kind == "open_world"


def test_evaluating_a_run_reads_its_split_files_and_detections_and_writes_its_metrics(generalized, tmp_path):
    gt, dets = generalized
    layout = RunLayout(tmp_path)
    partition = {"protocol": "coco_ovr_48_17", **SPLIT}
    for path, obj in ((layout.split("val.json"), gt), (layout.split("partition.json"), partition),
                      (layout.detections(), dets)):
        write_json_atomic(obj, path)
    result = evaluate_run(tmp_path, iou_type="bbox")  # the protocol named by partition.json
    assert result["metrics"] == evaluate("coco_ovr_48_17", gt, dets, "bbox", partition=partition)["metrics"]
    assert layout.eval_results() == [tmp_path / "eval" / "metrics.json"]
    assert json.loads(layout.eval_results()[0].read_text())["metrics"]["AP50_novel"] == result["metrics"]["AP50_novel"]


def test_a_protocol_without_a_split_names_what_is_missing_and_how_to_give_it(monkeypatch):
    """ovr_category_split has no built-in split; a built-in one missing from the package is named by its path."""
    gt = _tiny_gt()
    with pytest.raises(EvalInputError) as e:
        evaluate("ovr_category_split", gt, [], "bbox")
    msg = str(e.value)
    assert msg.startswith("ovr_category_split: no base/novel split known: it has no built-in split") and "None" not in msg
    assert "`ovis splits --protocol ovr_category_split --out DIR`" in msg and "`ovis eval --partition PATH`" in msg
    voc = get_protocol("coco_voc_nonvoc")
    gone = dataclasses.replace(voc, eval_settings=dataclasses.replace(voc.evaluation, split_resource="gone.json"))
    monkeypatch.setitem(PROTOCOLS, "coco_voc_nonvoc", gone)
    with pytest.raises(EvalInputError, match=r"^coco_voc_nonvoc: no seen classes known: the GT has no `ignored_split` "
                       r"flags and its split file ovis/data/resources/gone\.json is missing from the installed package; "
                       r"pass the partition\.json"):
        evaluate("coco_voc_nonvoc", gt, [], "bbox")


def _tiny_gt() -> dict:
    return {"images": [{"id": 7, "height": 20, "width": 30}], "categories": [{"id": 1, "name": "a"}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100,
                             "iscrowd": 0, "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}]}


@pytest.mark.parametrize("det,iou_type,message", [
    ({"image_id": 8, "category_id": 1, "score": 0.5, "bbox": [0, 0, 1, 1]}, "bbox", "'image_id' value(s) are not images of the ground truth: 8"),
    ({"image_id": 7, "category_id": 99, "score": 0.5, "bbox": [0, 0, 1, 1]}, "bbox", "'category_id' value(s) are not GT categories"),
    ({"image_id": 7, "category_id": 1, "score": 0.5, "segmentation": {"size": [20, 30], "counts": "ab~~"}}, "segm", "RLE counts string is not a compressed COCO RLE"),
    ({"image_id": 7, "category_id": 1, "score": 0.5, "segmentation": {"size": [30, 20], "counts": "0"}}, "segm", "RLE size [30, 20] differs from the image's [h, w] = [20, 30]"),
    ({"image_id": 7, "category_id": 1, "score": 0.5, "segmentation": {"size": [20, 30], "counts": [5, 10]}}, "segm", "summing to h*w = 600"),
    ({"image_id": 7, "category_id": 1, "score": 0.5, "segmentation": [[0, 0, 1, 0, 1, 1]]}, "segm", "got a polygon list"),
    ({"image_id": 7, "category_id": 1, "score": float("nan"), "bbox": [0, 0, 1, 1]}, "bbox", "not a finite number"),
])
def test_bad_detections_raise_clear_errors(det, iou_type, message):
    with pytest.raises(EvalInputError, match=re.escape(message)):
        evaluate("coco", _tiny_gt(), [det], iou_type)


def test_empty_detections_are_valid_and_all_zero():
    res = evaluate("coco", _tiny_gt(), [], "segm")
    assert "empty" in res["notes"][0]
    assert [s for s in res["metrics"]["stats"] if s != -1] == [0.0] * 8  # no small/large... entries are -1


def test_evaluation_leaves_the_garbage_collector_as_it_found_it():
    assert gc.isenabled()
    evaluate("coco", _tiny_gt(), [], "segm")
    with pytest.raises(EvalInputError):
        evaluate("coco", _tiny_gt(), [{"image_id": 8, "category_id": 1, "score": 0.5, "bbox": [0, 0, 1, 1]}], "bbox")
    assert gc.isenabled()
    gc.disable()
    try:
        evaluate("coco", _tiny_gt(), [], "segm")
        assert not gc.isenabled()
    finally:
        gc.enable()
