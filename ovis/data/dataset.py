"""COCO instances as torch Datasets for torchvision detection models, and image loading.

:class:`CocoDetection` serves ``(image, target)`` pairs of a COCO instances file; :class:`CaptionImages`
pairs its images with captions (CPL's caption grounding, docs/cpl.md#21-caption-pretraining);
:class:`StudentDataset` relabels GT and pseudo annotations for CPL's robust student
(docs/cpl.md#24-robust-student).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from torch import Tensor
from torch.utils.data import Dataset

from ovis.data.coco import CocoFormatError, ann_to_rle, load_coco

__all__ = ["CaptionImages", "CocoDetection", "StudentDataset", "Transform", "collate_fn", "load_rgb"]


def load_rgb(path: Path, size: tuple[int, int], where: str) -> torch.Tensor:
    """RGB image float32 [3, H, W] in 0..1; ``size`` = the (width, height) its JSON entry states."""
    try:
        with Image.open(path) as file:
            im = file.convert("RGB")
    except FileNotFoundError as e:
        raise CocoFormatError(f"{where}: file {path} not found; check image_root") from e
    except (UnidentifiedImageError, OSError) as e:
        raise CocoFormatError(f"{where}: cannot read image {path}: {e}") from e
    if im.size != tuple(size):
        raise CocoFormatError(f"{where}: {path} is {im.size[0]}x{im.size[1]} but the JSON says {size[0]}x{size[1]}")
    chw = np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1))
    return torch.from_numpy(chw).float().div_(255)


Transform = Callable[[torch.Tensor, dict], tuple[torch.Tensor, dict]]


class CocoDetection(Dataset):
    """COCO instances as ``(image, target)`` pairs for torchvision detection models.

    ``image``: float32 [3, H, W] RGB in 0..1. ``target``: ``boxes`` float32 [N, 4] XYXY absolute
    pixels (clipped to the image), ``labels`` int64 [N] (1..K, or all 1 when class-agnostic),
    ``masks`` uint8 [N, H, W] (only with ``with_masks``), ``iscrowd`` int64 [N], ``area`` float32
    [N] (COCO ``area``), ``pseudo`` bool [N], ``scores`` float32 [N] (pseudo annotations' ``score``,
    1.0 for ground truth), ``image_id`` int.

    ``category_ids`` selects and orders the categories mapped to labels 1..K (default: all, sorted
    by id); annotations of other categories are dropped, i.e. their objects become background.
    ``drop_crowd`` removes ``iscrowd=1`` annotations (training); with ``drop_crowd=False`` they
    stay, flagged by ``iscrowd``. Boxes at most 1 px wide or high after clipping to the image are
    dropped (maskrcnn-benchmark). ``min_size`` drops images whose shorter side is below it (GGN/OLN use
    32); ``skip_empty`` drops images whose target would be empty.

    In class-agnostic mode every kept category maps to label 1 and ``label_to_cat_id`` is empty,
    since a label then names no single category.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        category_ids: Sequence[int] | None = None,
        class_agnostic: bool = False,
        transforms: Transform | None = None,
        with_masks: bool = True,
        min_size: int = 0,
        skip_empty: bool = False,
        drop_crowd: bool = True,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        self.transforms = transforms
        self.with_masks = with_masks
        self.coco = load_coco(ann_file)
        name = os.fspath(ann_file)
        if not self.image_root.is_dir():
            raise CocoFormatError(f"{name}: image folder {self.image_root} not found; check data.root and the "
                                  "recipe's image folder")

        file_cat_ids = {c["id"] for c in self.coco["categories"]}
        if category_ids is None:
            category_ids = sorted(file_cat_ids)
        category_ids = list(category_ids)
        unknown = [c for c in category_ids if c not in file_cat_ids]
        if unknown:
            raise ValueError(f"{name}: category ids {unknown} are not in the file's categories")
        if len(set(category_ids)) != len(category_ids):
            raise ValueError(f"category_ids has duplicates: {category_ids}")
        self.category_ids = category_ids
        self.class_agnostic = class_agnostic
        if class_agnostic:
            self.cat_id_to_label = {c: 1 for c in category_ids}
            self.label_to_cat_id: dict[int, int] = {}
        else:
            self.cat_id_to_label = {c: i + 1 for i, c in enumerate(category_ids)}
            self.label_to_cat_id = {i + 1: c for i, c in enumerate(category_ids)}
        self.num_classes = 1 if class_agnostic else len(category_ids)

        self._images = {img["id"]: img for img in self.coco["images"]}
        self._anns: dict[Any, list[dict]] = {iid: [] for iid in self._images}
        for ann in self.coco["annotations"]:
            if ann["category_id"] not in self.cat_id_to_label:
                continue
            if drop_crowd and ann.get("iscrowd", 0):
                continue
            img = self._images[ann["image_id"]]
            x, y, w, h = ann["bbox"]
            clipped_w = min(x + w, img["width"]) - max(x, 0)
            clipped_h = min(y + h, img["height"]) - max(y, 0)
            if clipped_w <= 1 or clipped_h <= 1:
                continue
            if with_masks and "segmentation" not in ann:
                raise CocoFormatError(
                    f"{name}: annotation {ann['id']} (image {ann['image_id']}): no segmentation; "
                    "use with_masks=False for box-only data"
                )
            self._anns[ann["image_id"]].append(ann)
        self.ids = [
            img["id"]
            for img in self.coco["images"]
            if min(img["height"], img["width"]) >= min_size
            and (self._anns[img["id"]] or not skip_empty)
        ]

    def __len__(self) -> int:
        return len(self.ids)

    def check_image_files(self, image_ids: Iterable[int] | None = None) -> None:
        """Every image file of ``image_ids`` (default: all items) exists, else a CocoFormatError naming the
        first missing one: a stage calls this before it writes anything."""
        for image_id in self.ids if image_ids is None else image_ids:
            path = self.image_root / self._images[image_id]["file_name"]
            if not path.is_file():
                raise CocoFormatError(f"{os.fspath(self.ann_file)}: image {image_id}: file {path} not found; "
                                      "check data.root and the recipe's image folder")

    def load_image(self, image_id: int) -> torch.Tensor:
        """RGB image float32 [3, H, W] in 0..1; checks the file against the JSON's size."""
        info = self._images[image_id]
        return load_rgb(self.image_root / info["file_name"], (info["width"], info["height"]),
                        f"{os.fspath(self.ann_file)}: image {image_id}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.ids[index]
        info = self._images[image_id]
        h, w = info["height"], info["width"]
        anns = self._anns[image_id]
        image = self.load_image(image_id)

        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes[:, 0::2].clamp_(0, w)
        boxes[:, 1::2].clamp_(0, h)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(
                [self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "iscrowd": torch.tensor([a.get("iscrowd", 0) for a in anns], dtype=torch.int64),
            "area": torch.tensor([a.get("area", 0.0) for a in anns], dtype=torch.float32),
            "pseudo": torch.tensor([bool(a.get("pseudo", False)) for a in anns], dtype=torch.bool),
            "scores": torch.tensor(
                [float(a.get("score", 1.0)) if a.get("pseudo", False) else 1.0 for a in anns],
                dtype=torch.float32,
            ),
            "image_id": image_id,
        }
        if self.with_masks:
            target["masks"] = _decode_masks(anns, h, w)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _decode_masks(anns: Iterable[dict], height: int, width: int) -> torch.Tensor:
    rles = [ann_to_rle(a, height, width) for a in anns]
    if not rles:
        return torch.zeros((0, height, width), dtype=torch.uint8)
    stack = mask_utils.decode(rles)  # uint8 [H, W, N]
    return torch.from_numpy(np.ascontiguousarray(stack.transpose(2, 0, 1)))


def collate_fn(
    batch: Sequence[tuple[torch.Tensor, dict]],
) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection samples -> (list of images, list of targets), the form torchvision models take."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


class CaptionImages(Dataset):
    """Images of a COCO instances JSON paired with one of their captions.

    Items: ``(image float32 [3, H, W] RGB in 0..1, {"image_id": int, "caption": str, "flipped": bool,
    "decoded": bool})``; the caption is drawn uniformly from the image's list on every access with torch's
    RNG (the training loop seeds each item). Images without a caption are skipped. ``captions`` maps image
    id (int, or str as in ``splits/captions.json``) to captions. ``min_size`` rescales the shorter
    side to that many pixels, with the longer side capped at ``max_size`` (torchvision's detection
    rule); ``flip_prob`` mirrors the image left-right. ``decode_once``: an image this dataset object has
    already returned with the same flip comes back undecoded, an uninitialised tensor of its size with
    ``decoded`` False, for a model that keeps each image's features after its first visit
    (:meth:`ovis.models.grounding.GroundingModel.cache_backbone`); the random draws are the same.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        captions: Mapping[int | str, Sequence[str]],
        min_size: int | None = None,
        max_size: int | None = None,
        flip_prob: float = 0.0,
        decode_once: bool = False,
    ) -> None:
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.ann_file = Path(ann_file)
        self.image_root = Path(image_root)
        self.min_size, self.max_size, self.flip_prob = min_size, max_size, flip_prob
        self._decoded: set[tuple[int, bool]] | None = set() if decode_once else None
        coco = load_coco(ann_file)
        self.captions: dict[int, list[str]] = {}
        for key, caps in captions.items():
            try:
                image_id = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"captions: key {key!r} is not an image id (expected an int or a digit string)") from None
            if isinstance(caps, str) or not all(isinstance(c, str) for c in caps):
                raise ValueError(f"captions: image {image_id}: expected a list of caption strings, got {caps!r:.80}")
            self.captions[image_id] = [c for c in caps if c.strip()]
        self._images = {img["id"]: img for img in coco["images"]}
        self.ids = [img["id"] for img in coco["images"] if self.captions.get(img["id"])]
        if not self.ids:
            raise ValueError(f"{self.ann_file}: none of its {len(self._images)} images has a caption; "
                             "check that the captions belong to this split (image ids must match)")

    def __len__(self) -> int:
        return len(self.ids)

    def aspect_ratios(self) -> list[float]:
        """Width / height of every item (for aspect-ratio grouped batches)."""
        return [self._images[i]["width"] / self._images[i]["height"] for i in self.ids]

    def load_image(self, image_id: int) -> Tensor:
        """RGB float32 [3, H, W] in 0..1 at file resolution; checks the size against the JSON."""
        info = self._images[image_id]
        return load_rgb(self.image_root / info["file_name"], (info["width"], info["height"]),
                        f"{self.ann_file}: image {image_id}")

    def _size(self, image_id: int) -> tuple[int, int]:
        """(h, w) of the image as returned: its JSON size rescaled by ``min_size`` / ``max_size``."""
        h, w = self._images[image_id]["height"], self._images[image_id]["width"]
        if not self.min_size:
            return h, w
        scale = self.min_size / min(h, w)
        if self.max_size:
            scale = min(scale, self.max_size / max(h, w))
        return max(1, round(h * scale)), max(1, round(w * scale))

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        flipped = bool(self.flip_prob > 0 and torch.rand(()) < self.flip_prob)
        caps = self.captions[image_id]
        caption = caps[int(torch.randint(len(caps), ()))]
        key = (image_id, flipped)
        if self._decoded is not None and key in self._decoded:
            return torch.empty(3, *self._size(image_id)), {"image_id": image_id, "caption": caption,
                                                           "flipped": flipped, "decoded": False}
        image = self.load_image(image_id)  # its size checked against the JSON's
        size = self._size(image_id)
        if size != tuple(image.shape[-2:]):
            image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        if flipped:
            image = image.flip(-1)
        if self._decoded is not None:
            self._decoded.add(key)
        return image, {"image_id": image_id, "caption": caption, "flipped": flipped, "decoded": True}


class StudentDataset(Dataset):
    """Student training items from ``pseudo/train_pseudo.json`` (or, online, from train_base.json).

    Wraps a :class:`CocoDetection` over every category of the file and relabels: GT boxes →
    base labels (1..K in ``base_ids`` order), pseudo boxes → pseudo-vocabulary labels (1..V in
    ``pseudo_ids`` order). ``captions`` (image id → captions) adds ``target["captions"]``.
    """

    def __init__(self, dataset: CocoDetection, base_ids: Sequence[int], pseudo_ids: Sequence[int],
                 captions: Mapping[int, Sequence[str]] | None = None) -> None:
        self.dataset, self.captions = dataset, captions
        base = {c: i + 1 for i, c in enumerate(base_ids)}
        vocab = {c: i + 1 for i, c in enumerate(pseudo_ids)}
        n = max(dataset.label_to_cat_id, default=0) + 1
        self._gt_label = torch.full((n,), -1, dtype=torch.int64)
        self._pl_label = torch.full((n,), -1, dtype=torch.int64)
        for label, cid in dataset.label_to_cat_id.items():
            self._gt_label[label] = base.get(cid, -1)
            self._pl_label[label] = vocab.get(cid, -1)
        self.ids = dataset.ids

    def __len__(self) -> int:
        return len(self.dataset)

    def aspect_ratios(self) -> list[float]:
        imgs = self.dataset._images
        return [imgs[i]["width"] / imgs[i]["height"] for i in self.dataset.ids]

    def __getitem__(self, index: int) -> tuple[Tensor, dict]:
        image, target = self.dataset[index]
        pseudo = target["pseudo"]
        labels = torch.where(pseudo, self._pl_label[target["labels"]], self._gt_label[target["labels"]])
        if (labels < 0).any():
            bad = target["labels"][labels < 0].tolist()
            cats = sorted({self.dataset.label_to_cat_id[b] for b in bad})
            raise ValueError(f"{self.dataset.ann_file}: image {target['image_id']}: categories {cats} are neither "
                             "base classes (GT) nor in the pseudo vocabulary (pseudo annotations)")
        target = {**target, "labels": labels}
        if self.captions is not None:
            target["captions"] = list(self.captions.get(target["image_id"], []))
        return image, target
