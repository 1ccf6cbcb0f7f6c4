"""A tiny training task for the engine tests: a conv net that finds a bright square in noise.

It follows torchvision's detection API (``model(images, targets) -> dict of losses``), has a
``backbone`` and a ``head`` (for freezing), dropout (model randomness that a resume must replay)
and a dataset with a random flip drawn from the global RNG (data randomness likewise). Images
come in two shapes, so aspect-ratio grouping has something to group.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ovis.config import Recipe, TrainConfig
from ovis.engine.train import TrainTask


class SquareDataset(Dataset):
    """``n`` noise images (3×24×32 or 3×32×24) with one bright 8-px square; target: its box and
    a class (0 left half, 1 right half)."""

    def __init__(self, n: int = 16, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(n):
            h, w = (24, 32) if i % 2 == 0 else (32, 24)
            img = torch.rand(3, h, w, generator=g) * 0.2
            y = int(torch.randint(0, h - 8, (1,), generator=g))
            x = int(torch.randint(0, w - 8, (1,), generator=g))
            img[:, y : y + 8, x : x + 8] += 0.8
            self.items.append((img, torch.tensor([x, y, x + 8, y + 8], dtype=torch.float32)))

    def __len__(self) -> int:
        return len(self.items)

    def aspect_ratios(self) -> list[float]:
        return [img.shape[2] / img.shape[1] for img, _ in self.items]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict]:
        img, box = self.items[i]
        w = img.shape[2]
        if torch.rand(()) < 0.5:  # random horizontal flip
            img, box = img.flip(-1), torch.stack([w - box[2], box[1], w - box[0], box[3]])
        label = torch.tensor(int((box[0] + box[2]) / 2 >= w / 2))
        return img, {"boxes": box[None], "labels": label[None]}


class SquareNet(nn.Module):
    """Backbone (two convs) + head regressing the normalised box and classifying the half."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(8 * 4 * 4, 6))
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.poison_at: int | None = None  # tests: iteration at which the loss turns NaN
        self.calls = 0

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        self.calls += 1
        feats = torch.cat([self.pool(self.backbone(im[None])) for im in images])
        out = self.head(feats)
        sizes = torch.tensor([[im.shape[2], im.shape[1]] * 2 for im in images], dtype=torch.float32)
        boxes = torch.cat([t["boxes"] for t in targets]) / sizes
        labels = torch.cat([t["labels"] for t in targets])
        loss_box = nn.functional.smooth_l1_loss(out[:, :4], boxes)
        if self.poison_at is not None and self.calls >= self.poison_at:
            loss_box = loss_box * float("nan")
        return {"loss_box": loss_box, "loss_cls": nn.functional.cross_entropy(out[:, 4:], labels)}


def toy_task(recipe: Recipe, run_dir: Path, stage: str) -> TrainTask:
    """Task builder in the ``build(recipe, run_dir, stage)`` form the engine imports by name."""
    cfg: TrainConfig = getattr(recipe, stage)
    torch.manual_seed(cfg.seed)
    dataset = SquareDataset()
    return TrainTask(model=SquareNet(), dataset=dataset, cfg=cfg, aspect_ratios=dataset.aspect_ratios())


def unseeded_task(recipe: Recipe, run_dir: Path, stage: str) -> TrainTask:
    """Like :func:`toy_task` but draws the initial weights from whatever the global RNG holds."""
    dataset = SquareDataset()
    return TrainTask(model=SquareNet(), dataset=dataset, cfg=getattr(recipe, stage), aspect_ratios=dataset.aspect_ratios())
