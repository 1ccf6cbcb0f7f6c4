"""Checking detections: all at once when every detection is plainly valid, with the same copies and the
same first error as one by one; the fast backend does not import pycocotools.coco."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ovis.eval.io import EvalInputError, _check_one_by_one, _plainly_valid, check_detections
from ovis.eval.synthetic import synthetic_detections

VAL = Path(__file__).parent / "data" / "real" / "coco_mini" / "annotations" / "instances_val2017.json"


@pytest.fixture(scope="module")
def real() -> tuple[dict, list[dict]]:
    gt = json.loads(VAL.read_text())
    dets = json.loads(json.dumps(synthetic_detections(gt, per_image=20, seed=3)))  # as read from a results file
    for i, d in enumerate(dets[::7]):  # JSON integers where floats are usual
        d["score"], d["bbox"][i % 4] = 1, int(d["bbox"][i % 4])
    return gt, dets


def _one_by_one(dets: list, gt: dict, iou_type: str, segm_area: str = "mask") -> list[dict]:
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    cats = {c["id"] for c in gt["categories"]}
    return _check_one_by_one(dets, sizes, cats, iou_type == "segm", iou_type == "bbox" or segm_area == "box", "dets")


@pytest.mark.parametrize("iou_type,segm_area", [("segm", "mask"), ("segm", "box"), ("bbox", "mask")])
def test_detections_checked_at_once_are_the_copies_one_by_one_makes(real, iou_type, segm_area):
    gt, dets = real
    sizes = {img["id"]: (img["height"], img["width"]) for img in gt["images"]}
    cats = {c["id"] for c in gt["categories"]}
    assert _plainly_valid(dets, sizes, cats, iou_type == "segm", iou_type == "bbox" or segm_area == "box") is not None
    clean = check_detections(dets, gt, iou_type, "dets", segm_area)
    assert clean == _one_by_one(dets, gt, iou_type, segm_area)
    assert all(type(d["score"]) is float for d in clean)
    assert ("bbox" in clean[0]) == (iou_type == "bbox" or segm_area == "box")


def test_unusual_but_valid_detections_still_pass(real):
    gt, dets = real
    dets = copy.deepcopy(dets[:30])
    dets[3]["segmentation"]["counts"] = dets[3]["segmentation"]["counts"].encode()  # pycocotools.mask.encode's bytes
    h, w = dets[5]["segmentation"]["size"]
    dets[5]["segmentation"]["counts"] = [h * w - 4, 4]  # uncompressed
    clean = check_detections(dets, gt, "segm", "dets")
    assert clean[3]["segmentation"] == real[1][3]["segmentation"]
    assert all(isinstance(d["segmentation"]["counts"], str) for d in clean) and len(clean) == 30


@pytest.mark.parametrize("index,change,message", [
    (900, lambda d: d.update(score=float("nan")), "dets[900] (image {img}): 'score' nan is not a finite number"),
    (901, lambda d: d.pop("category_id"), "dets[901]: no 'category_id'"),
    (902, lambda d: d.update(image_id=True), "dets[902]: 'image_id' is True, expected an integer id"),
    (903, lambda d: d["segmentation"].update(size=[1.0, 2]), "dets[903] (image {img}): 'segmentation' RLE size [1.0, 2]"),
    (905, lambda d: d.update(bbox=[0, 0, -1, 2]), "dets[905] (image {img}): 'bbox' [0, 0, -1, 2] has negative width"),
])
def test_the_first_bad_detection_is_named_among_many_good_ones(real, index, change, message):
    gt, dets = real
    dets = copy.deepcopy(dets)
    dets[1500]["image_id"] = 12345  # unknown images are reported after every other problem
    change(dets[index])
    with pytest.raises(EvalInputError) as caught:
        check_detections(dets, gt, "segm", "dets", "box")
    assert str(caught.value).startswith(message.format(img=dets[index].get("image_id")))


def test_an_rle_that_does_not_cover_its_image_is_named(real):
    gt, dets = real
    dets = copy.deepcopy(dets)
    dets[904]["segmentation"]["counts"] = "0"
    with pytest.raises(EvalInputError, match=r"^dets\[904\] \(image \d+\): 'segmentation' RLE counts string covers 0 pixels"):
        check_detections(dets, gt, "segm", "dets")


def test_unknown_ids_are_reported_together_after_the_rest(real):
    gt, dets = real
    dets = copy.deepcopy(dets)
    dets[10]["image_id"], dets[20]["image_id"] = 12345, 777
    with pytest.raises(EvalInputError, match=r"dets: 2 'image_id' value\(s\) .*12345 \(first at dets\[10\]\), 777"):
        check_detections(dets, gt, "bbox", "dets")


def test_fast_backend_does_not_import_pycocotools_coco(tmp_path):
    gt = json.loads(VAL.read_text())
    (tmp_path / "dets.json").write_text(json.dumps(synthetic_detections(gt, per_image=5, seed=0)))
    code = ("import sys; from ovis.eval.cli import main; "
            f"rc = main(['--protocol', 'coco_voc_nonvoc', '--gt', {str(VAL)!r}, '--detections', "
            f"{str(tmp_path / 'dets.json')!r}]); "
            "print(rc, 'pycocotools.coco' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "0 False False"
