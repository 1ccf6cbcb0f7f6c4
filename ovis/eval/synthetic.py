"""Synthetic detections on real ground truth, for evaluator parity tests and speed benchmarks.

Per image (seeded): perturbed copies of GT objects (shifted masks, jittered boxes), duplicates
on the same object, false positives, and low-score boxes filling the list up to `per_image`;
some scores are rounded so that ties exercise the evaluator's ordering. Each entry carries both
`bbox` and an RLE `segmentation`; the bbox of a perturbed mask is deliberately the jittered box,
not the mask's own box, so an evaluator that keeps `bbox` for segm gets other area ranges.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils

from ovis.data.coco import ann_to_rle


def _box_polygons(boxes: np.ndarray) -> list[list[float]]:
    x0, y0 = boxes[:, 0], boxes[:, 1]
    x1, y1 = x0 + boxes[:, 2], y0 + boxes[:, 3]
    return np.stack([x0, y0, x1, y0, x1, y1, x0, y1], axis=1).tolist()


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def synthetic_detections(gt: dict, per_image: int = 100, seed: int = 0, duplicates: int = 2) -> list[dict]:
    """Detections for every GT image: list of {image_id, category_id, score, bbox, segmentation}."""
    rng = np.random.default_rng(seed)
    cat_ids = np.asarray([c["id"] for c in gt["categories"]])
    by_image: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    out: list[dict] = []
    for img in gt["images"]:
        h, w, img_id = int(img["height"]), int(img["width"]), img["id"]
        dets: list[dict] = []
        for a in by_image.get(img_id, []):
            if rng.random() < 0.15:  # missed object
                continue
            mask = mask_utils.decode(ann_to_rle(a, h, w))
            for j in range(1 + int(rng.integers(0, duplicates + 1))):
                scale = max(2, int(0.15 * np.sqrt(max(a["area"], 1.0))))
                dy, dx = (int(v) for v in rng.integers(-scale, scale + 1, size=2))
                moved = np.asfortranarray(_shift(mask, dy, dx))
                rle = mask_utils.encode(moved)
                bx = np.asarray(a["bbox"], dtype=np.float64) + rng.normal(0, 0.1 * scale, size=4)
                bx[2:] = np.maximum(bx[2:], 1.0)
                dets.append({
                    "image_id": img_id,
                    "category_id": int(a["category_id"] if rng.random() < 0.7 else rng.choice(cat_ids)),
                    "score": float(rng.uniform(0.3, 1.0) * (0.8**j)),
                    "bbox": bx.tolist(),
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                })
        n_fill = max(0, per_image - len(dets))
        if n_fill:
            side = np.exp(rng.uniform(np.log(4), np.log(0.9 * min(h, w)), size=(n_fill, 2)))
            x0 = rng.uniform(0, w - side[:, 0])
            y0 = rng.uniform(0, h - side[:, 1])
            boxes = np.stack([x0, y0, side[:, 0], side[:, 1]], axis=1)
            rles = mask_utils.frPyObjects(_box_polygons(boxes), h, w)  # one RLE per polygon
            scores = rng.uniform(0.0, 0.3, size=n_fill)
            scores[: n_fill // 4] = np.round(scores[: n_fill // 4], 2)  # ties
            cats = rng.choice(cat_ids, size=n_fill)
            for b, r, s, c in zip(boxes, rles, scores, cats):
                dets.append({
                    "image_id": img_id,
                    "category_id": int(c),
                    "score": float(s),
                    "bbox": b.tolist(),
                    "segmentation": {"size": [h, w], "counts": r["counts"].decode("ascii")},
                })
        out.extend(dets[:per_image] if len(dets) > per_image else dets)
    return out


def class_agnostic(dets: list[dict], category_id: int) -> list[dict]:
    """The same detections with one category id (what a class-agnostic model writes)."""
    return [{**d, "category_id": category_id} for d in dets]


def repeat_gt(gt: dict, times: int) -> dict:
    """`gt` with its images repeated `times` times under new image and annotation ids."""
    max_img = max(i["id"] for i in gt["images"]) + 1
    max_ann = max((a["id"] for a in gt["annotations"]), default=0) + 1
    images, anns = [], []
    for r in range(times):
        images += [{**i, "id": i["id"] + r * max_img} for i in gt["images"]]
        anns += [{**a, "id": a["id"] + r * max_ann, "image_id": a["image_id"] + r * max_img} for a in gt["annotations"]]
    return {**gt, "images": images, "annotations": anns}
