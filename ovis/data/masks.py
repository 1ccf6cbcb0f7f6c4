"""COCO segmentations ↔ masks: polygons, uncompressed and compressed RLE, mask IoU and pixel extents (pycocotools, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def segmentation_to_rle(segm: Any, height: int, width: int, where: str = "segmentation") -> dict:
    """Compressed RLE ``{"size": [h, w], "counts": bytes}`` of a polygon list, uncompressed RLE
    (counts list, COCO crowd regions) or compressed RLE, as pycocotools' ``annToRLE`` (polygon parts
    merged). ``where`` names the entry in errors."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if not isinstance(segm, dict) or "counts" not in segm or "size" not in segm:
        raise ValueError(f"{where}: segmentation must be a polygon list or an RLE dict with 'size' and "
                         f"'counts', got {type(segm).__name__}")
    if tuple(segm["size"]) != (height, width):
        raise ValueError(f"{where}: RLE size {list(segm['size'])} does not match the image size "
                         f"[{height}, {width}]; the annotation belongs to another image or a resized copy")
    counts = segm["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(segm, height, width)
    return {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def ann_to_rle(ann: dict, height: int, width: int) -> dict:
    """Compressed RLE of an annotation's ``segmentation``."""
    return segmentation_to_rle(ann["segmentation"], height, width,
                               f"annotation {ann.get('id')} (image {ann.get('image_id')})")


def ann_to_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """Binary mask bool[H, W] of a polygon / uncompressed RLE / compressed RLE annotation."""
    return mask_utils.decode(ann_to_rle(ann, height, width)).astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """JSON-serialisable compressed RLE ``{"size": [h, w], "counts": str}`` of a mask [H, W]."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_rle expects one mask [H, W], got shape {mask.shape}")
    return masks_to_rles(mask[None])[0]


def masks_to_rles(masks: np.ndarray) -> list[dict]:
    """JSON-serialisable compressed RLEs of a mask stack [N, H, W] (bool/uint8, nonzero = on)."""
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks_to_rles expects masks [N, H, W], got shape {masks.shape}")
    if masks.shape[0] == 0:
        return []
    # pycocotools wants uint8 [H, W, N] in Fortran order
    stack = np.asfortranarray((masks != 0).transpose(1, 2, 0), dtype=np.uint8)
    rles = mask_utils.encode(stack)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def mask_iou(dt: Sequence[dict], gt: Sequence[dict]) -> np.ndarray:
    """Mask IoU matrix float[len(dt), len(gt)] between compressed RLEs (``counts`` str or bytes) of one image:
    pycocotools' ``mask.iou`` with every GT a plain object (iscrowd 0, intersection over union; drop crowd
    regions beforehand). Zeros of that shape when either side is empty."""
    size = None
    for side, rles in (("dt", dt), ("gt", gt)):
        for i, rle in enumerate(rles):
            if not isinstance(rle, dict) or not isinstance(rle.get("counts"), (str, bytes)) or "size" not in rle:
                raise ValueError(f"mask_iou: {side}[{i}] must be a compressed RLE dict with 'size' and str/bytes "
                                 f"'counts' (see segmentation_to_rle), got {type(rle).__name__}")
            if size is None:
                size = list(rle["size"])
            elif list(rle["size"]) != size:
                raise ValueError(f"mask_iou: {side}[{i}] has size {list(rle['size'])}, not {size}: "
                                 "all masks must belong to one image")
    if not dt or not gt:
        return np.zeros((len(dt), len(gt)))
    return np.asarray(mask_utils.iou(list(dt), list(gt), [0] * len(gt))).reshape(len(dt), len(gt))


def match_counts(iou: np.ndarray, thresh: float = 0.5) -> tuple[int, int]:
    """Of an IoU matrix [D, G] (:func:`mask_iou`): (GT matched by some detection, detections matching some GT)
    at IoU >= ``thresh`` — coverage and precision numerators."""
    if iou.ndim != 2:
        raise ValueError(f"match_counts expects an IoU matrix [D, G], got shape {iou.shape}")
    hit = iou >= thresh
    return int(hit.any(axis=0).sum()), int(hit.any(axis=1).sum())


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """XYWH float32 [N, 4] of each bool mask's pixel extent in ``masks`` [N, H, W] (zeros for an empty mask)."""
    rows, cols = np.any(masks, axis=2), np.any(masks, axis=1)
    boxes = np.zeros((masks.shape[0], 4), np.float32)
    for i in np.flatnonzero(rows.any(axis=1)):
        y = np.flatnonzero(rows[i])
        x = np.flatnonzero(cols[i])
        boxes[i] = (x[0], y[0], x[-1] - x[0] + 1, y[-1] - y[0] + 1)
    return boxes
