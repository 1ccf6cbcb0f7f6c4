"""OVR-CNN / CPL maskrcnn-benchmark checkpoints land in the ovis R-C4 detector tensor by tensor."""

from __future__ import annotations

import pytest
import torch

from ovis.config import ModelConfig
from ovis.models.convert import (
    FROZEN_BN_EPS,
    convert_maskrcnn_benchmark,
    load_maskrcnn_benchmark,
)
from ovis.models.detector import build_detector

DIM = 32
# ovis prefix -> upstream (maskrcnn-benchmark, DDP-saved) prefix, written out independently of convert.py
UPSTREAM = {
    "backbone.body.conv1.": "module.backbone.body.stem.conv1.",
    "backbone.body.bn1.": "module.backbone.body.stem.bn1.",
    "backbone.body.layer1.": "module.backbone.body.layer1.",
    "backbone.body.layer2.": "module.backbone.body.layer2.",
    "backbone.body.layer3.": "module.backbone.body.layer3.",
    "roi_heads.res5.": "module.roi_heads.box.feature_extractor.head.layer4.",
    "roi_heads.box_predictor.projection.": "module.roi_heads.box.predictor.emb_pred.",
    "roi_heads.box_predictor.bbox_pred.": "module.roi_heads.box.predictor.bbox_pred.",
    "rpn.head.conv.0.0.": "module.rpn.head.conv.",
    "rpn.head.cls_logits.": "module.rpn.head.cls_logits.",
    "rpn.head.bbox_pred.": "module.rpn.head.bbox_pred.",
    "roi_heads.mask_predictor.conv5_mask.": "module.roi_heads.mask.predictor.conv5_mask.",
    "roi_heads.mask_predictor.mask_fcn_logits.": "module.roi_heads.mask.predictor.mask_fcn_logits.",
}


def c4_model():
    cfg = ModelConfig(arch="c4", backbone="resnet50", stride_in_1x1=True, input_format="bgr255", min_size=64,
                      max_size=64, embedding_dim=DIM, c4_pooler_resolution=7)
    return build_detector(cfg)


def upstream_from(model) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(upstream state dict with fresh random tensors, the tensors each ovis key must receive)."""
    torch.manual_seed(0)
    upstream, expected = {}, {}
    for key, value in model.state_dict().items():
        prefix = next(p for p in UPSTREAM if key.startswith(p))
        fresh = torch.randn_like(value) if value.is_floating_point() else value.clone()
        expected[key] = fresh
        up_key = UPSTREAM[prefix] + key[len(prefix):]
        if prefix == "roi_heads.box_predictor.bbox_pred.":  # upstream: (background, foreground) x 4
            fresh = torch.cat([torch.full_like(fresh, 99.0), fresh])
        if prefix == "roi_heads.mask_predictor.mask_fcn_logits.":  # upstream: 2 channels, channel 1 used
            fresh = torch.cat([torch.full_like(fresh, 99.0), fresh])
        upstream[up_key] = fresh
    return upstream, expected


def test_every_mapped_tensor_lands_where_it_should():
    model = c4_model()
    upstream, expected = upstream_from(model)
    upstream["module.mmss_heads.GroundingHead.v2l_projection.weight"] = torch.zeros(DIM, 2048)
    upstream["module.roi_heads.box.predictor.cls_score.weight"] = torch.zeros(48, DIM)  # class embeddings
    upstream["module.language_backbone.embeddings.weight"] = torch.zeros(10, DIM)
    for stat in ("running_mean", "running_var"):  # old FrozenBN saved weight and bias only
        del upstream[f"module.backbone.body.layer1.0.bn2.{stat}"]

    report = load_maskrcnn_benchmark(model, {"model": upstream, "iteration": 90000})
    ours = model.state_dict()
    filled = {"backbone.body.layer1.0.bn2.running_mean", "backbone.body.layer1.0.bn2.running_var"}
    for key, value in expected.items():
        if key not in filled:
            assert torch.equal(ours[key], value), key
    assert torch.equal(ours["backbone.body.layer1.0.bn2.running_mean"], torch.zeros(64))
    assert torch.equal(ours["backbone.body.layer1.0.bn2.running_var"], torch.full((64,), 1 - FROZEN_BN_EPS))
    assert sorted(report.filled_bn_stats) == sorted(filled)
    assert report.missing == []
    assert report.superseded == ["mmss_heads.GroundingHead.v2l_projection.weight"]  # emb_pred wins
    assert sorted(report.unused) == ["language_backbone.embeddings.weight", "roi_heads.box.predictor.cls_score.weight"]
    assert report.loaded["roi_heads.res5.2.conv3.weight"] == "roi_heads.box.feature_extractor.head.layer4.2.conv3.weight"
    assert report.summary().startswith("loaded 277 tensors") and "language_backbone.embeddings.weight" in report.summary()


def test_caption_pretraining_checkpoint_fills_res5_and_projection(tmp_path):
    """An MMSS (caption-grounding) checkpoint: C5 in the backbone, projection in the grounding head."""
    model = c4_model()
    upstream, expected = upstream_from(model)
    pretrain = {}
    for key, value in upstream.items():
        key = key.replace("roi_heads.box.feature_extractor.head.layer4.", "backbone.body.layer4.")
        key = key.replace("roi_heads.box.predictor.emb_pred.", "mmss_heads.GroundingHead.v2l_projection.")
        if key.startswith("module.backbone") or key.startswith("module.mmss_heads"):
            pretrain[key] = value
    path = tmp_path / "model_final.pth"
    torch.save({"model": pretrain}, path)
    report = load_maskrcnn_benchmark(model, path)
    ours = model.state_dict()
    for key in ("roi_heads.res5.0.conv2.weight", "roi_heads.box_predictor.projection.weight", "backbone.body.conv1.weight"):
        assert torch.equal(ours[key], expected[key]), key
    assert all(k.startswith(("rpn.", "roi_heads.box_predictor.bbox_pred", "roi_heads.mask_predictor")) for k in report.missing)
    assert report.missing and not report.unused


def test_shape_mismatch_and_foreign_checkpoints_are_errors(tmp_path):
    model = c4_model()
    with pytest.raises(ValueError, match=r"roi_heads.box_predictor.projection.weight: upstream tensor has shape \[768, 2048\]"):
        convert_maskrcnn_benchmark({"roi_heads.box.predictor.emb_pred.weight": torch.zeros(768, 2048)}, model)
    with pytest.raises(ValueError, match="no checkpoint key matched"):
        load_maskrcnn_benchmark(model, {"model": {"head.fc.weight": torch.zeros(2)}})
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_maskrcnn_benchmark(model, tmp_path / "nothing.pth")
