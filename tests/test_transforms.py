"""Joint image/target transforms: a flip moves boxes and masks together with the pixels."""

from __future__ import annotations

import pytest
import torch

from ovis.data.transforms import Compose, RandomHorizontalFlip


def box_of(mask: torch.Tensor) -> list[float]:
    """XYXY box (pixel edges) enclosing a binary mask [H, W]."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def sample() -> tuple[torch.Tensor, dict]:
    h, w = 8, 10
    masks = torch.zeros((2, h, w), dtype=torch.uint8)
    masks[0, 1:4, 2:6] = 1
    masks[1, 5:8, 0:3] = 1
    boxes = torch.tensor([box_of(m) for m in masks], dtype=torch.float32)
    image = torch.arange(3 * h * w, dtype=torch.float32).reshape(3, h, w)
    return image, {"boxes": boxes, "masks": masks, "labels": torch.tensor([1, 2])}


def test_flip_keeps_boxes_on_their_masks() -> None:
    image, target = sample()
    flipped_image, flipped = RandomHorizontalFlip(1.0)(image, target)
    assert torch.equal(flipped_image, image.flip(-1))
    assert torch.equal(flipped["masks"], target["masks"].flip(-1))
    assert flipped["boxes"].tolist() == [[4, 1, 8, 4], [7, 5, 10, 8]]
    assert flipped["boxes"].tolist() == [box_of(m) for m in flipped["masks"]]
    assert torch.equal(flipped["labels"], target["labels"])


def test_flip_twice_is_identity_and_input_is_untouched() -> None:
    image, target = sample()
    boxes = target["boxes"].clone()
    flip = RandomHorizontalFlip(1.0)
    image2, target2 = flip(*flip(image, target))
    assert torch.equal(image2, image) and torch.equal(target2["boxes"], boxes)
    assert torch.equal(target["boxes"], boxes)


def test_flip_probability() -> None:
    image, target = sample()
    assert RandomHorizontalFlip(0.0)(image, target)[1] is target
    torch.manual_seed(0)
    flip = RandomHorizontalFlip(0.5)
    n = sum(not torch.equal(flip(image, target)[0], image) for _ in range(400))
    assert 160 < n < 240
    with pytest.raises(ValueError, match="probability"):
        RandomHorizontalFlip(1.5)


def test_flip_without_masks_and_with_no_boxes() -> None:
    image = torch.zeros(3, 4, 6)
    _, target = RandomHorizontalFlip(1.0)(image, {"boxes": torch.zeros((0, 4))})
    assert target["boxes"].shape == (0, 4) and "masks" not in target


def test_compose_applies_in_order() -> None:
    image, target = sample()
    calls: list[str] = []

    def tag(name: str):  # noqa: ANN202
        def t(img: torch.Tensor, tgt: dict) -> tuple[torch.Tensor, dict]:
            calls.append(name)
            return img, tgt

        return t

    out_image, out_target = Compose([tag("a"), RandomHorizontalFlip(1.0), tag("b")])(image, target)
    assert calls == ["a", "b"]
    assert torch.equal(out_image, image.flip(-1))
