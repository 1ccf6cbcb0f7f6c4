"""Paper recipes: schedules as docs/cpl.md#26-hyper-parameters and docs/ggn.md#37-hyper-parameters say,
full-size models build, and every variant trains through the real engine and predicts on real COCO
val2017 images (tests/data/real/coco_mini).

The train/predict test shrinks only what sets the CPU cost (ResNet-18 for ResNet-50, 256-px images,
proposal and RoI counts) and drops the ImageNet weights (offline); architecture (C4/FPN), heads,
classifier, losses and solver are the recipe's. Full-size models are built (not run) separately.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import COCO_MINI
from torch.utils.data import Subset

from ovis.data.dataset import CocoDetection
from ovis.data.splits import load_partition
from ovis.engine.train import TrainTask, train
from ovis.io import write_json_atomic
from ovis.methods import load_recipe
from ovis.models.detector import build_detector, set_class_embeddings
from ovis.models.text import build_text_encoder

PAPER = ("cpl_coco", "ggn_coco", "oln_box_coco")
# the stage that trains the detector: CPL's teacher; GGN/OLN's class-agnostic Mask R-CNN (student)
DETECTOR_STAGE = {"cpl_coco": "teacher", "ggn_coco": "student", "oln_box_coco": "student"}
LOSS_KEYS = {
    "cpl_coco": {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"},
    "ggn_coco": {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"},
    "oln_box_coco": {"loss_box_reg", "loss_iou_score", "loss_objectness", "loss_rpn_box_reg"},
}
# full-size parameter counts (ResNet-50, no weights): R50-C4 embedding head with a 384-d MiniLM space;
# R50-FPN class-agnostic Mask R-CNN (torchvision's 91-class model has 44.4 M); OLN-Box without masks
PARAMS_M = {"cpl_coco": (35.0, 37.0), "ggn_coco": (43.0, 44.5), "oln_box_coco": (40.5, 42.0)}
FAST = {  # CPU-sized overrides for the train/predict test
    "model.backbone": "resnet18", "model.backbone_weights": None, "model.min_size": 256, "model.max_size": 256,
    "model.rpn_pre_nms_top_n_train": 600, "model.rpn_post_nms_top_n_train": 100,
    "model.rpn_pre_nms_top_n_test": 300, "model.rpn_post_nms_top_n_test": 50,
    "model.box_batch_size_per_image": 64, "model.box_detections_per_img": 20, "model.box_score_thresh": 0.0,
}
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
            "SUBMITIT_EXECUTOR")


@pytest.fixture(scope="module")
def encoder():
    return build_text_encoder("minilm")


@pytest.fixture(scope="module")
def partition():
    return load_partition("coco_ovr_48_17")


@pytest.fixture(scope="module")
def val_json(tmp_path_factory) -> Path:
    """instances_val2017.json restricted to the images whose JPEGs the fixture carries."""
    data = json.loads((COCO_MINI / "annotations" / "instances_val2017.json").read_text())
    present = {p.name for p in (COCO_MINI / "val2017").glob("*.jpg")}
    images = [im for im in data["images"] if im["file_name"] in present]
    assert len(images) == len(present) == 8
    ids = {im["id"] for im in images}
    data = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    return write_json_atomic(data, tmp_path_factory.mktemp("coco") / "instances_val2017_present.json")


@pytest.fixture
def single_process(monkeypatch):
    for name in DIST_ENV:  # setenv first so that monkeypatch restores the caller's value
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_cpl_schedules_match_methods_2_6():
    r = load_recipe("cpl_coco")
    t, s = r.teacher, r.student
    assert (t.lr, t.max_iter, t.steps, t.batch_size) == (0.0005, 90000, [60000, 80000], 1)
    assert (s.lr, s.max_iter, s.steps, s.batch_size) == (0.005, 70000, [20000, 50000], 1)
    for c in (t, s):
        assert c.warmup_iters == 500 and c.warmup_factor == pytest.approx(1 / 3)
        assert c.weight_decay == 1e-4 and c.flip_prob == 0.5
    assert r.launch.nproc == 8  # 8 GPUs x 1 image
    assert t.freeze == ["roi_heads.box_predictor.projection"] and s.freeze == ["backbone", "rpn"]
    assert s.uncertainty and s.uncertainty_train_iter == 10000
    m = r.model
    assert (m.arch, m.classifier, m.min_size, m.max_size) == ("c4", "embedding", 800, 1333)
    assert (m.box_batch_size_per_image, m.box_positive_fraction, m.background_weight) == (512, 1.0, 0.2)
    assert (m.box_score_thresh, m.box_nms_thresh, m.box_detections_per_img) == (0.05, 0.5, 100)


@pytest.mark.parametrize("name", ["ggn_coco", "oln_box_coco"])
def test_ggn_oln_schedules_match_methods_3_7(name):
    r = load_recipe(name)
    pa, det = r.teacher, r.student
    assert r.launch.nproc == 8
    assert (pa.lr, pa.batch_size) == (0.02, 1)  # PA network: bs 8 = 8 GPUs x 1
    assert (det.lr, det.batch_size) == (0.02, 2)  # Mask R-CNN / OLN: bs 16 = 8 GPUs x 2
    # epoch schedules as iterations: PA 20 epochs (step 15), detector 8 epochs (steps 6, 7)
    assert pa.steps[0] / pa.max_iter == pytest.approx(15 / 20)
    assert [s / det.max_iter for s in det.steps] == pytest.approx([6 / 8, 7 / 8], abs=1e-4)
    assert pa.max_iter * 8 * 1 / 20 == pytest.approx(det.max_iter * 8 * 2 / 8)  # same epoch length
    m = r.model
    assert (m.arch, m.classifier, m.aspect_ratios, m.box_nms_thresh, m.box_detections_per_img) == (
        "fpn", "agnostic", [1.0], 0.7, 1500)
    assert (m.heads, m.mask) == (("oln", False) if name == "oln_box_coco" else ("standard", True))


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_builds_full_size_model(name, partition, encoder):
    r = load_recipe(name, {"model.backbone_weights": None})
    assert (r.model.backbone, r.model.min_size, r.model.max_size) == ("resnet50", 800, 1333)
    emb = encoder.encode([c["name"] for c in partition["base"]]) if r.model.classifier == "embedding" else None
    model = build_detector(r.model, class_embeddings=emb)
    lo, hi = PARAMS_M[name]
    assert lo <= sum(p.numel() for p in model.parameters()) / 1e6 <= hi
    assert (model.transform.min_size, model.transform.max_size) == ((800,), 1333)
    assert (model.roi_heads.mask_head is not None) == r.model.mask


@pytest.mark.parametrize("name", PAPER)
def test_paper_recipe_without_the_resnet_file_names_it_and_the_way_out(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no weights/ folder here
    r = load_recipe(name)
    assert r.model.backbone_weights == "weights/resnet50-0676ba61.pth"
    with pytest.raises(FileNotFoundError) as err:
        build_detector(r.model, class_embeddings=torch.zeros(2, 384) if r.model.classifier == "embedding" else None)
    text = str(err.value)
    assert "weights/resnet50-0676ba61.pth" in text and "ResNet50_Weights.IMAGENET1K_V1" in text
    assert str(tmp_path) in text


@pytest.mark.parametrize("name", PAPER)
def test_recipe_trains_through_the_engine_and_predicts_on_real_images(
        name, val_json, partition, encoder, tmp_path, single_process):
    r = load_recipe(name, FAST)
    base = partition["base"]
    torch.manual_seed(0)
    if r.model.classifier == "embedding":
        ds = CocoDetection(val_json, COCO_MINI / "val2017", category_ids=[c["id"] for c in base], skip_empty=True)
        model = build_detector(r.model, class_embeddings=encoder.encode([c["name"] for c in base]))
    else:
        ds = CocoDetection(val_json, COCO_MINI / "val2017", class_agnostic=True, with_masks=r.model.mask,
                           skip_empty=True)
        model = build_detector(r.model)
    image, _ = ds[2]  # not trained on
    h, w = image.shape[-2:]

    def predict(k: int, allow_empty: bool = False) -> dict:
        model.eval()
        with torch.no_grad():
            (det,) = model([image])
        n = len(det["boxes"])
        assert (allow_empty or n > 0) and n <= 20
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert torch.isfinite(det["scores"]).all() and torch.isfinite(det["boxes"]).all()
        assert bool((det["boxes"][:, 2] <= w).all()) and bool((det["boxes"][:, 3] <= h).all())
        assert set(det["labels"].tolist()) <= set(range(1, k + 1))
        if r.model.mask:
            assert det["masks"].shape == (n, 1, h, w)
        else:
            assert "masks" not in det
        return det

    k_base = len(base) if r.model.classifier == "embedding" else 1
    predict(k_base)  # inference on the freshly built model (random heads give every proposal a score)

    cfg = dataclasses.replace(getattr(r, DETECTOR_STAGE[name]), max_iter=2, batch_size=1, num_workers=0,
                              warmup_iters=1, checkpoint_period=2, log_period=1)
    result = train(TrainTask(model, Subset(ds, [0, 1]), cfg), tmp_path / "run", device="cpu", progress=False)
    assert result.iteration == 2 and result.final.is_file() and result.last.is_file()
    rows = [json.loads(line) for line in result.metrics.read_text().splitlines()]
    assert [row["iteration"] for row in rows] == [1, 2]
    for row in rows:
        assert LOSS_KEYS[name] <= set(row)
        assert all(math.isfinite(row[k]) for k in LOSS_KEYS[name] | {"total_loss"})
    if cfg.freeze:  # CPL teacher: the caption-pretrained projection stays frozen
        assert not model.roi_heads.box_predictor.projection.weight.requires_grad
    # two full-lr steps from random weights may push every score under the threshold: allow none
    predict(k_base, allow_empty=True)
    if r.model.classifier != "embedding":
        return

    # open vocabulary: the 17 novel names, never trained on, replace the 48 base ones
    novel = [c["name"] for c in partition["novel"]]
    assert not set(novel) & {c["name"] for c in base}
    set_class_embeddings(model, encoder.encode(novel))
    assert model.roi_heads.box_predictor.num_classes == len(novel)
    predict(len(novel))  # labels index the novel list, scores finite
