"""RoIAlign with torchvision's values and a fast CPU backward; the multi-level pooler that uses it.

torchvision's CPU ``roi_align`` backward scatters every sample's four bilinear weights one scalar at a
time on one thread: in a demo-sized FPN Mask R-CNN step on 2 cores it was a quarter of the step's
time. RoIAlign is linear and, per RoI, separable: each output bin is ``A_y[k] · F[b_k] · A_x[k]ᵀ`` with
``A_y`` (pooled rows × H) and ``A_x`` (pooled columns × W) holding the bilinear weights averaged
over the bin's samples. So the gradient with respect to the features is two batched matrix products
per image (``benchmarks/roi_align_speed.py``). The forward is torchvision's own op, so detections
and pseudo masks of a given checkpoint are unchanged bit for bit; gradients agree to float rounding
(``tests/test_roi_align.py``). On other devices, for feature maps larger than :data:`DENSE_MAX_CELLS`
and under TorchScript, torchvision's backward runs as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

# the dense backward costs about K·ph·C·W·(pw + H) multiply-adds per image, torchvision's K·ph·pw·g²·4·C
# scalar scatters: on CPU (64 channels) dense was 1.3x faster at 64x64 cells on 1 thread, even at 80x80,
# slower from 96x96 (2 threads: from 128x128; benchmarks/roi_align_speed.py); 48x48 keeps a margin (the
# demo's finest FPN level is 40x40)
DENSE_MAX_CELLS = 48 * 48


def _axis_weights(start: Tensor, length: Tensor, pooled: int, size: int, sampling_ratio: int) -> Tensor:
    """``[K, pooled, size]``: row p holds the bilinear weights of bin p's samples along one axis,
    averaged over the bin's samples (torchvision's sample positions, clamping and out-of-map rule)."""
    k = start.shape[0]
    bin_size = length / pooled
    grid = (torch.full((k,), sampling_ratio, dtype=torch.long, device=start.device) if sampling_ratio > 0
            else torch.ceil(length / pooled).long())  # torchvision: ceil(roi size / pooled size) samples per bin
    most = int(grid.max()) if k else 0
    weights = start.new_zeros(k, pooled, size)
    if most == 0:
        return weights
    g = grid.clamp(min=1).to(start.dtype)[:, None, None]
    p = torch.arange(pooled, dtype=start.dtype, device=start.device)[None, :, None]
    i = torch.arange(most, dtype=start.dtype, device=start.device)[None, None, :]
    coord = start[:, None, None] + p * bin_size[:, None, None] + (i + 0.5) * bin_size[:, None, None] / g
    used = (i < grid[:, None, None]) & (coord >= -1.0) & (coord <= size)
    coord = coord.clamp(min=0)
    low = coord.long()
    top = low >= size - 1
    low = torch.where(top, torch.full_like(low, size - 1), low)
    high = torch.where(top, low, low + 1)
    frac = torch.where(top, torch.zeros_like(coord), coord - low)
    scale = used.to(start.dtype) / g
    weights.scatter_add_(2, low, (1.0 - frac) * scale)
    weights.scatter_add_(2, high, frac * scale)
    return weights


def _roi_frames(rois: Tensor, spatial_scale: float, aligned: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Start and size of each RoI in feature-map coordinates, as torchvision's kernel computes them."""
    offset = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * spatial_scale - offset
    y1 = rois[:, 2] * spatial_scale - offset
    width = rois[:, 3] * spatial_scale - offset - x1
    height = rois[:, 4] * spatial_scale - offset - y1
    if not aligned:  # torchvision forces malformed RoIs to 1x1
        width, height = width.clamp(min=1.0), height.clamp(min=1.0)
    return x1, y1, width, height


def roi_align_features_grad(grad: Tensor, rois: Tensor, feature_shape: torch.Size, spatial_scale: float,
                            sampling_ratio: int, aligned: bool) -> Tensor:
    """The gradient of ``roi_align(features, rois, ...)`` with respect to ``features`` given ``grad``
    ``[K, C, ph, pw]``: per image, ``Σ_k A_y[k]ᵀ · grad[k] · A_x[k]`` as two matrix products."""
    n, c, h, w = feature_shape
    ph, pw = grad.shape[-2:]
    rois = rois.to(grad.dtype)
    x1, y1, width, height = _roi_frames(rois, spatial_scale, aligned)
    ay = _axis_weights(y1, height, ph, h, sampling_ratio)  # [K, ph, H]
    ax = _axis_weights(x1, width, pw, w, sampling_ratio)   # [K, pw, W]
    out = grad.new_zeros(n, h, c, w)
    image = rois[:, 0].long()
    for b in image.unique().tolist():
        sel = (image == b).nonzero().squeeze(1)
        k = sel.numel()
        cols = torch.bmm(grad[sel].reshape(k, c * ph, pw), ax[sel])  # [k, C·ph, W]
        cols = cols.reshape(k, c, ph, w).permute(0, 2, 1, 3).reshape(k * ph, c * w)
        out[b] = (ay[sel].reshape(k * ph, h).t() @ cols).reshape(h, c, w)
    return out.permute(0, 2, 1, 3).contiguous()


class _RoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float,
                sampling_ratio: int, aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.shape, ctx.args = features.shape, (spatial_scale, sampling_ratio, aligned)
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rois,) = ctx.saved_tensors
        features_grad = roi_align_features_grad(grad, rois, ctx.shape, *ctx.args) if ctx.needs_input_grad[0] else None
        return features_grad, None, None, None, None, None


def roi_align(features: Tensor, rois: Tensor, output_size: tuple[int, int], spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """``torchvision.ops.roi_align`` (``rois [K, 5]``: image index, x1, y1, x2, y2), with the dense
    backward where it is the faster: CPU features that need a gradient, maps up to
    :data:`DENSE_MAX_CELLS` cells."""
    dense = (features.device.type == "cpu" and features.requires_grad and torch.is_grad_enabled()
             and features.shape[-2] * features.shape[-1] <= DENSE_MAX_CELLS and not torch.jit.is_scripting())
    if not dense:
        return tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    return _RoIAlign.apply(features, rois.detach(), tuple(output_size), spatial_scale, sampling_ratio, aligned)


class RoIAlignPool(MultiScaleRoIAlign):
    """torchvision's :class:`MultiScaleRoIAlign` (same levels, level mapping and output) pooling with
    :func:`roi_align`; it holds no parameters, so checkpoints are unchanged."""

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            scales, mapper = _setup_scales(features, image_shapes, self.canonical_scale, self.canonical_level)
            self.scales, self.map_levels = cast(None, scales), cast(None, mapper)  # torchvision annotates them None
        scales = cast(list[float], self.scales)
        rois = _convert_to_roi_format(boxes)
        h, w = self.output_size
        if len(features) == 1:
            return roi_align(features[0], rois, (h, w), scales[0], self.sampling_ratio)
        levels = cast(Callable[[list[Tensor]], Tensor], self.map_levels)(boxes)
        first = features[0]
        result = first.new_zeros((len(rois), first.shape[1], h, w))
        for level, (feature, scale) in enumerate(zip(features, scales)):
            index = torch.where(levels == level)[0]
            result[index] = roi_align(feature, rois[index], (h, w), scale, self.sampling_ratio).to(result.dtype)
        return result
