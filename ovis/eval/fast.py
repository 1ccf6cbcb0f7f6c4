"""Vectorised class-agnostic recall (AR@k) with the OLN/GGN seen-class rule, equal to pycocotools.

pycocotools' `COCOeval.evaluateImg` matches detections to ground truth with a Python loop over
IoU thresholds x detections x ground truths; with 1500 detections per image that loop dominates.
Here the greedy matching runs for all (area range, IoU threshold) "lanes" of an image at once and
only over the detections that overlap some ground truth at IoU >= the lowest threshold (the others
can never match). The greedy rule is reproduced exactly, ties included:

- a detection takes, among the still-free ground truths with IoU >= t, the one with the highest
  IoU, preferring non-ignored over ignored ones; on equal IoU the later one (pycocotools scans
  ground truths in order and replaces on ``>=``);
- a crowd ground truth is never used up; any other ground truth takes at most one detection.

The matching of a lane is computed in rounds: given the free ground truths, every remaining
detection's choice is computed in one array operation; choices are final up to and including the
first detection that uses up a ground truth, which is then marked taken. A lane needs at most
(number of non-crowd ground truths + 1) rounds.

IoUs come from `pycocotools.mask.iou` on the same inputs pycocotools uses, and detections and
ground truths are ordered as pycocotools orders them (categories by id, then file order; detections
by score, stable), so the results are bit-identical, not merely close.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

AREA_RANGES: tuple[tuple[float, float], ...] = (
    (0.0**2, 1e5**2),
    (0.0**2, 32.0**2),
    (32.0**2, 96.0**2),
    (96.0**2, 1e5**2),
)
AREA_LABELS: tuple[str, ...] = ("all", "small", "medium", "large")


def coco_iou_thresholds() -> np.ndarray:
    """The 10 COCO IoU thresholds 0.50:0.05:0.95, built exactly as pycocotools builds them."""
    return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


@dataclass
class ImageGT:
    """Ground truth of one image in pycocotools' class-agnostic order (category id, then file order)."""

    ids: np.ndarray  # [G] int64 annotation ids
    geometry: list | np.ndarray  # G RLE dicts (segm) or [G, 4] xywh float64 (bbox)
    iscrowd: np.ndarray  # [G] uint8
    area: np.ndarray  # [G] float64, the annotation's `area` field
    seen: np.ndarray  # [G] bool, `ignored_split` (seen class: ignored, and removed from the budget)


def _match_lanes(
    ious: np.ndarray, thr: np.ndarray, regular: np.ndarray, crowd: np.ndarray
) -> np.ndarray:
    """Greedy COCO matching of D score-ordered detections for L lanes at once.

    ious: [D, G] IoU of each detection with each ground truth. thr: [L] IoU threshold per lane.
    regular: [L, G] True where the ground truth is not ignored in that lane. crowd: [G] bool.
    Returns [L, D] int64: index of the matched ground truth, -1 when unmatched.
    """
    n_lanes = thr.shape[0]
    n_det, n_gt = ious.shape
    match = np.full((n_lanes, n_det), -1, dtype=np.int64)
    free = np.ones((n_lanes, n_gt), dtype=bool)
    start = np.zeros(n_lanes, dtype=np.int64)
    above = ious[None, :, :] >= thr[:, None, None]  # [L, D, G]
    reversed_gt = np.arange(n_gt - 1, -1, -1)
    det_index = np.arange(n_det)
    lanes = np.arange(n_lanes)
    while True:
        active = start < n_det
        if not active.any():
            return match
        lo = int(start[active].min())
        ok = above[:, lo:, :] & free[:, None, :]
        ok_regular = ok & regular[:, None, :]
        has_regular = ok_regular.any(axis=2, keepdims=True)
        cand = np.where(has_regular, ok_regular, ok)
        value = np.where(cand, ious[None, lo:, :], -1.0)
        # last index among equal maxima: argmax over the reversed ground-truth axis
        best = reversed_gt[np.argmax(value[:, :, ::-1], axis=2)]
        found = cand.any(axis=2)
        choice = np.where(found, best, -1)  # [L, D - lo]
        pending = det_index[None, lo:] >= start[:, None]
        consumes = pending & found & ~crowd[np.maximum(choice, 0)]
        any_consumed = consumes.any(axis=1)
        first = np.where(any_consumed, np.argmax(consumes, axis=1) + lo, n_det)  # [L]
        commit = pending & (det_index[None, lo:] <= first[:, None])
        match[:, lo:] = np.where(commit, choice, match[:, lo:])
        taken_lanes = lanes[any_consumed & active]
        free[taken_lanes, choice[taken_lanes, first[taken_lanes] - lo]] = False
        start = np.where(active, first + 1, start)


def image_true_positives(
    gt: ImageGT,
    ious: np.ndarray,
    num_dets: int,
    iou_thrs: np.ndarray,
    area_ranges: tuple[tuple[float, float], ...],
    max_dets: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Per-image counts that accumulate into pycocotools' recall, seen-class rule applied.

    ious: [D, G] for the image's top-`max_dets[-1]` detections in score order (D = num_dets).
    Returns (tp [A, T, M] int64: true positives among the first k kept detections for each
    k in max_dets, npig [A] int64: non-ignored ground truths per area range).
    """
    n_area, n_thr, n_k = len(area_ranges), len(iou_thrs), len(max_dets)
    rng = np.asarray(area_ranges, dtype=np.float64)
    out_of_range = (gt.area[None, :] < rng[:, :1]) | (gt.area[None, :] > rng[:, 1:])  # [A, G]
    ignored = out_of_range | gt.iscrowd.astype(bool)[None, :] | gt.seen[None, :]
    npig = (~ignored).sum(axis=1).astype(np.int64)
    tp = np.zeros((n_area, n_thr, n_k), dtype=np.int64)
    if num_dets == 0 or ious.size == 0:
        return tp, npig
    # detections below the lowest threshold with every ground truth never match anything
    lowest = min(float(iou_thrs.min()), 1 - 1e-10)
    cand = np.flatnonzero((ious >= lowest).any(axis=1))
    if cand.size == 0:
        return tp, npig
    thr = np.minimum(iou_thrs, 1 - 1e-10)
    lane_thr = np.tile(thr, n_area)  # lane = a * T + t
    lane_regular = np.repeat(~ignored, n_thr, axis=0)
    match = _match_lanes(ious[cand], lane_thr, lane_regular, gt.iscrowd.astype(bool))
    match = match.reshape(n_area, n_thr, cand.size)
    matched = match >= 0
    m = np.maximum(match, 0)
    # pycocotools stores the matched gt *id* and tests it for truth: an id of 0 counts as unmatched
    is_tp = matched & np.take_along_axis(~ignored[:, None, :].repeat(n_thr, 1), m, axis=2)
    is_tp &= gt.ids[m] != 0
    # seen-class rule: drop detections whose match at the first threshold is a seen-class GT
    removed = matched[:, 0, :] & gt.seen[m[:, 0, :]]  # [A, C]
    # rank (1-based) of each candidate among the detections kept in its area range
    removed_before = np.cumsum(removed, axis=1) - removed
    rank = cand[None, :] + 1 - removed_before  # [A, C]
    kept = ~removed
    budgets = np.asarray(max_dets, dtype=np.int64)
    within = kept[:, :, None] & (rank[:, :, None] <= budgets[None, None, :])  # [A, C, M]
    tp = np.einsum("atc,acm->atm", is_tp.astype(np.int64), within.astype(np.int64))
    return tp, npig


def recall_array(
    tp: np.ndarray, npig: np.ndarray
) -> np.ndarray:
    """pycocotools-shaped recall [T, 1, A, M] from summed tp [A, T, M] and npig [A]; -1 if npig == 0."""
    n_area, n_thr, n_k = tp.shape
    recall = -np.ones((n_thr, 1, n_area, n_k))
    for a in range(n_area):
        if npig[a] == 0:
            continue
        recall[:, 0, a, :] = tp[a].astype(np.float64) / npig[a]
    return recall


def fast_recall(
    gts: dict[int, ImageGT],
    dets: dict[int, tuple[list | np.ndarray, np.ndarray]],
    iou_type: str,
    max_dets: tuple[int, ...],
    iou_thrs: np.ndarray | None = None,
    area_ranges: tuple[tuple[float, float], ...] = AREA_RANGES,
) -> np.ndarray:
    """Class-agnostic recall with the seen-class budget rule for every image in `gts`.

    gts: image id -> ImageGT (all images of the GT file, also those without annotations).
    dets: image id -> (geometry in score order, already cut to max_dets[-1]; scores [D]).
    Geometry is a list of RLE dicts (segm) or an [D, 4] xywh float64 array (bbox).
    Returns recall [T, 1, A, M] as `COCOeval.eval["recall"]` with useCats=0.
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    iou_thrs = coco_iou_thresholds() if iou_thrs is None else np.asarray(iou_thrs, dtype=np.float64)
    tp_sum = np.zeros((len(area_ranges), len(iou_thrs), len(max_dets)), dtype=np.int64)
    npig_sum = np.zeros(len(area_ranges), dtype=np.int64)
    for img_id, gt in gts.items():
        geometry, _ = dets.get(img_id, ([], np.zeros(0)))
        num_dets = len(geometry)
        if gt.ids.size and num_dets:
            ious = np.asarray(mask_utils.iou(geometry, gt.geometry, gt.iscrowd.tolist()))
            ious = ious.reshape(num_dets, gt.ids.size)
        else:
            ious = np.zeros((num_dets, gt.ids.size))
        tp, npig = image_true_positives(gt, ious, num_dets, iou_thrs, area_ranges, max_dets)
        tp_sum += tp
        npig_sum += npig
    return recall_array(tp_sum, npig_sum)
