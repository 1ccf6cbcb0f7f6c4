"""`ovis eval`: merges rank shards, prints the metrics JSON last, writes metrics.json/.md, clear errors."""

from __future__ import annotations

import json

import pytest

from ovis.eval.cli import main


def _gt() -> dict:
    box = [[10, 10, 40, 10, 40, 40, 10, 40]]
    return {
        "images": [{"id": 1, "height": 60, "width": 80}, {"id": 2, "height": 60, "width": 80}],
        "categories": [{"id": 1, "name": "person"}, {"id": 8, "name": "truck"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0, "segmentation": box},
            {"id": 2, "image_id": 2, "category_id": 8, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0, "segmentation": box},
        ],
    }


def test_cli_merges_shards_and_writes_metrics(tmp_path, capsys):
    (tmp_path / "val.json").write_text(json.dumps(_gt()))
    for rank, img in enumerate((1, 2)):
        det = [{"image_id": img, "category_id": 1, "score": 0.9, "bbox": [10, 10, 30, 30]}]
        (tmp_path / f"detections.rank{rank}.json").write_text(json.dumps(det))
    out = tmp_path / "eval"
    rc = main(["--protocol", "coco_voc_nonvoc", "--gt", str(tmp_path / "val.json"),
               "--detections", str(tmp_path / "detections.json"), "--iou-type", "bbox", "--out", str(out)])
    assert rc == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["protocol"] == "coco_voc_nonvoc" and last["iou_type"] == "bbox"
    # person (VOC) is seen: its hit is removed; the truck is found at k=10 by the rank-1 shard
    assert last["metrics"]["AR@10"] == 1.0 and set(last["metrics"]) >= {"AR@1500", "AUC", "AR_l@100"}
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["metrics"] == last["metrics"] and saved["num_detections"] == 2
    assert "| AR@100 | 1.000000 | 100.0 |" in (out / "metrics.md").read_text()


def test_cli_reports_bad_input_on_one_line(tmp_path, capsys):
    (tmp_path / "val.json").write_text(json.dumps(_gt()))
    (tmp_path / "dt.json").write_text(json.dumps([{"image_id": 5, "category_id": 1, "score": 1.0, "bbox": [0, 0, 1, 1]}]))
    rc = main(["--protocol", "coco", "--gt", str(tmp_path / "val.json"), "--detections", str(tmp_path / "dt.json"),
               "--iou-type", "bbox"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"ovis eval: error: {tmp_path / 'dt.json'}: 1 'image_id' value(s)") and "5 (first at" in err[0]


def _unknown_image(gt: dict) -> None:
    gt["annotations"][1]["image_id"] = 99


def _duplicate_id(gt: dict) -> None:
    gt["annotations"][1]["id"] = 1


def _no_height(gt: dict) -> None:
    del gt["images"][1]["height"]


@pytest.mark.parametrize("corrupt, expected", [
    (_unknown_image, "annotation 2: 'image_id' 99 is not an image id in 'images'"),
    (_duplicate_id, "annotation 1: duplicate 'id'"),
    (_no_height, "image 2: 'height' is None"),
    (None, "not valid JSON"),
])
def test_ground_truth_is_validated_like_splits(tmp_path, capsys, corrupt, expected):
    gt = _gt()
    text = json.dumps(gt)[:-3] if corrupt is None else None
    if corrupt is not None:
        corrupt(gt)
        text = json.dumps(gt)
    (tmp_path / "val.json").write_text(text)
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9,
                                                     "bbox": [10, 10, 30, 30]}]))
    out = tmp_path / "eval"
    rc = main(["--protocol", "coco_voc_nonvoc", "--gt", str(tmp_path / "val.json"),
               "--detections", str(tmp_path / "dets.json"), "--iou-type", "bbox", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(tmp_path / "val.json") in err and expected in err
    assert not out.exists()


def test_metrics_without_ground_truth_are_flagged_not_averaged(tmp_path, capsys):
    gt = _gt()
    gt["annotations"] = gt["annotations"][:1]  # only the person: no unseen (non-VOC) instance left
    (tmp_path / "val.json").write_text(json.dumps(gt))
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9,
                                                     "bbox": [10, 10, 30, 30]}]))
    rc = main(["--protocol", "coco_voc_nonvoc", "--gt", str(tmp_path / "val.json"),
               "--detections", str(tmp_path / "dets.json"), "--iou-type", "bbox", "--out", str(tmp_path / "ev")])
    captured = capsys.readouterr()
    metrics = json.loads(captured.out.strip().splitlines()[-1])["metrics"]
    assert rc == 0 and metrics["AUC"] is None and metrics["AR@100"] is None
    assert "ovis eval: note: no ground truth for AR@10, AR@100" in captured.err and "reported as null" in captured.err
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]["AUC"] is None
    assert "| AUC | null (no GT) | – |" in (tmp_path / "ev" / "metrics.md").read_text()


@pytest.mark.parametrize("text, expected", [
    ('{"base": [1], "novel": [8]', "not valid JSON (truncated or corrupt?): Expecting ',' delimiter"),
    ('[1, 8]', "a partition is a JSON object with base/novel category lists, got a list"),
    ('{"base": [1], "unseen": [8]}', "a partition needs keys base/novel (or voc/nonvoc, seen/unseen); got ['base', 'unseen']"),
    ('{"base": [1], "novel": 8}', "partition 'novel' is 8, expected a list of categories"),
    ('{"base": [{"name": "person"}], "novel": [8]}', "partition 'base'[0] is {'name': 'person'}, expected a category id"),
    ('{"base": [1], "novel": ["8"]}', "partition 'novel'[0] is '8', expected a category id"),
])
def test_a_bad_partition_file_is_one_line_naming_it(tmp_path, capsys, text, expected):
    (tmp_path / "val.json").write_text(json.dumps(_gt()))
    (tmp_path / "dets.json").write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9,
                                                     "bbox": [10, 10, 30, 30]}]))
    (tmp_path / "partition.json").write_text(text)
    rc = main(["--protocol", "coco_voc_nonvoc", "--gt", str(tmp_path / "val.json"), "--detections",
               str(tmp_path / "dets.json"), "--iou-type", "bbox", "--partition", str(tmp_path / "partition.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith(f"ovis eval: error: {tmp_path / 'partition.json'}: ") and expected in err[0]
