"""COCO AP (the 12 standard stats) and CPL/XPM's AP50 per split (docs/protocols.md#41-open-vocabulary-ap), via pycocotools."""

from __future__ import annotations

import contextlib
import io

import numpy as np
from pycocotools.cocoeval import COCOeval

from ovis.eval.io import build_coco, results_coco

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)


def coco_eval(gt: dict, dets: list[dict], iou_type: str) -> COCOeval:
    """Run pycocotools COCOeval (default params) to the end of summarize, quietly."""
    coco_gt = build_coco(gt)
    ev = COCOeval(coco_gt, results_coco(coco_gt, dets), iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def ap50_of(ev: COCOeval, cat_ids: list[int]) -> float:
    """CPL's split metric: mean of precision[IoU=0.5, :, cats, area=all, maxDets=100] over entries
    > -1 (categories without GT carry -1 and drop out); -1 when no category has GT."""
    p = ev.params
    t = np.where(np.isclose(p.iouThrs, 0.5))[0]
    a = list(p.areaRngLbl).index("all")
    m = list(p.maxDets).index(100)
    k = [i for i, c in enumerate(p.catIds) if c in set(cat_ids)]
    s = ev.eval["precision"][t][:, :, k, a, m]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def ap50_per_class(ev: COCOeval, names: dict[int, str]) -> dict[str, float]:
    """AP50 (IoU 0.5, area all, maxDets 100) of every evaluated category, keyed by name."""
    return {names.get(c, str(c)): ap50_of(ev, [c]) for c in ev.params.catIds}
