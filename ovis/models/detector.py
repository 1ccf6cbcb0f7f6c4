"""Build the ovis Mask R-CNN variants from a :class:`ovis.config.ModelConfig` (docs/cpl.md#22-teacher, docs/ggn.md#34-mask-r-cnn, docs/ggn.md#35-oln).

All variants are torchvision :class:`MaskRCNN` objects with ovis RoI heads (and, for OLN, an ovis RPN):

- ``arch: c4``  — R-C4: backbone to C4 (stride 16), single-level RPN, RoIAlign 14×14, a res5 stage
  shared by the box branch (→ global average pool) and the mask branch (→ 2× deconv → 1×1 conv, 14×14).
- ``arch: fpn`` — R-FPN: ``fpn_channels`` wide, one anchor size per level, TwoMLPHead
  (``representation_size``), MaskRCNNHeads (4 × ``mask_head_channels``), 28×28 masks.
- ``classifier: embedding`` — open-vocabulary logits against fixed class embeddings;
  ``agnostic`` — one foreground class. Box regression and masks are class-agnostic in both.
- ``heads: oln`` — OLN RPN and box head (FPN only).

Detections (eval mode) are torchvision's: ``boxes [N, 4]``, ``labels [N]`` (1..K index the current
class embeddings; 1 for agnostic/OLN), ``scores [N]``, ``masks [N, 1, H, W]`` probabilities pasted
into the original image.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from ovis.config import ModelConfig
from ovis.models.backbones import (
    BACKBONES,
    NORMS,
    RESNETS,
    build_c4,
    build_fpn,
    build_trunk,
    pixel_stats,
    stage_channels,
)
from ovis.models.heads import (
    AgnosticClassifier,
    ClassAgnosticRoIHeads,
    EmbeddingClassifier,
    EmbeddingRoIHeads,
    OLNBoxPredictor,
    OLNRegionProposalNetwork,
    OLNRoIHeads,
    OLNRPNHead,
)
from ovis.models.roi_align import RoIAlignPool

FPN_LEVELS = ("0", "1", "2", "3")
# maskrcnn-benchmark / Detectron caffe2 pixel mean (BGR, 0-255), std 1
BGR255_MEAN = (102.9801, 115.9465, 122.7717)


class BGR255Transform(GeneralizedRCNNTransform):
    """Normalisation of maskrcnn-benchmark checkpoints: RGB in [0, 1] → BGR in [0, 255] minus the pixel mean."""

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        return image[[2, 1, 0]] * 255.0 - mean[:, None, None]


def _check(cfg: ModelConfig) -> None:
    choices = {"arch": ("c4", "fpn"), "backbone": BACKBONES, "classifier": ("embedding", "agnostic"),
               "heads": ("standard", "oln"), "input_format": ("rgb", "bgr255"), "norm": NORMS}
    for key, allowed in choices.items():
        if getattr(cfg, key) not in allowed:
            raise ValueError(f"model.{key}={getattr(cfg, key)!r}: use one of {', '.join(allowed)}")
    if cfg.heads == "oln" and cfg.arch != "fpn":
        raise ValueError("model.heads=oln needs model.arch=fpn (OLN is defined on R-FPN)")
    if cfg.heads == "oln" and cfg.classifier != "agnostic":
        raise ValueError("model.heads=oln is class-agnostic: set model.classifier=agnostic")
    if cfg.input_format == "bgr255" and cfg.backbone not in RESNETS:
        raise ValueError(f"model.input_format=bgr255 is for caffe ResNet checkpoints, not {cfg.backbone}: use rgb")
    if cfg.norm == "gn" and cfg.backbone_weights:
        raise ValueError("model.norm=gn trains GroupNorm from scratch; pretrained model.backbone_weights carry "
                         "BatchNorm statistics: use model.norm=frozen_bn with them")
    if not cfg.embedding_temperature > 0:
        raise ValueError(f"model.embedding_temperature={cfg.embedding_temperature}: must be > 0")
    if cfg.mask_logits_init_std is not None and not cfg.mask_logits_init_std > 0:
        raise ValueError(f"model.mask_logits_init_std={cfg.mask_logits_init_std}: must be > 0 (or null for Kaiming)")
    if cfg.arch == "fpn" and len(cfg.anchor_sizes) != len(FPN_LEVELS) + 1:
        raise ValueError(f"model.anchor_sizes: FPN needs one size per level (5: P2..P6), got {cfg.anchor_sizes}")
    if cfg.oln_objectness_neg_pos_ub is not None and not cfg.oln_objectness_neg_pos_ub > 0:
        raise ValueError(f"model.oln_objectness_neg_pos_ub={cfg.oln_objectness_neg_pos_ub}: must be > 0 "
                         "(or null for no bound)")
    if cfg.oln_rpn_box_coder not in (None, "tblr"):
        raise ValueError(f"model.oln_rpn_box_coder={cfg.oln_rpn_box_coder!r}: use tblr or null (Faster R-CNN deltas)")
    if cfg.heads == "oln" and len(cfg.aspect_ratios) != 1:
        raise ValueError(f"model.aspect_ratios: OLN uses one anchor per location, got {cfg.aspect_ratios}")


def build_detector(
    cfg: ModelConfig, class_embeddings: Tensor | None = None, num_classes: int | None = None
) -> MaskRCNN:
    """A torchvision MaskRCNN laid out as ``cfg`` says.

    ``class_embeddings [K, d]`` is the vocabulary of the embedding classifier (may be set later with
    :func:`set_class_embeddings`; ``d`` is taken from it or from ``cfg.embedding_dim``).
    ``num_classes``, when given, is checked: K for the embedding classifier, 1 for agnostic/OLN.
    """
    _check(cfg)
    net = build_trunk(cfg.backbone, cfg.backbone_weights, cfg.trainable_layers, cfg.norm, cfg.stride_in_1x1)
    mean, std = pixel_stats(cfg.backbone)
    sizes, ratios = tuple(cfg.anchor_sizes), tuple(cfg.aspect_ratios)
    backbone: nn.Module
    res5: nn.Module | None
    mask_head: nn.Module
    if cfg.arch == "c4":
        backbone, res5 = build_c4(net)
        anchors = AnchorGenerator((sizes,), (ratios,))
        box_pool = RoIAlignPool(["0"], output_size=cfg.c4_pooler_resolution, sampling_ratio=0)
        box_head: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        box_dim = mask_in = stage_channels(res5)
        mask_pool, mask_head = box_pool, nn.Identity()
    else:
        backbone, res5 = build_fpn(net, cfg.fpn_channels), None
        anchors = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(sizes))
        box_pool = RoIAlignPool(list(FPN_LEVELS), output_size=7, sampling_ratio=2)
        box_head = TwoMLPHead(cfg.fpn_channels * 7 * 7, cfg.representation_size)
        box_dim, mask_in = cfg.representation_size, cfg.mask_head_channels
        mask_pool = RoIAlignPool(list(FPN_LEVELS), output_size=14, sampling_ratio=2)
        mask_head = MaskRCNNHeads(cfg.fpn_channels, [cfg.mask_head_channels] * 4, 1)
    mask_predictor = MaskRCNNPredictor(mask_in, cfg.mask_head_channels, 1)
    if cfg.mask_logits_init_std is not None:  # detectron2's init; torchvision's (maskrcnn-benchmark's) is Kaiming
        logits_conv = cast(nn.Conv2d, mask_predictor.mask_fcn_logits)
        nn.init.normal_(logits_conv.weight, std=cfg.mask_logits_init_std)
        nn.init.zeros_(cast(Tensor, logits_conv.bias))

    roi_cls: type[ClassAgnosticRoIHeads]
    if cfg.heads == "oln":
        predictor: nn.Module = OLNBoxPredictor(box_dim)
        roi_cls, expected = OLNRoIHeads, 1
    elif cfg.classifier == "agnostic":
        predictor, roi_cls, expected = AgnosticClassifier(box_dim), ClassAgnosticRoIHeads, 1
    else:
        dim = cfg.embedding_dim or (class_embeddings.shape[1] if class_embeddings is not None else None)
        if dim is None:
            raise ValueError("embedding classifier: pass class_embeddings [K, d] or set model.embedding_dim")
        if class_embeddings is not None and class_embeddings.shape[1] != dim:
            raise ValueError(f"class_embeddings are {class_embeddings.shape[1]}-d but model.embedding_dim={dim}")
        predictor = EmbeddingClassifier(box_dim, dim, class_embeddings, cfg.embedding_temperature)
        roi_cls, expected = EmbeddingRoIHeads, predictor.num_classes
    if num_classes is not None and num_classes != expected:
        raise ValueError(f"num_classes={num_classes} but the {cfg.classifier}/{cfg.heads} classifier has {expected}")

    rpn_head_cls = OLNRPNHead if cfg.heads == "oln" else RPNHead
    rpn_head = rpn_head_cls(backbone.out_channels, anchors.num_anchors_per_location()[0])
    model = MaskRCNN(
        backbone,
        num_classes=None,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_nms_thresh=cfg.rpn_nms_thresh,
        box_roi_pool=box_pool,
        box_head=box_head,
        box_predictor=predictor,
        mask_roi_pool=mask_pool,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
        image_mean=list(mean),
        image_std=list(std),
    )
    model.roi_heads = roi_cls(
        box_pool,
        box_head,
        predictor,
        0.5,  # fg IoU
        0.5,  # bg IoU
        cfg.box_batch_size_per_image,
        cfg.box_positive_fraction,
        None,  # bbox_reg_weights: (10, 10, 5, 5)
        cfg.box_score_thresh,
        cfg.box_nms_thresh,
        cfg.box_detections_per_img,
        mask_roi_pool=mask_pool if cfg.mask else None,
        mask_head=mask_head if cfg.mask else None,
        mask_predictor=mask_predictor if cfg.mask else None,
        res5=res5,
        background_weight=cfg.background_weight,
        smooth_l1_beta=cfg.box_smooth_l1_beta,
        agnostic_labels=cfg.classifier == "agnostic",
    )
    if cfg.heads == "oln":
        model.rpn = OLNRegionProposalNetwork(
            anchors,
            rpn_head,
            dict(training=cfg.rpn_pre_nms_top_n_train, testing=cfg.rpn_pre_nms_top_n_test),
            objectness_neg_pos_ub=cfg.oln_objectness_neg_pos_ub,
            tblr=cfg.oln_rpn_box_coder == "tblr",
        )
    if cfg.input_format == "bgr255":
        model.transform = BGR255Transform(cfg.min_size, cfg.max_size, list(BGR255_MEAN), [1.0, 1.0, 1.0])
    return model


def set_class_embeddings(model: nn.Module, embeddings: Tensor) -> None:
    """Swap the open vocabulary of an embedding detector (or the robust student built from one):
    ``embeddings [K, d]``; labels become 1..K."""
    if not isinstance(model.roi_heads, EmbeddingRoIHeads):
        raise TypeError(
            f"{type(model.roi_heads).__name__} has no class embeddings (model.classifier is not 'embedding')"
        )
    model.roi_heads.set_class_embeddings(embeddings)
