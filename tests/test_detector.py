"""build_detector: every variant trains and predicts; open-vocabulary swapping; weights; freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import MaskRCNN

from ovis.config import ModelConfig
from ovis.models.detector import BGR255_MEAN, build_detector, set_class_embeddings
from ovis.models.heads import EmbeddingRoIHeads

VARIANTS = {
    "c4_embedding": dict(arch="c4", classifier="embedding"),
    "fpn_agnostic": dict(arch="fpn", classifier="agnostic", aspect_ratios=[1.0]),
    "fpn_oln": dict(arch="fpn", classifier="agnostic", heads="oln", aspect_ratios=[1.0]),
}
LOSS_KEYS = {
    "c4_embedding": {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"},
    "fpn_agnostic": {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"},
    "fpn_oln": {"loss_box_reg", "loss_iou_score", "loss_mask", "loss_objectness", "loss_rpn_box_reg"},
}
DIM = 16


def tiny_cfg(**kw) -> ModelConfig:
    base = dict(
        backbone="resnet18", trainable_layers=0, min_size=64, max_size=96, fpn_channels=16,
        representation_size=32, mask_head_channels=8, rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50,
        rpn_post_nms_top_n_train=50, rpn_post_nms_top_n_test=30, box_batch_size_per_image=16,
        box_detections_per_img=10, box_score_thresh=0.0, c4_pooler_resolution=7,
    )
    return ModelConfig(**{**base, **kw})


def synthetic(sizes=((64, 64), (64, 80)), seed: int = 0):
    """Images [3, H, W] in [0, 1] with two box+mask objects each, labels 1 and 2."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for h, w in sizes:
        boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [28.0, 20.0, 60.0, 58.0]])
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        images.append(torch.rand(3, h, w, generator=g))
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def build(name: str, **kw) -> MaskRCNN:
    torch.manual_seed(0)
    return build_detector(tiny_cfg(**VARIANTS[name], **kw), class_embeddings=torch.randn(3, DIM))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_and_predicts(name):
    model = build(name)
    assert isinstance(model, MaskRCNN)
    images, targets = synthetic()
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS[name]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    head_grads = [p.grad for n, p in model.named_parameters() if n.startswith("roi_heads.") and p.grad is not None]
    assert head_grads and any(g.abs().sum() > 0 for g in head_grads)

    model.eval()
    with torch.no_grad():
        out = model(images)
    for det, img in zip(out, images):
        n = len(det["boxes"])
        assert 0 < n <= 10
        assert det["boxes"].shape == (n, 4) and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert det["masks"].shape == (n, 1, *img.shape[-2:])  # pasted into the original image
        assert 0 <= float(det["masks"].min()) and float(det["masks"].max()) <= 1
        assert int(det["labels"].min()) >= 1


def test_oln_scores_are_geometric_means_and_labels_foreground():
    model = build("fpn_oln").eval()
    with torch.no_grad():
        det = model(synthetic()[0])[0]
    assert set(det["labels"].tolist()) == {1}
    assert float(det["scores"].max()) <= 1.0


def test_background_logit_is_zero_and_vocabulary_swaps():
    model = build("c4_embedding").eval()
    heads = model.roi_heads
    assert isinstance(heads, EmbeddingRoIHeads)
    feats = torch.randn(7, heads.box_predictor.projection.in_features)
    logits, deltas = heads.box_predictor(feats)
    assert logits.shape == (7, 4) and deltas.shape == (7, 4)
    assert torch.equal(logits[:, 0], torch.zeros(7))
    assert "class_embeddings" not in dict(model.named_parameters())

    set_class_embeddings(model, torch.randn(5, DIM))
    logits, _ = heads.box_predictor(feats)
    assert logits.shape == (7, 6) and torch.equal(logits[:, 0], torch.zeros(7))
    # labels index the current list: make its last entry the best match of the mean region embedding
    images = synthetic()[0]
    with torch.no_grad():
        mean = model.roi_heads.region_embeddings(*proposals_of(model, images)).mean(0)
        for k in (5, 2):
            set_class_embeddings(model, torch.cat([-mean.expand(k - 1, DIM), mean[None]]) * 100)
            det = model(images)
            assert all(set(d["labels"].tolist()) <= set(range(1, k + 1)) for d in det)
            assert [int(d["labels"][0]) for d in det] == [k, k]  # top-scoring detection
    with pytest.raises(ValueError, match=r"\[K, 16\]"):
        set_class_embeddings(model, torch.randn(3, DIM + 1))
    with pytest.raises(TypeError, match="no class embeddings"):
        set_class_embeddings(build("fpn_agnostic"), torch.randn(2, DIM))


def test_training_label_outside_vocabulary_is_an_error():
    model = build("c4_embedding").train()
    images, targets = synthetic()
    targets[0]["labels"] = torch.tensor([1, 7])
    with pytest.raises(ValueError, match="outside the classifier's 3 classes"):
        model(images, targets)


def proposals_of(model, images):
    """(features, proposals, image sizes) of the eval-mode model's transform, backbone and RPN."""
    image_list, _ = model.transform(images)
    features = model.backbone(image_list.tensors)
    proposals, _ = model.rpn(image_list, features)
    return features, proposals, image_list.image_sizes


def test_region_embeddings_boxes_and_mask_hook():
    model = build("c4_embedding").eval()
    with torch.no_grad():
        features, proposals, sizes = proposals_of(model, synthetic()[0])
        emb = model.roi_heads.region_embeddings(features, proposals, sizes)
        emb2, boxes = model.roi_heads.region_embeddings_and_boxes(features, proposals, sizes)
        masks = model.roi_heads.predict_masks(features, boxes, sizes)
    assert emb.shape == (sum(len(p) for p in proposals), DIM) and torch.allclose(emb, emb2)
    for b, p, (h, w), m in zip(boxes, proposals, sizes, masks):
        assert b.shape == p.shape
        assert float(b[:, 0::2].max()) <= w and float(b[:, 1::2].max()) <= h and float(b.min()) >= 0
        assert m.shape == (len(b), 1, 8, 8) and 0 <= float(m.min()) and float(m.max()) <= 1


@pytest.mark.parametrize("name", list(VARIANTS))
def test_an_image_without_proposals_gets_no_detections(name):
    """An RPN can return nothing for an image (every box too small): the RoI heads answer with empty results."""
    model = build(name).eval()
    with torch.no_grad():
        features, proposals, sizes = proposals_of(model, synthetic()[0])
        empty = [p[:0] for p in proposals]
        (out, _), more = model.roi_heads(features, empty, sizes), model.roi_heads(features, proposals, sizes)[0]
        assert out and all(len(r["boxes"]) == 0 and r["boxes"].shape[1:] == (4,) for r in out)
        assert set(out[0]) == set(more[0])  # the same keys as with proposals
        if isinstance(model.roi_heads, EmbeddingRoIHeads):
            emb, boxes = model.roi_heads.region_embeddings_and_boxes(features, empty, sizes)
            assert emb.shape == (0, DIM) and [b.shape for b in boxes] == [(0, 4)] * len(empty)


def test_c4_layout_matches_maskrcnn_benchmark():
    model = build("c4_embedding", c4_pooler_resolution=14)
    assert list(model.backbone(torch.zeros(1, 3, 64, 64))) == ["0"]
    assert model.backbone(torch.zeros(1, 3, 64, 64))["0"].shape == (1, 256, 4, 4)  # C4, stride 16
    assert model.rpn.head.cls_logits.out_channels == 15  # 5 sizes x 3 ratios on one level
    assert model.roi_heads.box_roi_pool.output_size == (14, 14)
    assert model.roi_heads.mask_predictor(torch.zeros(1, 512, 7, 7)).shape == (1, 1, 14, 14)
    # the res5 stage is registered once, as the RoI head shared by box and mask branches
    assert not any(n.startswith("backbone.body.layer4") for n, _ in model.named_parameters())
    assert any(n.startswith("roi_heads.res5.") for n, _ in model.named_parameters())


def test_freeze_prefixes_match_parameter_names():
    names = [n for n, _ in build("c4_embedding").named_parameters()]

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    for prefix in ("backbone", "rpn", "roi_heads", "roi_heads.box_predictor.projection", "roi_heads.res5"):
        assert any(under(n, prefix) for n in names), prefix
    assert "roi_heads.box_predictor.projection.weight" in names


def test_trainable_layers_follow_torchvision():
    model = build_detector(tiny_cfg(arch="fpn", classifier="agnostic", aspect_ratios=[1.0], trainable_layers=3))
    assert not any(p.requires_grad for p in build("fpn_agnostic").backbone.body.parameters())  # trainable_layers=0
    grad = {n: p.requires_grad for n, p in model.named_parameters()}
    assert not grad["backbone.body.conv1.weight"] and not grad["backbone.body.layer1.0.conv1.weight"]
    assert grad["backbone.body.layer2.0.conv1.weight"] and grad["backbone.body.layer4.1.conv2.weight"]
    assert grad["backbone.fpn.inner_blocks.0.0.weight"]
    assert type(model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"


def test_backbone_weights_land_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    ref = resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    c4 = build_detector(tiny_cfg(arch="c4", backbone_weights=str(path)), class_embeddings=torch.randn(3, DIM))
    fpn = build_detector(tiny_cfg(arch="fpn", classifier="agnostic", aspect_ratios=[1.0], backbone_weights=str(path)))
    sd = ref.state_dict()
    for model, res5 in ((c4, "roi_heads.res5."), (fpn, "backbone.body.layer4.")):
        ours = model.state_dict()
        assert torch.equal(ours["backbone.body.conv1.weight"], sd["conv1.weight"])
        assert torch.equal(ours["backbone.body.layer3.1.bn2.running_var"], sd["layer3.1.bn2.running_var"])
        assert torch.equal(ours[res5 + "0.downsample.0.weight"], sd["layer4.0.downsample.0.weight"])


def test_backbone_weight_errors_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_detector(tiny_cfg(arch="fpn", classifier="agnostic", aspect_ratios=[1.0], backbone_weights=str(tmp_path / "missing.pth")))
    with pytest.raises(ValueError, match="neither a file nor a torchvision weights name"):
        build_detector(tiny_cfg(arch="fpn", classifier="agnostic", aspect_ratios=[1.0], backbone_weights="NoSuch_Weights.X"))
    bad = tmp_path / "r34.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a torchvision ResNet state dict"):
        build_detector(tiny_cfg(arch="fpn", classifier="agnostic", aspect_ratios=[1.0], backbone_weights=str(bad)))


def test_weights_enum_offline_says_to_download_elsewhere(monkeypatch):
    from urllib.error import URLError

    from torchvision.models import ResNet18_Weights

    def offline(self, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(ResNet18_Weights, "get_state_dict", offline)
    cfg = tiny_cfg(arch="fpn", classifier="agnostic", aspect_ratios=[1.0], backbone_weights="ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(RuntimeError, match="cannot download.*set model.backbone_weights to its path"):
        build_detector(cfg)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(arch="c5"), "model.arch='c5'"),
        (dict(arch="c4", heads="oln", classifier="agnostic"), "needs model.arch=fpn"),
        (dict(arch="fpn", classifier="agnostic", anchor_sizes=[32, 64]), "one size per level"),
        (dict(arch="fpn", heads="oln", classifier="agnostic"), "one anchor per location"),
        (dict(norm="bn"), "model.norm='bn'"),
        (dict(norm="gn", backbone_weights="r18.pth"), "use model.norm=frozen_bn with them"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        build_detector(tiny_cfg(**kw))


def test_group_norm_backbone_trains_its_norm_layers():
    model = build_detector(tiny_cfg(arch="fpn", classifier="agnostic", aspect_ratios=[1.0], trainable_layers=5, norm="gn"))
    norms = [m for m in model.backbone.body.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 1 + 4 * 2 * 2 + 3  # stem, two per basic block (two blocks × four stages), three downsamples
    assert all(m.num_groups == 32 and m.weight.requires_grad for m in norms)
    model.train()
    images, targets = synthetic()
    sum(model(images, targets).values()).backward()
    assert model.backbone.body.layer1[0].bn1.weight.grad.abs().sum() > 0


def test_embedding_classifier_needs_a_dimension():
    with pytest.raises(ValueError, match="embedding_dim"):
        build_detector(tiny_cfg(arch="c4"))
    model = build_detector(tiny_cfg(arch="c4", embedding_dim=DIM), num_classes=0)
    assert model.roi_heads.box_predictor.num_classes == 0
    with pytest.raises(ValueError, match="num_classes=4"):
        build_detector(tiny_cfg(arch="c4"), class_embeddings=torch.randn(3, DIM), num_classes=4)


def test_bgr255_input_format_normalises_like_maskrcnn_benchmark():
    model = build("c4_embedding", input_format="bgr255")
    img = torch.rand(3, 8, 8)
    out = model.transform.normalize(img)
    assert torch.allclose(out[0], img[2] * 255 - BGR255_MEAN[0])
    assert torch.allclose(out[2], img[0] * 255 - BGR255_MEAN[2])


def test_stride_in_1x1_moves_the_bottleneck_stride():
    model = build_detector(tiny_cfg(arch="c4", backbone="resnet50", stride_in_1x1=True), class_embeddings=torch.randn(2, DIM))
    block = model.roi_heads.res5[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert model.backbone(torch.zeros(1, 3, 64, 64))["0"].shape == (1, 1024, 4, 4)
    with pytest.raises(ValueError, match="bottleneck"):
        build_detector(tiny_cfg(arch="c4", stride_in_1x1=True), class_embeddings=torch.randn(2, DIM))


def test_one_image_overfits_in_ten_sgd_steps():
    torch.manual_seed(0)
    model = build_detector(tiny_cfg(arch="fpn", classifier="agnostic", aspect_ratios=[1.0])).train()
    images, targets = synthetic(sizes=((64, 64),))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    history = []
    for _ in range(10):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert all(math.isfinite(v) for v in history)
    assert sum(history[-3:]) / 3 < 0.7 * sum(history[:3]) / 3, history
