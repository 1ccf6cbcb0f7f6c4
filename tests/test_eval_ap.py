"""The vectorised COCO AP (`backend="fast"`, the default) equals pycocotools' COCOeval array for
array: the same precision [T, R, K, A, M] and recall [T, K, A, M] bits and the same 12 stats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from ovis.eval.ap import coco_eval
from ovis.eval.io import check_detections
from ovis.eval.synthetic import synthetic_detections

VAL = Path(__file__).parent / "data" / "real" / "coco_mini" / "annotations" / "instances_val2017.json"


def assert_same_as_pycocotools(gt: dict, dets: list[dict], iou_type: str, segm_area: str = "mask") -> None:
    clean = check_detections(dets, gt, iou_type, "dets", segm_area)
    fast = coco_eval(gt, clean, iou_type, "fast")
    ref = coco_eval(gt, clean, iou_type, "pycocotools")
    assert fast.cat_ids == ref.cat_ids
    assert np.array_equal(fast.precision, ref.precision)
    assert np.array_equal(fast.recall, ref.recall)
    assert fast.stats == ref.stats


@pytest.fixture(scope="module")
def real() -> tuple[dict, list[dict]]:
    gt = json.loads(VAL.read_text())
    return gt, synthetic_detections(gt, per_image=60, seed=11, duplicates=3)


@pytest.mark.parametrize("iou_type,segm_area", [("segm", "mask"), ("segm", "box"), ("bbox", "mask")])
def test_real_images_bit_identical(real, iou_type, segm_area):
    assert_same_as_pycocotools(*real, iou_type, segm_area)


def _box(x: float, y: float, w: float, h: float) -> dict:
    return {"bbox": [x, y, w, h], "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]], "area": w * h}


def _corner_cases() -> tuple[dict, list[dict]]:
    """Crowd regions, a GT id 0, GT and detections out of an area range, a category with detections
    but no GT, equal scores across images, equal IoUs, and one category with more than 100 detections."""
    images = [{"id": i, "height": 200, "width": 300} for i in (3, 1, 2)]
    cats = [{"id": c, "name": f"c{c}"} for c in (5, 2, 9)]
    anns = [
        {"id": 0, "image_id": 1, "category_id": 2, "iscrowd": 0, **_box(10, 10, 40, 40)},
        {"id": 7, "image_id": 1, "category_id": 2, "iscrowd": 0, **_box(12, 10, 40, 40)},
        {"id": 8, "image_id": 1, "category_id": 2, "iscrowd": 1, **_box(100, 100, 120, 90)},
        {"id": 9, "image_id": 1, "category_id": 5, "iscrowd": 0, **_box(60, 60, 20, 20)},
        {"id": 10, "image_id": 2, "category_id": 5, "iscrowd": 0, **_box(60, 60, 20, 20)},
        {"id": 11, "image_id": 2, "category_id": 5, "iscrowd": 0, **_box(5, 5, 4, 4)},
        {"id": 12, "image_id": 3, "category_id": 2, "iscrowd": 0, **_box(150, 20, 100, 100)},
    ]
    dets = []
    for img, cat, (x, y, w, h), score in [
        (1, 2, (10, 10, 40, 40), 0.9), (1, 2, (11, 10, 40, 40), 0.9), (1, 2, (12, 10, 40, 40), 0.8),
        (1, 2, (110, 110, 30, 30), 0.7), (1, 2, (120, 120, 30, 30), 0.7), (1, 5, (60, 60, 20, 20), 0.5),
        (2, 5, (60, 60, 20, 20), 0.5), (2, 5, (5, 5, 4, 4), 0.5), (2, 9, (0, 0, 50, 50), 0.95),
        (3, 2, (150, 20, 100, 100), 0.9), (3, 2, (152, 22, 96, 96), 0.9), (3, 5, (150, 20, 100, 100), 0.6),
    ]:
        dets.append({"image_id": img, "category_id": cat, "score": score, **_box(x, y, w, h)})
    rng = np.random.default_rng(0)
    for j in range(130):  # > 100 detections of one category in one image: only the top 100 count
        x, y = rng.uniform(0, 150, size=2)
        dets.append({"image_id": 3, "category_id": 2, "score": float(np.round(rng.uniform(0, 1), 1)),
                     **_box(float(x), float(y), 100.0, 100.0)})
    for d in dets:
        del d["area"]
    return {"images": images, "categories": cats, "annotations": anns}, dets


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_corner_cases_bit_identical(iou_type):
    gt, dets = _corner_cases()
    segm = [{k: v for k, v in d.items() if k != "bbox"} for d in dets]
    if iou_type == "segm":  # detections carry RLE masks, as a model writes them
        for d in segm:
            rle = mask_utils.merge(mask_utils.frPyObjects(d["segmentation"], 200, 300))
            d["segmentation"] = {"size": [200, 300], "counts": rle["counts"].decode("ascii")}
    assert_same_as_pycocotools(gt, segm if iou_type == "segm" else dets, iou_type)


def test_no_detections_and_no_ground_truth():
    gt, dets = _corner_cases()
    assert_same_as_pycocotools(gt, [], "bbox")
    empty = {**gt, "annotations": []}
    assert_same_as_pycocotools(empty, dets, "bbox")
    assert coco_eval(empty, check_detections(dets, empty, "bbox"), "bbox").stats == [-1.0] * 12
