"""The pycocotools backend (``backend="pycocotools"``): COCOeval on ovis's checked ground truth and
detections, the reference the fast backend is held to.

Only this backend imports `pycocotools.coco` (urllib, http, email and ssl come with it: 20-40 ms
that `ovis eval` with the default fast backend does not pay).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def reference_coco_eval(gt: dict, dets: list[dict], iou_type: str) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
    """COCOeval with default params: precision [T, R, K, A, M], recall [T, K, A, M], category ids, the 12 stats."""
    coco_gt = build_coco(gt)
    ev = COCOeval(coco_gt, results_coco(coco_gt, dets), iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.eval["precision"], ev.eval["recall"], list(ev.params.catIds), [float(s) for s in ev.stats]


class SeenAwareCOCOeval(COCOeval):
    """COCOeval whose seen-class GT (``ignored_split == 1``) is ignored in matching, and whose
    detections matched to a seen-class GT at the first IoU threshold are deleted from the image's
    list before accumulation (so they do not use up the AR@k budget)."""

    def _prepare(self) -> None:
        super()._prepare()
        for anns in self._gts.values():
            for g in anns:
                # pycocotools sets ignore = iscrowd; a seen-class GT is ignored like a crowd one
                # but (not being crowd) still absorbs at most one detection
                g["ignore"] = bool(g["ignore"]) or bool(g.get("ignored_split", 0))

    def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802,N803 (pycocotools API)
        res = super().evaluateImg(imgId, catId, aRng, maxDet)
        if res is None:
            return None
        gts = self._gts[imgId, catId] if self.params.useCats else [
            g for c in self.params.catIds for g in self._gts[imgId, c]
        ]
        seen_ids = np.array([g["id"] for g in gts if g.get("ignored_split", 0)], dtype=np.float64)
        if seen_ids.size == 0 or res["dtMatches"].shape[1] == 0:
            return res
        keep = ~np.isin(res["dtMatches"][0], seen_ids)
        res["dtMatches"] = res["dtMatches"][:, keep]
        res["dtIgnore"] = res["dtIgnore"][:, keep]
        res["dtIds"] = [d for d, k in zip(res["dtIds"], keep) if k]
        res["dtScores"] = [s for s, k in zip(res["dtScores"], keep) if k]
        return res


def reference_recall(gt: dict, dets: list[dict], iou_type: str, max_dets: tuple[int, ...]) -> np.ndarray:
    """Recall [T, 1, A, M] from pycocotools with the seen rule (`ovis.eval.recall.compute_recall`'s reference)."""
    coco_gt = build_coco(gt)
    coco_dt = results_coco(coco_gt, dets)
    ev = SeenAwareCOCOeval(coco_gt, coco_dt, iou_type)
    ev.params.useCats = 0
    ev.params.maxDets = list(max_dets)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev.eval["recall"]


def build_coco(gt: dict) -> COCO:
    """A pycocotools COCO index over shallow copies of the GT annotations (pycocotools mutates them)."""
    data = dict(gt)
    data["annotations"] = [dict(a) for a in gt["annotations"]]
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def results_coco(coco_gt: COCO, dets: list[dict]) -> COCO:
    """`coco_gt.loadRes(dets)` without its prints; an empty list gives an empty result set."""
    if dets:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco_gt.loadRes([dict(d) for d in dets])
    res = COCO()
    res.dataset = {"images": list(coco_gt.dataset["images"]), "categories": list(coco_gt.dataset["categories"]), "annotations": []}
    with contextlib.redirect_stdout(io.StringIO()):
        res.createIndex()
    return res
