"""Open-world AR@k (OLN/GGN, docs/protocols.md#42-open-world-ar): class-agnostic recall with seen-class GT ignored and
seen-class hits removed from the budget; AR reported by budget value; OLN's AUC.

Two backends compute the same recall array: ``"pycocotools"`` (COCOeval with the seen rule, the
reference, `ovis.eval.cocoapi`) and ``"fast"`` (`ovis.eval.fast`, vectorised matching). Both return pycocotools'
``eval["recall"]`` layout [T, 1, A, M] and share `recall_metrics`.
"""

from __future__ import annotations

import numpy as np

from ovis.eval.fast import AREA_LABELS, fast_recall, prepare_inputs

AUC_BUDGETS: tuple[int, ...] = (1, 10, 30, 50, 100, 300, 500, 1000)


def compute_recall(
    gt: dict, dets: list[dict], iou_type: str, max_dets: tuple[int, ...], backend: str = "fast"
) -> np.ndarray:
    """Recall [T, 1, A, M] (pycocotools layout, useCats=0) with the seen-class budget rule.

    gt: GT dict whose annotations carry `ignored_split`; dets: checked detections.
    backend: "fast" (vectorised) or "pycocotools" (reference).
    """
    if backend == "pycocotools":
        from ovis.eval import cocoapi  # here, so that only this backend imports pycocotools.coco

        return cocoapi.reference_recall(gt, dets, iou_type, max_dets)
    if backend != "fast":
        raise ValueError(f"backend must be 'fast' or 'pycocotools', got {backend!r}")
    _, gts, per_image = prepare_inputs(gt, dets, iou_type)
    return fast_recall(gts, per_image, tuple(max_dets))


def mean_recall(recall: np.ndarray, max_dets: tuple[int, ...], k: int, area: str = "all") -> float:
    """pycocotools' summarize for AR: mean of recall[:, :, area, maxDets == k] over entries > -1."""
    a = AREA_LABELS.index(area)
    m = list(max_dets).index(k)
    s = recall[:, :, a, m]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def oln_auc(ar_by_k: dict[int, float]) -> float:
    """OLN's AUC: trapezoid of AR@k over log(k)/log(1000), k in AUC_BUDGETS, with AR@1 := 0."""
    x = np.log(np.asarray(AUC_BUDGETS, dtype=np.float64)) / np.log(1000.0)
    y = np.asarray([0.0] + [ar_by_k[k] for k in AUC_BUDGETS[1:]], dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def recall_metrics(recall: np.ndarray, max_dets: tuple[int, ...], with_auc: bool) -> dict[str, float]:
    """`AR@k` for every budget, `AR_s/m/l@100`, and `AUC` (when every AUC budget is present)."""
    metrics = {f"AR@{k}": mean_recall(recall, max_dets, k) for k in max_dets}
    for label, key in (("small", "AR_s@100"), ("medium", "AR_m@100"), ("large", "AR_l@100")):
        metrics[key] = mean_recall(recall, max_dets, 100, label)
    if with_auc:
        ars = {k: metrics[f"AR@{k}"] for k in AUC_BUDGETS[1:]}
        # -1 marks "no GT to recall": an area under it would average the sentinel into a number
        metrics["AUC"] = -1.0 if min(ars.values()) < 0 else oln_auc(ars)
    return metrics
