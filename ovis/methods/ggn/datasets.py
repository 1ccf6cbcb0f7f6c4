"""What GGN reads from a run folder: the split files, the training datasets built on them, and the unseen
classes' GT held out of ``splits/train_base.json``."""

from __future__ import annotations

import json
from pathlib import Path

from ovis.config import Recipe
from ovis.data.coco import load_coco
from ovis.data.dataset import CocoDetection
from ovis.data.transforms import RandomHorizontalFlip
from ovis.runs import RunLayout

MIN_TRAIN_SIDE = 32  # GGN/OLN drop training images whose shorter side is below this (docs/protocols.md#13-voc-split)


def split_file(run_dir: str | Path, name: str) -> Path:
    """``<run_dir>/splits/<name>``, which the splits stage must have written."""
    path = RunLayout(run_dir).split(name)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run the splits stage first (ovis.data.splits.run_splits_stage)")
    return path


def train_images(recipe: Recipe) -> Path:
    return recipe.data.path(recipe.data.train_images)


def train_dataset(recipe: Recipe, ann_file: Path, flip_prob: float, with_masks: bool = True) -> CocoDetection:
    """Class-agnostic training images of ``ann_file`` that have an object and are large enough (``MIN_TRAIN_SIDE``)."""
    flip = RandomHorizontalFlip(flip_prob) if flip_prob > 0 else None
    return CocoDetection(ann_file, train_images(recipe), class_agnostic=True, transforms=flip,
                         with_masks=with_masks, min_size=MIN_TRAIN_SIDE, skip_empty=True)


def aspect_ratios(ds: CocoDetection) -> list[float]:
    images = {im["id"]: im for im in ds.coco["images"]}
    return [images[i]["width"] / images[i]["height"] for i in ds.ids]


def pseudo_dir(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).stage("pseudo")


def pseudo_dataset(recipe: Recipe, run_dir: Path) -> tuple[CocoDetection, list[int]]:
    """The training images (as the student sees them, no flip) and the ids to extract (``pseudo.max_images``)."""
    ds = train_dataset(recipe, split_file(run_dir, "train_base.json"), 0.0)
    return ds, ds.ids[: recipe.pseudo.max_images or None]


def unseen_gt(recipe: Recipe, run_dir: Path, image_ids: set[int]) -> tuple[dict[int, list[dict]], dict]:
    """Non-crowd GT of the partition's unseen classes on ``image_ids``, from the original training
    instances (held out of train_base.json), and the original file's categories."""
    partition = json.loads(split_file(run_dir, "partition.json").read_text())
    unseen = {c["id"] if isinstance(c, dict) else int(c) for c in partition["novel"]}
    orig = load_coco(recipe.data.path(recipe.data.train_instances))
    by_image: dict[int, list[dict]] = {i: [] for i in image_ids}
    for a in orig["annotations"]:
        if a["image_id"] in by_image and a["category_id"] in unseen and not a.get("iscrowd", 0):
            by_image[a["image_id"]].append(a)
    return by_image, {c["id"]: c for c in orig["categories"]}
