"""GGN pairwise-affinity (PA) network, target and loss (docs/ggn.md#31-pa-network).

Target: one soft channel per pixel = mean over its 8 neighbours at distance 1 of "same palette
value" (palette = instance index, 0 = unannotated; unannotated–unannotated counts as same;
neighbours outside the image count 0). Loss: sigmoid BCE with ``pos_weight`` 0.05 on pixels whose
8-neighbourhood touches an annotated pixel, normalised per image and averaged over images.
Network: ResNet C2–C5 + UperNet decoder → 1 logit channel at input resolution.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ovis.models.backbones import build_trunk, pixel_stats, stage_channels, trunk_children

__all__ = ["AffinityNet", "affinity_loss", "affinity_target", "palette_from_masks"]

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def palette_from_masks(masks: Tensor) -> Tensor:
    """Instance-index map [H, W] int64 from masks [N, H, W]: pixel = Σ (i+1)·mask_i (0 = unannotated).

    Overlapping masks add up, as upstream (which stores int8; int64 here avoids its overflow).
    """
    if masks.dim() != 3:
        raise ValueError(f"palette_from_masks: masks must be [N, H, W], got shape {tuple(masks.shape)}")
    idx = torch.arange(1, masks.shape[0] + 1, device=masks.device, dtype=torch.int64)
    return (masks.to(torch.int64) * idx[:, None, None]).sum(dim=0)


def affinity_target(palette: Tensor) -> tuple[Tensor, Tensor]:
    """Soft affinity target and loss mask for a palette [H, W] or [B, H, W].

    Returns ``(target, valid)``: target float in [0, 1] = fraction of the 8 neighbours with the same
    palette value (outside the image counts as different); valid bool = the pixel or one of its
    in-image 8 neighbours is annotated.
    """
    if palette.dim() not in (2, 3):
        raise ValueError(f"affinity_target: palette must be [H, W] or [B, H, W], got shape {tuple(palette.shape)}")
    single = palette.dim() == 2
    pal = palette[None] if single else palette
    pal = pal.to(torch.int64)
    h, w = pal.shape[-2:]
    padded = F.pad(pal, (1, 1, 1, 1), value=-1)  # −1 never equals a palette value (≥ 0)
    ann = F.pad((pal > 0).to(torch.uint8), (1, 1, 1, 1), value=0)
    same = torch.zeros(pal.shape, dtype=torch.float32, device=pal.device)
    valid = pal > 0
    for dy, dx in _OFFSETS:
        same += padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] == pal
        valid |= ann[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w].bool()
    target = same / len(_OFFSETS)
    return (target[0], valid[0]) if single else (target, valid)


def affinity_loss(logits: Tensor, target: Tensor, valid: Tensor, pos_weight: float = 0.05) -> Tensor:
    """Sigmoid BCE with ``pos_weight`` over counted pixels, mean per image, then mean over images.

    ``logits`` [B, 1, H, W], ``target`` float [B, H, W], ``valid`` bool [B, H, W]; an image with no
    counted pixel contributes 0.
    """
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"affinity_loss: logits must be [B, 1, H, W], got shape {tuple(logits.shape)}")
    x = logits[:, 0]
    if target.shape != x.shape or valid.shape != x.shape:
        raise ValueError(
            f"affinity_loss: logits {tuple(x.shape)} (without the channel), target {tuple(target.shape)} "
            f"and valid {tuple(valid.shape)} must match"
        )
    pw = torch.tensor(pos_weight, dtype=x.dtype, device=x.device)
    per_pixel = F.binary_cross_entropy_with_logits(x, target.to(x.dtype), pos_weight=pw, reduction="none")
    v = valid.to(x.dtype)
    per_image = (per_pixel * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp(min=1.0)
    return per_image.mean()


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that falls back to running statistics when a training batch holds one value per
    channel (the 1×1 pyramid-pooling branch with one image), where nn.BatchNorm2d raises."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), _BatchNorm(cout), nn.ReLU(inplace=True))


class UperNetHead(nn.Module):
    """UperNet decoder over C2–C5 → 1-channel logits at 1/4 resolution (docs/ggn.md#31-pa-network)."""

    def __init__(self, in_channels: list[int], channels: int = 256, pool_channels: int = 512,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.pool_scales = pool_scales
        self.ppm = nn.ModuleList(_conv_bn_relu(in_channels[-1], pool_channels, 1) for _ in pool_scales)
        self.ppm_out = _conv_bn_relu(in_channels[-1] + len(pool_scales) * pool_channels, channels, 3)
        self.laterals = nn.ModuleList(_conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in in_channels[:-1])
        self.fuse = _conv_bn_relu(len(in_channels) * channels, channels, 3)
        self.cls = nn.Conv2d(channels, 1, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        c5 = feats[-1]
        size5 = c5.shape[-2:]
        pooled = [
            F.interpolate(conv(F.adaptive_avg_pool2d(c5, s)), size=size5, mode="bilinear", align_corners=False)
            for s, conv in zip(self.pool_scales, self.ppm)
        ]
        levels = [lat(f) for lat, f in zip(self.laterals, feats[:-1])]
        levels.append(self.ppm_out(torch.cat([c5, *pooled], dim=1)))
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + F.interpolate(
                levels[i], size=levels[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, levels[:-1])] + [levels[-1]]
        size2 = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(x, size=size2, mode="bilinear", align_corners=False) for x in outs[1:]]
        return self.cls(self.fuse(torch.cat(outs, dim=1)))


class AffinityNet(nn.Module):
    """Backbone (C2–C5) + UperNet → one pairwise-affinity logit per pixel.

    ``norm``: the backbone's BatchNorm, ``bn`` (trained, for random initialisation) or
    ``frozen_bn`` (the pretrained statistics; ``ovis.methods.ggn`` picks it when the recipe has
    ``model.backbone_weights``).

    ``forward(images, targets)``: images are a list of [3, H, W] float RGB in 0..1 (sizes may differ)
    or a batch [B, 3, H, W]; normalisation and padding happen inside. Train mode needs ``targets``
    (dicts with ``"masks"`` [N, H, W]) and returns ``{"loss_affinity": loss}``; eval mode returns
    sigmoid affinities ([1, H', W'] per image for a list input, [B, 1, H', W'] for a batch).

    ``input_scale``: each image (and, in training, its masks) is first resized to H' × W' =
    round(s·H) × round(s·W) (bilinear; masks nearest), so the target, the loss and the returned
    affinities live at that size. 1 (upstream): the image's own.
    """

    mean: Tensor  # [1, 3, 1, 1] buffers: the backbone's pixel statistics
    std: Tensor

    def __init__(self, backbone: str = "resnet50", weights: str | None = None, channels: int = 256,
                 pool_channels: int = 512, pos_weight: float = 0.05, size_divisible: int = 32,
                 norm: str = "bn", input_scale: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(input_scale) and input_scale > 0):
            raise ValueError(f"AffinityNet: input_scale must be a finite number > 0, got {input_scale}")
        self.input_scale = input_scale
        net = build_trunk(backbone, weights, trainable_layers=5, norm=norm)
        parts = trunk_children(net)
        layers = [parts.pop(f"layer{i}") for i in range(1, 5)]
        self.stem = nn.Sequential(*parts.values())
        self.stages = nn.ModuleList(layers)
        self.head = UperNetHead([stage_channels(s) for s in layers], channels, pool_channels)
        self.pos_weight = pos_weight
        self.size_divisible = size_divisible
        mean, std = pixel_stats(backbone)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def logits(self, x: Tensor) -> Tensor:
        """Logits [B, 1, H, W] for a normalised batch [B, 3, H, W]."""
        feats = []
        y = self.stem(x)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        return F.interpolate(self.head(feats), size=x.shape[-2:], mode="bilinear", align_corners=False)

    def scaled_size(self, height: int, width: int) -> tuple[int, int]:
        """The size an image of ``height`` × ``width`` is resized to (``input_scale``), at least 1 × 1."""
        s = self.input_scale
        return max(1, round(s * height)), max(1, round(s * width))

    def _batch(self, images: list[Tensor] | Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        if isinstance(images, Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"AffinityNet: images must be [B, 3, H, W] or a list of [3, H, W], got {tuple(images.shape)}")
            images = list(images)
        for i, im in enumerate(images):
            if im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"AffinityNet: image {i} must be [3, H, W] RGB in 0..1, got shape {tuple(im.shape)}")
        if self.input_scale != 1:
            images = [F.interpolate(im[None], size=self.scaled_size(*im.shape[1:]), mode="bilinear",
                                    align_corners=False)[0] for im in images]
        sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
        d = self.size_divisible
        hp = -(-max(h for h, _ in sizes) // d) * d
        wp = -(-max(w for _, w in sizes) // d) * d
        batch = images[0].new_zeros(len(images), 3, hp, wp)  # 0 after normalisation = mean colour
        for i, im in enumerate(images):
            batch[i, :, : im.shape[1], : im.shape[2]] = (im[None] - self.mean) / self.std
        return batch, sizes

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict] | None = None) -> dict[str, Tensor] | Tensor | list[Tensor]:
        batch, sizes = self._batch(images)
        given = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]  # before the resize
        logits = self.logits(batch)
        if self.training:
            if targets is None or len(targets) != len(sizes):
                raise ValueError(f"AffinityNet: training needs one target dict with 'masks' per image ({len(sizes)} images)")
            tgt = torch.zeros(batch.shape[0], *batch.shape[-2:], device=batch.device)
            valid = torch.zeros_like(tgt, dtype=torch.bool)
            for i, (t, (h0, w0), (h, w)) in enumerate(zip(targets, given, sizes)):
                masks = t.get("masks")
                if masks is None or masks.dim() != 3 or tuple(masks.shape[-2:]) != (h0, w0):
                    raise ValueError(
                        f"AffinityNet: target {i} needs 'masks' [N, {h0}, {w0}] matching its image, "
                        f"got {None if masks is None else tuple(masks.shape)}"
                    )
                masks = masks.to(batch.device)
                if (h, w) != (h0, w0):
                    masks = F.interpolate(masks[None].float(), size=(h, w), mode="nearest")[0] > 0.5
                tgt[i, :h, :w], valid[i, :h, :w] = affinity_target(palette_from_masks(masks))
            return {"loss_affinity": affinity_loss(logits, tgt, valid, self.pos_weight)}
        prob = torch.sigmoid(logits)
        if isinstance(images, Tensor):
            return prob[:, :, : sizes[0][0], : sizes[0][1]]
        return [prob[i, :, :h, :w] for i, (h, w) in enumerate(sizes)]
