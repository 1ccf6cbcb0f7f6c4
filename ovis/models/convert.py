"""Load OVR-CNN / CPL (maskrcnn-benchmark) checkpoints into the ovis R-C4 embedding detector.

Upstream keys are renamed by explicit prefix rules (first rule wins when two upstream keys feed the
same ovis tensor, e.g. a detection checkpoint's ``emb_pred`` over a pretraining checkpoint's
``v2l_projection``). Class-agnostic upstream layers carry a background slot that ovis does not:
``bbox_pred`` rows 4:8 and ``mask_fcn_logits`` channel 1 are kept. Frozen BN saved without running
statistics gets mean 0 / var 1-eps so torchvision's FrozenBatchNorm2d computes the same affine map.
Upstream checkpoints expect ``model.input_format: bgr255`` and ``model.stride_in_1x1: true``.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

# (upstream prefix, ovis prefix), in priority order
PREFIX_RULES: tuple[tuple[str, str], ...] = (
    ("backbone.body.stem.conv1.", "backbone.body.conv1."),
    ("backbone.body.stem.bn1.", "backbone.body.bn1."),
    ("backbone.body.layer1.", "backbone.body.layer1."),
    ("backbone.body.layer2.", "backbone.body.layer2."),
    ("backbone.body.layer3.", "backbone.body.layer3."),
    ("roi_heads.box.feature_extractor.head.layer4.", "roi_heads.res5."),
    ("backbone.body.layer4.", "roi_heads.res5."),  # caption pretraining keeps C5 in the backbone
    ("roi_heads.box.predictor.emb_pred.", "roi_heads.box_predictor.projection."),
    ("mmss_heads.GroundingHead.v2l_projection.", "roi_heads.box_predictor.projection."),
    ("roi_heads.box.predictor.bbox_pred.", "roi_heads.box_predictor.bbox_pred."),
    ("rpn.head.conv.", "rpn.head.conv.0.0."),
    ("rpn.head.cls_logits.", "rpn.head.cls_logits."),
    ("rpn.head.bbox_pred.", "rpn.head.bbox_pred."),
    ("roi_heads.mask.predictor.conv5_mask.", "roi_heads.mask_predictor.conv5_mask."),
    ("roi_heads.mask.predictor.mask_fcn_logits.", "roi_heads.mask_predictor.mask_fcn_logits."),
)
FROZEN_BN_EPS = 1e-5  # torchvision FrozenBatchNorm2d default


@dataclass
class ConversionReport:
    """What went where. ``loaded``: ovis key → upstream key; ``unused``: upstream keys with no ovis
    target; ``superseded``: upstream keys whose target a higher-priority key filled; ``missing``: ovis
    keys left as they were; ``filled_bn_stats``: ovis BN statistics set to identity."""

    loaded: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    superseded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    filled_bn_stats: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def few(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")

        lines = [f"loaded {len(self.loaded)} tensors"]
        for name in ("missing", "unused", "superseded", "filled_bn_stats"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"{name}: {few(keys)}")
        return "\n".join(lines)


def _rename(key: str) -> tuple[int, str] | None:
    """(rule priority, ovis key) for an upstream key, or None."""
    for rank, (src, dst) in enumerate(PREFIX_RULES):
        if key.startswith(src):
            return rank, dst + key[len(src):]
    return None


def _adapt(ovis_key: str, tensor: Tensor, target: Tensor) -> Tensor:
    """Drop the upstream background slot of class-agnostic layers; otherwise the shape must match."""
    if ovis_key.startswith("roi_heads.box_predictor.bbox_pred.") and tensor.shape[0] == 8 and target.shape[0] == 4:
        tensor = tensor[4:8]
    elif ovis_key.startswith("roi_heads.mask_predictor.mask_fcn_logits.") and (tensor.shape[0], target.shape[0]) == (2, 1):
        tensor = tensor[1:2]
    if tensor.shape != target.shape:
        raise ValueError(
            f"{ovis_key}: upstream tensor has shape {list(tensor.shape)}, the ovis model needs {list(target.shape)} "
            "(check model.backbone / model.embedding_dim / model.mask_head_channels against the checkpoint)"
        )
    return tensor.to(target.dtype)


def convert_maskrcnn_benchmark(
    upstream: dict[str, Tensor], model: nn.Module
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Map an upstream state dict onto ``model``'s key names; returns (partial state dict, report)."""
    ours = model.state_dict()
    report = ConversionReport()
    converted: dict[str, Tensor] = {}
    source: dict[str, tuple[int, str]] = {}  # ovis key → (rule index, upstream key)
    for key, tensor in upstream.items():
        key = key.removeprefix("module.")
        renamed = _rename(key)
        if renamed is None or renamed[1] not in ours:
            report.unused.append(key)
            continue
        rank, new = renamed
        if new in source and source[new][0] <= rank:
            report.superseded.append(key)
            continue
        if new in source:
            report.superseded.append(source[new][1])
        converted[new] = _adapt(new, tensor, ours[new])
        source[new] = (rank, key)
    report.loaded = {k: v for k, (_, v) in sorted(source.items())}
    for key in ours:
        if key in converted:
            continue
        stem, _, leaf = key.rpartition(".")
        if leaf in ("running_mean", "running_var") and f"{stem}.weight" in converted and f"{stem}.bias" in converted:
            fill = 0.0 if leaf == "running_mean" else 1.0 - FROZEN_BN_EPS
            converted[key] = torch.full_like(ours[key], fill)
            report.filled_bn_stats.append(key)
        elif not key.endswith("num_batches_tracked"):
            report.missing.append(key)
    return converted, report


def load_maskrcnn_benchmark(model: nn.Module, checkpoint: str | Path | dict) -> ConversionReport:
    """Load an OVR-CNN / CPL checkpoint (``{"model": state_dict}`` or a bare state dict) into ``model``."""
    if isinstance(checkpoint, dict):
        state = checkpoint
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(
                f"{path}: holds non-tensor objects torch will not load safely ({e}); re-save only the "
                "model: torch.save({'model': torch.load(path, weights_only=False)['model']}, new_path)"
            ) from None
    if isinstance(state.get("model"), dict):
        state = state["model"]
    converted, report = convert_maskrcnn_benchmark(state, model)
    if not converted:
        raise ValueError(
            "no checkpoint key matched the ovis C4 model: is this a maskrcnn-benchmark R-50-C4 checkpoint?"
        )
    model.load_state_dict(converted, strict=False)
    return report
