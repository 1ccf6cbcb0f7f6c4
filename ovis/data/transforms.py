"""Joint transforms on ``(image, target)`` detection samples as ``CocoDetection`` returns them.

``image`` is a tensor [C, H, W]; ``target`` holds ``boxes`` [N, 4] XYXY absolute pixels and
optionally ``masks`` [N, H, W]. Transforms return new targets and never modify their input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["Compose", "RandomHorizontalFlip"]

Transform = Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]]


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomHorizontalFlip:
    """Mirror image, boxes and masks left-right with probability ``p`` (torch's RNG, so
    ``torch.manual_seed`` and DataLoader worker seeding make it reproducible)."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if self.p < 1.0 and torch.rand(()) >= self.p:
            return image, target
        width = image.shape[-1]
        target = dict(target)
        if "boxes" in target:
            boxes = target["boxes"]
            # x' = W - x in continuous pixel coordinates; x1/x2 swap roles
            target["boxes"] = torch.stack(
                [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
            )
        if "masks" in target:
            target["masks"] = target["masks"].flip(-1)
        return image.flip(-1), target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"
