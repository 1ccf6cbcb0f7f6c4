"""COCO segmentations ↔ masks: polygons, uncompressed and compressed RLE (pycocotools, no torch)."""

from __future__ import annotations

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
