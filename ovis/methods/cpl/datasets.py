"""The teacher's and student's training datasets on the run's split files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ovis.config import Recipe
from ovis.data.dataset import CocoDetection
from ovis.data.transforms import RandomHorizontalFlip


def train_dataset(recipe: Recipe, ann_file: Path, category_ids: Sequence[int] | None, flip_prob: float,
                   caption_only: bool = False) -> CocoDetection:
    """The images of ``ann_file`` with at least one annotation of ``category_ids``, and with ``caption_only`` also
    its caption-only images (docs/cpl.md#27-caption-only-images), which have none."""
    ds = CocoDetection(ann_file, recipe.data.path(recipe.data.train_images), category_ids=category_ids,
                       transforms=RandomHorizontalFlip(flip_prob) if flip_prob > 0 else None,
                       skip_empty=not caption_only)
    if caption_only:
        ds.ids = [i for i in ds.ids if ds._anns[i] or ds._images[i].get("caption_only")]
    ds.check_image_files()  # before the training stage writes anything
    return ds


def aspect_ratios(ds: CocoDetection) -> list[float]:
    return [ds._images[i]["width"] / ds._images[i]["height"] for i in ds.ids]
