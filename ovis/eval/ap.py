"""COCO AP (the 12 standard stats) and CPL/XPM's AP50 per split (docs/protocols.md#41-open-vocabulary-ap).

Two backends give the same numbers: ``"fast"`` (`ovis.eval.fast.fast_precision`, vectorised, the
default) and ``"pycocotools"`` (COCOeval itself in `ovis.eval.cocoapi`, the reference the parity tests hold
it to).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ovis.eval.fast import AREA_LABELS, coco_iou_thresholds, fast_precision, prepare_inputs

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
MAX_DETS: tuple[int, ...] = (1, 10, 100)


@dataclass
class CocoAP:
    """What `COCOeval.accumulate` and `summarize` leave: curves by category id and the 12 stats."""

    precision: np.ndarray  # [T, R, K, A, M], -1 where category k has no GT in area range a
    recall: np.ndarray  # [T, K, A, M]
    cat_ids: list[int]  # K sorted category ids
    stats: list[float]  # the 12 stats in STAT_NAMES order (-1: no GT)


def summarize(precision: np.ndarray, recall: np.ndarray) -> list[float]:
    """pycocotools' `COCOeval.summarize` (default params): the 12 stats, each the mean over entries > -1."""
    iou_thrs = coco_iou_thresholds()

    def mean(ap: bool, area: str = "all", max_det: int = 100, iou: float | None = None) -> float:
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == iou_thrs)[0]]
        a, m = AREA_LABELS.index(area), MAX_DETS.index(max_det)
        s = s[..., [a], [m]]
        return float(np.mean(s[s > -1])) if (s > -1).any() else -1.0

    return [
        mean(True), mean(True, iou=0.5), mean(True, iou=0.75),
        mean(True, "small"), mean(True, "medium"), mean(True, "large"),
        mean(False, max_det=1), mean(False, max_det=10), mean(False),
        mean(False, "small"), mean(False, "medium"), mean(False, "large"),
    ]


def coco_eval(gt: dict, dets: list[dict], iou_type: str, backend: str = "fast") -> CocoAP:
    """COCO evaluation with pycocotools' default params; `dets` are checked detections."""
    if backend == "pycocotools":
        from ovis.eval import cocoapi  # here, so that only this backend imports pycocotools.coco

        return CocoAP(*cocoapi.reference_coco_eval(gt, dets, iou_type))
    if backend != "fast":
        raise ValueError(f"backend must be 'fast' or 'pycocotools', got {backend!r}")
    cat_ids, gts, per_image = prepare_inputs(gt, dets, iou_type)
    precision, recall = fast_precision(gts, per_image, len(cat_ids), MAX_DETS)
    return CocoAP(precision, recall, cat_ids, summarize(precision, recall))


def ap50_of(ev: CocoAP, cat_ids: list[int]) -> float:
    """CPL's split metric: mean of precision[IoU=0.5, :, cats, area=all, maxDets=100] over entries
    > -1 (categories without GT carry -1 and drop out); -1 when no category has GT."""
    t = np.where(np.isclose(coco_iou_thresholds(), 0.5))[0]
    a = AREA_LABELS.index("all")
    m = MAX_DETS.index(100)
    k = [i for i, c in enumerate(ev.cat_ids) if c in set(cat_ids)]
    s = ev.precision[t][:, :, k, a, m]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def ap50_per_class(ev: CocoAP, names: dict[int, str]) -> dict[str, float]:
    """AP50 (IoU 0.5, area all, maxDets 100) of every evaluated category, keyed by name."""
    return {names.get(c, str(c)): ap50_of(ev, [c]) for c in ev.cat_ids}
