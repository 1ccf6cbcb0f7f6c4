"""GGN's model-zoo settings beyond VOC -> non-VOC train (issue #17): each recipe's protocol splits real fixture files
and the recipe's detector runs two training iterations on the real images of its training split, on CPU. The
full-size model (ResNet-50 FPN at 800 x 1333; 25-55 s a recipe, 2.4 min for the four, on one core) runs in the slow
suite (-m slow); the default suite runs the same with tests/test_recipes_build.py's CPU-sized overrides."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import COCO_MINI, REAL
from test_protocols_uvo import _video_data
from test_recipes_build import FAST, LOSS_KEYS, PARAMS_M, single_process  # noqa: F401 (a fixture)
from torch.utils.data import Subset

from ovis.data.dataset import CocoDetection
from ovis.data.splits import write_splits
from ovis.engine.train import TrainTask, train
from ovis.io import write_json_atomic
from ovis.methods import load_recipe
from ovis.models.detector import build_detector

TRAIN = COCO_MINI / "annotations" / "instances_train2017.json"
VAL = COCO_MINI / "annotations" / "instances_val2017.json"
LVIS = REAL / "lvis_val_100" / "lvis_val_100.json"
SETTINGS = {  # recipe: (training file, val file (None: a UVO video file written here), training image folder)
    "ggn_coco_person": (TRAIN, VAL, COCO_MINI / "train2017"),
    "ggn_coco_lvis": (TRAIN, LVIS, COCO_MINI / "train2017"),
    # lvis_val_100 stands in for LVIS train; its images are named val2017/<file> after their coco_url
    "ggn_lvis_coco": (LVIS, VAL, COCO_MINI),
    "ggn_coco_uvo": (TRAIN, None, COCO_MINI / "train2017"),
}


@pytest.mark.parametrize("size", ["cpu", pytest.param("full", marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_setting_trains_on_the_real_images_of_its_split(name, size, tmp_path, single_process):  # noqa: F811
    r = load_recipe(name, {"model.backbone_weights": None} if size == "full" else FAST)
    train_file, val_file, root = SETTINGS[name]
    if val_file is None:
        val_file = tmp_path / "UVO_video_val_dense.json"
        val_file.write_text(json.dumps(_video_data()[0]))
    write_splits(r.splits.protocol, train_file, val_file, tmp_path / "splits")
    split = json.loads((tmp_path / "splits" / "train_base.json").read_text())
    base = {c["id"] for c in json.loads((tmp_path / "splits" / "partition.json").read_text())["base"]}
    images = [im for im in split["images"] if (root / im["file_name"]).is_file()]
    ids = {im["id"] for im in images}
    anns = [a for a in split["annotations"] if a["image_id"] in ids]
    assert images and anns and {a["category_id"] for a in anns} <= base
    path = write_json_atomic({**split, "images": images, "annotations": anns}, tmp_path / "train_present.json")
    ds = CocoDetection(path, root, class_agnostic=True, with_masks=True, skip_empty=True)
    torch.manual_seed(0)
    model = build_detector(r.model)
    if size == "full":
        lo, hi = PARAMS_M["ggn_coco"]
        assert lo <= sum(p.numel() for p in model.parameters()) / 1e6 <= hi
        assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)
    cfg = dataclasses.replace(r.student, max_iter=2, batch_size=1, num_workers=0, warmup_iters=1,
                              checkpoint_period=2, log_period=1)
    result = train(TrainTask(model, Subset(ds, [i % len(ds) for i in range(2)]), cfg), tmp_path / "run",
                   device="cpu", progress=False)
    assert result.iteration == 2 and result.final.is_file()
    rows = [json.loads(line) for line in Path(result.metrics).read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2]
    for row in rows:
        assert LOSS_KEYS["ggn_coco"] <= set(row)
        assert all(math.isfinite(row[k]) for k in LOSS_KEYS["ggn_coco"] | {"total_loss"})
