"""cpl_oi_cc, XPM's Open Images + Conceptual Captions setting (docs/cpl.md#28-open-images-and-conceptual-captions):
its protocol takes base/novel from the val file's category ``split`` fields, as the authors' Open Images preparation
writes them, and the recipe builds at full size. tests/test_caption_set.py runs it on real images."""

from __future__ import annotations

import json

import pytest
from conftest import COCO_MINI
from test_recipes_build import PARAMS_M

from ovis.config import load_recipe
from ovis.data.coco import CocoFormatError
from ovis.data.splits import load_partition, write_splits
from ovis.eval import evaluate
from ovis.io import write_json_atomic
from ovis.methods import cpl
from ovis.models.detector import build_detector
from ovis.models.text import build_text_encoder

ANN = COCO_MINI / "annotations"


def _with_splits(name: str, path, seen_only: bool = False):
    """coco_mini's ``name`` file as construct_openimages_json.py would write it for the 48/17 classes: every kept
    category marked seen or unseen, the others and their annotations dropped (``seen_only``: the seen ones alone)."""
    data = json.loads((ANN / name).read_text())
    part = load_partition("coco_ovr_48_17")
    side = {c["id"]: "seen" for c in part["base"]} | ({} if seen_only else {c["id"]: "unseen" for c in part["novel"]})
    return write_json_atomic({**data, "categories": [{**c, "split": side[c["id"]]} for c in data["categories"]
                                                     if c["id"] in side],
                              "annotations": [a for a in data["annotations"] if a["category_id"] in side]}, path)


def test_category_splits_give_the_files_of_the_48_17_protocol(tmp_path):
    train = _with_splits("instances_train2017.json", tmp_path / "train_seen.json", seen_only=True)
    val = _with_splits("instances_val2017.json", tmp_path / "val_all.json")
    ours = write_splits("ovr_category_split", train, val, tmp_path / "ours")
    theirs = write_splits("coco_ovr_48_17", ANN / "instances_train2017.json", ANN / "instances_val2017.json",
                          tmp_path / "theirs")
    assert ours == theirs
    for name in ("train_base.json", "val.json", "val_novel.json", "val_base.json"):
        a, b = (json.loads((tmp_path / d / name).read_text()) for d in ("ours", "theirs"))
        assert a == b, name
    a, b = (json.loads((tmp_path / d / "partition.json").read_text()) for d in ("ours", "theirs"))
    assert (a["base"], a["novel"]) == (b["base"], b["novel"]) and a["protocol"] == "ovr_category_split"


def test_a_category_without_a_split_is_one_line_and_nothing_is_written(tmp_path):
    train = _with_splits("instances_train2017.json", tmp_path / "train.json", seen_only=True)
    val = json.loads(_with_splits("instances_val2017.json", tmp_path / "val.json").read_text())
    cat = val["categories"][3]
    del cat["split"]
    bad = write_json_atomic(val, tmp_path / "bad.json")
    with pytest.raises(CocoFormatError) as err:
        write_splits("ovr_category_split", train, bad, tmp_path / "out")
    assert str(err.value).startswith(f"{bad}: category {cat['id']} ({cat['name']}): 'split' is None")
    seen = json.loads(_with_splits("instances_val2017.json", tmp_path / "seen.json", seen_only=True).read_text())
    with pytest.raises(CocoFormatError, match="no novel category"):
        write_splits("ovr_category_split", train, tmp_path / "seen.json", tmp_path / "out")
    assert seen["categories"] and not (tmp_path / "out").exists()


def test_cpl_oi_cc_states_the_authors_open_images_schedules_and_data():
    r = load_recipe("cpl_oi_cc")
    t, s = r.teacher, r.student  # configs/conceptual_openimages_det/*.yaml: 8 images a batch on 8 GPUs
    assert (t.lr, t.max_iter, t.steps, t.batch_size * r.launch.nproc) == (0.0005, 90000, [60000, 80000], 8)
    assert (s.lr, s.max_iter, s.steps, s.batch_size * r.launch.nproc) == (0.005, 70000, [20000, 50000], 8)
    assert s.uncertainty and s.lambda_pseudo == 0.1 and s.freeze == ["backbone", "rpn"]
    assert r.pseudo.vocabulary == "lvis" and r.splits.protocol == r.eval.protocol == "ovr_category_split"
    d = r.data
    assert d.train_captions is None and d.caption_set.endswith(".jsonl") and d.caption_set_images
    m = r.model
    assert (m.arch, m.backbone, m.min_size, m.max_size, m.background_weight) == ("c4", "resnet50", 800, 1333, 0.2)


def test_cpl_oi_cc_builds_at_full_size(tmp_path):
    r = load_recipe("cpl_oi_cc", {"model.backbone_weights": None})
    names = ["Man", "Tree", "Car", "Dog", "Flower"]  # Open Images class names (the authors' seen list)
    model = build_detector(r.model, class_embeddings=build_text_encoder(r.model.text_encoder).encode(names))
    lo, hi = PARAMS_M["cpl_coco"]
    assert lo <= sum(p.numel() for p in model.parameters()) / 1e6 <= hi
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)
    run_dir = tmp_path / "run"
    write_json_atomic({"base": [{"id": k, "name": n} for k, n in enumerate(names, 1)], "novel": []},
                      run_dir / "splits" / "partition.json")
    student = cpl.build_student(r, run_dir, cpl.pseudo_vocabulary(r, run_dir).names)
    assert sum(p.numel() for p in student.parameters()) > sum(p.numel() for p in model.parameters())  # + σ-head
    assert student.roi_heads.pseudo_class_embeddings.shape[0] == 1203 + 1  # LVIS vocabulary plus background


def test_evaluation_under_the_category_split_scores_as_the_48_17_protocol(tmp_path):
    train = _with_splits("instances_train2017.json", tmp_path / "train_seen.json", seen_only=True)
    write_splits("ovr_category_split", train, _with_splits("instances_val2017.json", tmp_path / "val.json"),
                 tmp_path / "splits")
    gt = json.loads((tmp_path / "splits" / "val.json").read_text())
    # every other GT box as a detection, with a score that falls along the list: AP50 strictly between 0 and 1
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1 - k / 1000}
            for k, a in enumerate(gt["annotations"]) if k % 2 == 0]
    ours = evaluate("ovr_category_split", gt, dets, "bbox", partition=tmp_path / "splits" / "partition.json")
    theirs = evaluate("coco_ovr_48_17", gt, dets, "bbox")
    for key in ("AP50_base", "AP50_novel", "AP50_all"):
        assert ours["metrics"][key] == theirs["metrics"][key] and 0 < ours["metrics"][key] < 1, key
