"""Vectorised COCO evaluation equal to pycocotools: AP (the 12 stats, per-category precision) and
class-agnostic AR@k with the OLN/GGN seen-class rule.

pycocotools' `COCOeval.evaluateImg` matches detections to ground truth with a Python loop over
IoU thresholds x detections x ground truths, and `accumulate` loops over categories x area ranges x
budgets x thresholds. Here the greedy matching runs for all (area range, IoU threshold) "lanes" of an
image at once and only over the detections that overlap some ground truth at IoU >= the lowest
threshold (the others can never match). The greedy rule is reproduced exactly, ties included:

- a detection takes, among the still-free ground truths with IoU >= t, the one with the highest
  IoU, preferring non-ignored over ignored ones; on equal IoU the later one (pycocotools scans
  ground truths in order and replaces on ``>=``);
- a crowd ground truth is never used up; any other ground truth takes at most one detection.

The matching of a lane is computed in rounds: given the free ground truths, every remaining
detection's choice is computed in one array operation; choices are final up to the first detection
that picks a ground truth an earlier one of the round used up (taking other ground truths away
never changes a detection's best remaining one), and the ground truths used up so far are marked
taken. A lane needs about as many rounds as the longest chain of duplicates on one object.

For AP one matching per image serves all categories: IoUs across categories are masked out, and an
image's detections in score order (ties by file order) are, restricted to one category, exactly
pycocotools' per-(image, category) order. IoUs come from `pycocotools.mask.iou` on the same inputs
pycocotools uses, and curves are accumulated with pycocotools' own arithmetic, so the results are
bit-identical, not merely close.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from pycocotools import mask as mask_utils

from ovis.data.masks import ann_to_rle

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


def coco_recall_thresholds() -> np.ndarray:
    """The 101 recall points 0:0.01:1 of COCO's interpolated precision, as pycocotools builds them."""
    return np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


@dataclass
class ImageGT:
    """Ground truth of one image in pycocotools' class-agnostic order (category id, then file order)."""

    ids: np.ndarray  # [G] int64 annotation ids
    category: np.ndarray  # [G] int64 index into the sorted category ids
    geometry: list | np.ndarray  # G RLE dicts (segm) or [G, 4] xywh float64 (bbox)
    iscrowd: np.ndarray  # [G] uint8
    area: np.ndarray  # [G] float64, the annotation's `area` field
    seen: np.ndarray  # [G] bool, `ignored_split` (seen class: ignored, and removed from the budget)


@dataclass
class ImageDets:
    """Detections of one image in pycocotools' order: score descending, ties by category id, then file order."""

    geometry: list | np.ndarray  # D RLE dicts (segm) or [D, 4] xywh float64 (bbox)
    scores: np.ndarray  # [D] float64
    category: np.ndarray  # [D] int64 index into the sorted category ids
    area: np.ndarray  # [D] float64 size for the area ranges: the bbox's w*h when results carry one, else the mask's


def prepare_inputs(
    gt: dict, dets: list[dict], iou_type: str
) -> tuple[list[int], dict[int, ImageGT], dict[int, ImageDets]]:
    """Sorted category ids, per-image GT (every image of `gt`) and per-image score-ordered detections.

    `dets` are checked detections (`ovis.eval.io.check_detections`): every one carries a bbox or
    none does; as pycocotools' `loadRes`, a detection's size is its bbox's area when it has one.
    """
    cat_ids = sorted(c["id"] for c in gt["categories"])
    cat_rank = {c: i for i, c in enumerate(cat_ids)}
    images = {img["id"]: img for img in gt["images"]}
    by_image: dict[int, list[dict]] = {img_id: [] for img_id in sorted(images)}
    for a in gt["annotations"]:
        if a["category_id"] in cat_rank:
            by_image[a["image_id"]].append(a)
    gts: dict[int, ImageGT] = {}
    for img_id, anns in by_image.items():
        anns.sort(key=lambda a: cat_rank[a["category_id"]])  # stable: file order within a category
        if iou_type == "segm":
            h, w = int(images[img_id]["height"]), int(images[img_id]["width"])
            geometry: list | np.ndarray = [ann_to_rle(a, h, w) for a in anns]
        else:
            geometry = np.asarray([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        gts[img_id] = ImageGT(
            ids=np.asarray([a["id"] for a in anns], dtype=np.int64),
            category=np.asarray([cat_rank[a["category_id"]] for a in anns], dtype=np.int64),
            geometry=geometry,
            iscrowd=np.asarray([int(a.get("iscrowd", 0)) for a in anns], dtype=np.uint8),
            area=np.asarray([a["area"] for a in anns], dtype=np.float64),
            seen=np.asarray([bool(a.get("ignored_split", 0)) for a in anns], dtype=bool),
        )
    out: dict[int, ImageDets] = {}
    if not dets:
        return cat_ids, gts, out
    img_ids = np.asarray([d["image_id"] for d in dets])
    scores = np.asarray([d["score"] for d in dets], dtype=np.float64)
    ranks = np.asarray([cat_rank[d["category_id"]] for d in dets], dtype=np.int64)
    if "bbox" in dets[0]:
        boxes = np.asarray([d["bbox"] for d in dets], dtype=np.float64).reshape(-1, 4)
        areas = boxes[:, 2] * boxes[:, 3]
    else:
        boxes = None
        rles = [d["segmentation"] for d in dets]
        # pycocotools' area() sizes its output as uint8 under numpy 2: at most 255 masks per call
        areas = np.concatenate([mask_utils.area(rles[i : i + 255]) for i in range(0, len(rles), 255)])
        areas = areas.astype(np.float64)
    order = np.lexsort((np.arange(len(dets)), ranks, -scores, img_ids))
    sorted_imgs = img_ids[order]
    bounds = np.flatnonzero(np.r_[True, sorted_imgs[1:] != sorted_imgs[:-1], True])
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        idx = order[lo:hi]
        # checked bbox detections all carry a bbox, so boxes is set for iou_type bbox
        geometry = [dets[i]["segmentation"] for i in idx] if iou_type == "segm" else cast(np.ndarray, boxes)[idx]
        out[sorted_imgs[lo].item()] = ImageDets(geometry, scores[idx], ranks[idx], areas[idx])
    return cat_ids, gts, out


def image_ious(gt: ImageGT, geometry: list | np.ndarray) -> np.ndarray:
    """[D, G] IoU of detections with the image's ground truth (crowd: intersection over detection)."""
    num_dets = len(geometry)
    if not (gt.ids.size and num_dets):
        return np.zeros((num_dets, gt.ids.size))
    return np.asarray(mask_utils.iou(geometry, gt.geometry, gt.iscrowd.tolist())).reshape(num_dets, gt.ids.size)


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
    gt_index = np.arange(n_gt)
    det_index = np.arange(n_det)
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
        takes = consumes[:, :, None] & (choice[:, :, None] == gt_index)  # [L, D - lo, G] one-hot
        # a choice stands unless an earlier detection of this round took the same ground truth
        # (taking others away never changes a detection's best remaining one)
        taken_before = np.cumsum(takes, axis=1) - takes
        conflict = consumes & np.take_along_axis(taken_before, np.maximum(choice, 0)[:, :, None], axis=2)[:, :, 0] > 0
        first = np.where(conflict.any(axis=1), np.argmax(conflict, axis=1) + lo, n_det)  # [L], redone next round
        commit = pending & (det_index[None, lo:] < first[:, None])
        match[:, lo:] = np.where(commit, choice, match[:, lo:])
        free &= ~(takes & commit[:, :, None]).any(axis=1)
        start = np.where(active, first, start)


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
    dets: dict[int, ImageDets],
    max_dets: tuple[int, ...],
    iou_thrs: np.ndarray | None = None,
    area_ranges: tuple[tuple[float, float], ...] = AREA_RANGES,
) -> np.ndarray:
    """Class-agnostic recall with the seen-class budget rule for every image in `gts`.

    gts: image id -> ImageGT (all images of the GT file, also those without annotations).
    dets: image id -> ImageDets; each image's first max(max_dets) detections are evaluated.
    Returns recall [T, 1, A, M] as `COCOeval.eval["recall"]` with useCats=0.
    """
    iou_thrs = coco_iou_thresholds() if iou_thrs is None else np.asarray(iou_thrs, dtype=np.float64)
    tp_sum = np.zeros((len(area_ranges), len(iou_thrs), len(max_dets)), dtype=np.int64)
    npig_sum = np.zeros(len(area_ranges), dtype=np.int64)
    for img_id, gt in gts.items():
        geometry = dets[img_id].geometry[: max(max_dets)] if img_id in dets else []
        ious = image_ious(gt, geometry)
        tp, npig = image_true_positives(gt, ious, len(geometry), iou_thrs, area_ranges, max_dets)
        tp_sum += tp
        npig_sum += npig
    return recall_array(tp_sum, npig_sum)


def _image_outcomes(
    gt: ImageGT, det: ImageDets, lane_thr: np.ndarray, rng: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' per-detection outcome in every (area range, IoU threshold) of one image, all categories.

    Returns (tp, fp), each [A, T, D] bool; a detection that is neither is ignored (matched to an
    ignored ground truth, or unmatched and outside the area range).
    """
    n_area, n_det = rng.shape[0], det.scores.size
    n_thr = lane_thr.size // n_area
    matched = np.zeros((n_area, n_thr, n_det), dtype=bool)
    on_ignored = np.zeros((n_area, n_thr, n_det), dtype=bool)
    if gt.ids.size:
        gt_ignored = (gt.area[None, :] < rng[:, :1]) | (gt.area[None, :] > rng[:, 1:]) | gt.iscrowd.astype(bool)
        # only detections of a category present in the image can match: IoUs of the others are not needed
        rows = np.flatnonzero(np.isin(det.category, gt.category))
        geometry = [det.geometry[j] for j in rows] if isinstance(det.geometry, list) else det.geometry[rows]
        ious = np.where(det.category[rows, None] == gt.category[None, :], image_ious(gt, geometry), -1.0)
        reach = (ious >= lane_thr.min()).any(axis=1)
        cand, ious = rows[reach], ious[reach]
        if cand.size:
            regular = np.repeat(~gt_ignored, n_thr, axis=0)
            match = _match_lanes(ious, lane_thr, regular, gt.iscrowd.astype(bool))
            match = match.reshape(n_area, n_thr, cand.size)
            m = np.maximum(match, 0)
            hit = match >= 0
            # pycocotools stores the matched gt *id* and tests it for truth: an id of 0 counts as unmatched
            matched[:, :, cand] = hit & (gt.ids[m] != 0)
            on_ignored[:, :, cand] = hit & np.take_along_axis(gt_ignored[:, None, :], m, axis=2)
    outside = (det.area[None, :] < rng[:, :1]) | (det.area[None, :] > rng[:, 1:])  # [A, D]
    ignored = on_ignored | (~matched & outside[:, None, :])
    return matched & ~ignored, ~matched & ~ignored


def _suffix_max(values: np.ndarray, group_end: np.ndarray) -> np.ndarray:
    """Running maximum from the right within contiguous groups: out[i] = max(values[i:group_end[i]])."""
    out = values.copy()
    pos = np.arange(values.size)
    span = 1
    while values.size and span < int((group_end - pos).max()):
        ok = np.flatnonzero(pos + span < group_end)
        out[ok] = np.maximum(out[ok], out[ok + span])
        span *= 2
    return out


def fast_precision(
    gts: dict[int, ImageGT],
    dets: dict[int, ImageDets],
    num_cats: int,
    max_dets: tuple[int, ...] = (1, 10, 100),
    area_ranges: tuple[tuple[float, float], ...] = AREA_RANGES,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO precision [T, R, K, A, M] and recall [T, K, A, M] as `COCOeval.accumulate` (useCats=1).

    gts: image id -> ImageGT for every image of the GT file; dets: image id -> ImageDets; each
    (image, category) keeps its top max_dets[-1] detections. -1 marks a category without GT in that
    area range.
    """
    iou_thrs, rec_thrs = coco_iou_thresholds(), coco_recall_thresholds()
    n_thr, n_rec, n_area, n_k = iou_thrs.size, rec_thrs.size, len(area_ranges), len(max_dets)
    rng = np.asarray(area_ranges, dtype=np.float64)
    lane_thr = np.tile(np.minimum(iou_thrs, 1 - 1e-10), n_area)  # lane = a * T + t
    npig = np.zeros((n_area, num_cats), dtype=np.int64)
    cats, scores, images, ranks, tps, fps = [], [], [], [], [], []
    for i, img_id in enumerate(sorted(gts)):
        gt = gts[img_id]
        gt_ignored = (gt.area[None, :] < rng[:, :1]) | (gt.area[None, :] > rng[:, 1:]) | gt.iscrowd.astype(bool)
        for a in range(n_area):
            npig[a] += np.bincount(gt.category[~gt_ignored[a]], minlength=num_cats)
        if img_id not in dets:
            continue
        det = dets[img_id]
        # rank of each detection within its category (0 = best); pycocotools keeps max_dets[-1] per category
        by_cat = np.lexsort((np.arange(det.scores.size), det.category))
        first = np.r_[0, np.flatnonzero(np.diff(det.category[by_cat])) + 1]
        rank = np.empty(det.scores.size, dtype=np.int64)
        rank[by_cat] = np.arange(by_cat.size) - np.repeat(first, np.diff(np.r_[first, by_cat.size]))
        keep = np.flatnonzero(rank < max_dets[-1])
        if keep.size < det.scores.size:
            geometry = [det.geometry[j] for j in keep] if isinstance(det.geometry, list) else det.geometry[keep]
            det = ImageDets(geometry, det.scores[keep], det.category[keep], det.area[keep])
        tp, fp = _image_outcomes(gt, det, lane_thr, rng)
        cats.append(det.category)
        scores.append(det.scores)
        images.append(np.full(det.scores.size, i))
        ranks.append(rank[keep])
        tps.append(tp)
        fps.append(fp)
    precision = np.zeros((n_area, n_thr, num_cats, n_rec, n_k))
    recall = np.zeros((n_area, n_thr, num_cats, n_k))
    if cats:
        cat, rank = np.concatenate(cats), np.concatenate(ranks)
        # pycocotools' accumulate order: category, score descending, ties by image, then order within the image
        order = np.lexsort((np.arange(cat.size), np.concatenate(images), -np.concatenate(scores), cat))
        cat, rank = cat[order], rank[order]
        tp_all, fp_all = np.concatenate(tps, axis=2)[:, :, order], np.concatenate(fps, axis=2)[:, :, order]
    else:
        cat = rank = np.zeros(0, dtype=np.int64)
        tp_all = fp_all = np.zeros((n_area, n_thr, 0), dtype=bool)
    # recall >= r  <=>  tp >= the least integer c with c / npig >= r (the division is monotone in tp)
    n = np.maximum(npig, 1).astype(np.float64)[..., None]  # [A, K, 1]
    need = np.maximum(np.ceil(rec_thrs * n) - 2, 0)
    for _ in range(4):
        need += need / n < rec_thrs
    need = need.astype(np.int64)  # [A, K, R]
    n_groups = n_area * n_thr * num_cats
    for mi, max_det in enumerate(max_dets):
        sel = np.flatnonzero(rank < max_det)
        if sel.size == 0:
            continue  # no detections under this budget: precision and recall stay 0
        c = cat[sel]
        length = np.bincount(c, minlength=num_cats)  # [K] detections per category segment
        start = np.r_[0, np.cumsum(length)[:-1]]
        tp, fp = tp_all[:, :, sel], fp_all[:, :, sel]
        fp_count = np.cumsum(fp, axis=2, dtype=np.int32)
        fp_before = np.where(start > 0, fp_count[:, :, start - 1], 0)  # [A, T, K]
        # Precision only rises at a true positive and recall is read there (or at a segment's first
        # detection), so the interpolated curve is needed at true positives only.
        hits = np.flatnonzero(tp.ravel())  # in (area, threshold, category, score) order
        lane, col = np.divmod(hits, sel.size)
        group = lane * num_cats + c[col]  # the (area, threshold, category) curve of each true positive
        per_group = np.bincount(group, minlength=n_groups)
        group_start = np.r_[0, np.cumsum(per_group)[:-1]]
        tp_sum = (np.arange(hits.size) - group_start[group] + 1).astype(float)
        fp_sum = (fp_count.ravel()[hits] - fp_before.ravel()[group]).astype(float)
        pr = _suffix_max(tp_sum / (fp_sum + tp_sum + np.spacing(1)), (group_start + per_group)[group])
        tp_total = per_group.reshape(n_area, n_thr, num_cats)
        recall[..., mi] = tp_total / n[..., 0][:, None, :]
        # recall first reaches r at the need-th true positive (need 0: the first detection, where the
        # interpolated precision is that of the first true positive, or 0 without one)
        nth = np.maximum(need, 1)[:, None]  # [A, 1, K, R]
        at = group_start.reshape(tp_total.shape)[..., None] + nth - 1
        precision[..., mi] = np.where(nth <= tp_total[..., None], np.r_[pr, 0.0][np.minimum(at, hits.size)], 0.0)
    absent = (npig == 0)[:, None, :]  # [A, 1, K]: no GT to recall
    precision = np.where(absent[..., None, None], -1.0, precision)
    recall = np.where(absent[..., None], -1.0, recall)
    return precision.transpose(1, 3, 2, 0, 4), recall.transpose(1, 2, 0, 3)
