"""ovis.models.roi_align: torchvision's RoIAlign values, its feature gradient by dense matrices."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align

from ovis.models.roi_align import DENSE_MAX_CELLS, RoIAlignPool, roi_align, roi_align_features_grad


def random_rois(n_images: int, k: int, extent: float, gen: torch.Generator) -> torch.Tensor:
    """RoIs partly outside the map, tiny and degenerate ones included."""
    xy = torch.rand(k, 2, generator=gen) * extent * 1.2 - extent * 0.1
    wh = torch.rand(k, 2, generator=gen) * extent * 0.6
    wh[: k // 8] = 0.0  # zero-size boxes
    wh[k // 8 : k // 4] *= 0.01  # sub-pixel boxes
    image = torch.randint(0, n_images, (k, 1), generator=gen).float()
    return torch.cat([image, xy, xy + wh], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize(("sampling_ratio", "output_size", "scale"), [(2, (7, 7), 0.25), (0, (7, 7), 1 / 16), (2, (14, 14), 0.125), (3, (5, 4), 0.5)])
def test_values_equal_and_gradient_matches_torchvision(aligned, sampling_ratio, output_size, scale):
    gen = torch.Generator().manual_seed(sampling_ratio + 10 * aligned)
    features = torch.randn(3, 8, 20, 24, generator=gen, requires_grad=True)
    rois = random_rois(3, 64, 24 / scale, gen)
    ours = roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
    theirs = tv_roi_align(features, rois, output_size, scale, sampling_ratio, aligned)
    assert torch.equal(ours, theirs)
    assert type(ours.grad_fn).__name__ == "_RoIAlignBackward"  # the dense backward, not torchvision's
    grad = torch.randn(theirs.shape, generator=gen)
    (ours_grad,) = torch.autograd.grad(ours, features, grad)
    (theirs_grad,) = torch.autograd.grad(theirs, features, grad)
    assert theirs_grad.abs().max() > 1.0  # the RoIs do reach the map
    torch.testing.assert_close(ours_grad, theirs_grad, rtol=1e-5, atol=1e-5)


def test_gradient_of_an_image_without_rois_is_zero_and_no_rois_gives_zero_gradient():
    features = torch.randn(2, 4, 10, 10, requires_grad=True)
    rois = torch.tensor([[1.0, 2.0, 2.0, 30.0, 40.0]])
    (grad,) = torch.autograd.grad(roi_align(features, rois, (3, 3), 0.25, 2).sum(), features)
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0
    empty = roi_align(features, torch.zeros(0, 5), (3, 3), 0.25, 2)
    assert empty.shape == (0, 4, 3, 3)
    (grad,) = torch.autograd.grad(empty.sum(), features, allow_unused=True)
    assert grad is None or grad.abs().sum() == 0


def test_large_maps_and_no_grad_use_torchvision_exactly():
    side = int(DENSE_MAX_CELLS**0.5) + 1
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(1, 2, side, side, generator=gen, requires_grad=True)
    rois = random_rois(1, 16, side, gen)
    out = roi_align(features, rois, (7, 7), 1.0, 2)
    assert out.grad_fn is not None and type(out.grad_fn).__name__ != "_RoIAlignBackward"
    grad = torch.randn(out.shape, generator=gen)
    (ours,) = torch.autograd.grad(out, features, grad)
    (theirs,) = torch.autograd.grad(tv_roi_align(features, rois, (7, 7), 1.0, 2), features, grad)
    assert torch.equal(ours, theirs)
    with torch.no_grad():
        assert roi_align(features, rois, (7, 7), 1.0, 2).grad_fn is None


def test_dense_gradient_is_the_adjoint_of_roi_align():
    """<roi_align(F), G> = <F, grad(G)> for any F, G: the backward is the forward's transpose."""
    gen = torch.Generator().manual_seed(3)
    features = torch.randn(2, 5, 12, 9, generator=gen, dtype=torch.float64)
    rois = random_rois(2, 20, 12.0, gen).double()
    grad = torch.randn(20, 5, 4, 4, generator=gen, dtype=torch.float64)
    lhs = (tv_roi_align(features, rois, (4, 4), 1.0, 0) * grad).sum()
    rhs = (features * roi_align_features_grad(grad, rois, features.shape, 1.0, 0, False)).sum()
    assert lhs.item() == pytest.approx(rhs.item(), rel=1e-10)


def test_pool_matches_torchvision_multiscale_pool_on_every_level():
    gen = torch.Generator().manual_seed(1)
    names = ["0", "1", "2", "3"]
    features = OrderedDict((n, torch.randn(2, 6, 40 >> i, 40 >> i, generator=gen, requires_grad=True)) for i, n in enumerate(names))
    boxes = [torch.tensor([[0.0, 0.0, 159.0, 159.0], [10.0, 10.0, 20.0, 30.0], [50.0, 60.0, 100.0, 90.0], [3.0, 4.0, 90.0, 150.0],
                           [0.0, 0.0, 300.0, 300.0], [-20.0, -30.0, 480.0, 470.0]]),
             torch.tensor([[5.0, 5.0, 60.0, 70.0]])]
    shapes = [(160, 160), (160, 160)]
    ours = RoIAlignPool(names, 7, 2)(features, boxes, shapes)
    theirs = MultiScaleRoIAlign(names, 7, 2)(features, boxes, shapes)
    assert torch.equal(ours, theirs)
    grad = torch.randn(theirs.shape, generator=gen)
    ours_grads = torch.autograd.grad(ours, list(features.values()), grad)
    theirs_grads = torch.autograd.grad(theirs, list(features.values()), grad)
    assert sum(int(g.abs().sum() > 0) for g in theirs_grads) == 4  # every level pooled
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
