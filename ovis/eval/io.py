"""Load and check ground truth and detections for evaluation; merge per-rank detection shards.

Detections are COCO result entries: ``{"image_id", "category_id", "score", "bbox": [x, y, w, h]}``
for boxes and ``"segmentation": {"size": [h, w], "counts": str}`` (RLE) for masks. Ranks of a
distributed run write ``detections.rank{r}.json``; `load_detections` merges them in rank order.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from ovis.data.coco import (
    EVAL_ANNOTATION_KEYS,
    CocoFormatError,
    compressed_rle_sums,
    is_finite_number,
    read_json,
    validate_coco,
)
from ovis.io import write_json_atomic

__all__ = [
    "EvalInputError",
    "load_gt",
    "load_detections",
    "shard_paths",
    "merge_shards",
    "check_detections",
]

_SHARD = re.compile(r"\.rank(\d+)\.json$")


class EvalInputError(ValueError):
    """Ground truth or detections that cannot be evaluated; the message says where and what to do."""


def load_gt(gt: str | Path | dict) -> dict:
    """Return the GT dataset dict (images, annotations, categories) from a path or a dict."""
    if isinstance(gt, dict):
        data = gt
        name = "<gt dict>"
    else:
        path = Path(gt)
        if not path.is_file():
            raise EvalInputError(f"ground-truth file {path} does not exist")
        data, name = _read(path), str(path)
    try:  # the rules the splits stage applies (unknown images, duplicate ids, sizes, masks, ...) and the keys
        # COCOeval reads of every GT annotation
        validate_coco(data, name, annotation_keys=EVAL_ANNOTATION_KEYS)
    except CocoFormatError as e:
        raise EvalInputError(str(e)) from None
    return data


def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except CocoFormatError as e:
        raise EvalInputError(str(e)) from None


def shard_paths(path: str | Path) -> list[Path]:
    """Rank shards that stand for `path`: `DIR/detections.rank*.json` for a folder, or
    `X.rank*.json` next to a missing `X.json`; sorted by rank number. Empty if none."""
    path = Path(path)
    if path.is_dir():
        folder, stem = path, "detections"
    else:
        folder, stem = path.parent, path.name.removesuffix(".json")
    found = []
    for p in folder.glob(f"{stem}.rank*.json"):
        m = _SHARD.search(p.name)
        if m and p.name == f"{stem}.rank{m.group(1)}.json":
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _read_list(path: Path) -> list:
    data = _read(path)
    if not isinstance(data, list):
        raise EvalInputError(f"{path}: detections must be a JSON list of result entries")
    return data


def merge_shards(paths: Sequence[str | Path], out: str | Path | None = None) -> list[dict]:
    """Concatenate rank shards in the given order; optionally write the merged list to `out`."""
    merged: list[dict] = []
    for p in paths:
        merged.extend(_read_list(Path(p)))
    if out is not None:
        write_json_atomic(merged, out)
    return merged


def load_detections(detections: str | Path | list) -> list[dict]:
    """Detections from a list, a json file, a folder of rank shards or a missing file's shards."""
    if isinstance(detections, list):
        return detections
    path = Path(detections)
    if path.is_file():
        return _read_list(path)
    shards = shard_paths(path)
    if shards:
        return merge_shards(shards)
    raise EvalInputError(
        f"detections {path} not found (neither the file nor rank shards "
        f"{path.name.removesuffix('.json') if not path.is_dir() else 'detections'}.rank*.json)"
    )


def check_detections(dets: list, gt: dict, iou_type: str, source: str = "detections",
                     segm_area: str = "mask") -> list[dict]:
    """Validate detections against the GT and return clean copies for pycocotools.

    Copies keep image_id, category_id, score and the geometry of `iou_type`. For segm, ``segm_area``
    says what sizes a detection for the small / medium / large ranges: ``mask`` drops its `bbox`
    (the mask area, as detectron2), ``box`` keeps it (pycocotools on results that carry a bbox, as
    mmdetection writes them; every detection then needs one). Uncompressed RLE counts are
    compressed; compressed ones are parsed (all at once) and must cover the image. Raises
    EvalInputError naming the file, the detection index, its image id and the field.
    """
    if iou_type not in ("segm", "bbox"):
        raise EvalInputError(f"iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    sizes = {img["id"]: (int(img["height"]), int(img["width"])) for img in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    with_box = iou_type == "bbox" or segm_area == "box"
    out = _plainly_valid(dets, sizes, cat_ids, iou_type == "segm", with_box)
    if out is None:  # something is off: find the first problem detection by detection, as pycocotools would meet it
        out = _check_one_by_one(dets, sizes, cat_ids, iou_type == "segm", with_box, source)
    if iou_type == "segm":
        _check_compressed(out, source)
    return out


def _plainly_valid(dets: list, sizes: dict[Any, tuple[int, int]], cat_ids: set, segm: bool,
                   with_box: bool) -> list[dict] | None:
    """`check_detections`' clean copies, field by field over all detections at once, when every
    detection is a plain dict of known ids, finite score, 4 finite numbers with w, h >= 0 as bbox
    (`with_box`) and an RLE of its image's size with string counts (`segm`); None otherwise (then
    `_check_one_by_one` finds the problem or handles what is unusual but valid, such as bytes counts)."""
    try:
        if any(type(d) is not dict for d in dets):
            return None
        image_ids = [d["image_id"] for d in dets]
        categories = [d["category_id"] for d in dets]
        scores = [d["score"] for d in dets]
        if not (_types(image_ids) <= {int} and _types(categories) <= {int} and set(image_ids) <= sizes.keys()
                and set(categories) <= cat_ids and _types(scores) <= {int, float}):
            return None
        score_values = np.array(scores, np.float64)
        if not np.isfinite(score_values).all():
            return None
        out = [{"image_id": i, "category_id": c, "score": s}
               for i, c, s in zip(image_ids, categories, score_values.tolist())]
        if with_box:
            boxes = [d["bbox"] for d in dets]
            if not (_types(boxes) <= {list} and set(map(len, boxes)) <= {4}
                    and _types(itertools.chain.from_iterable(boxes)) <= {int, float}):
                return None
            box_values = np.array(boxes, np.float64).reshape(-1, 4)
            if not (np.isfinite(box_values).all() and (box_values[:, 2:] >= 0).all()):
                return None
            for clean, box in zip(out, box_values.tolist()):
                clean["bbox"] = box
        if segm:
            rles = [d["segmentation"] for d in dets]
            if not _types(rles) <= {dict}:
                return None
            rle_sizes = [r["size"] for r in rles]
            counts = [r["counts"] for r in rles]
            if not (_types(counts) <= {str} and _types(rle_sizes) <= {list}
                    and _types(itertools.chain.from_iterable(rle_sizes)) <= {int}
                    and rle_sizes == [list(sizes[i]) for i in image_ids]):
                return None
            for clean, size, c in zip(out, rle_sizes, counts):
                clean["segmentation"] = {"size": list(size), "counts": c}
    except (KeyError, OverflowError):  # a missing field; an integer beyond float's range
        return None
    return out


def _types(values: Iterable[Any]) -> set[type]:
    return set(map(type, values))


def _check_one_by_one(dets: list, sizes: dict[Any, tuple[int, int]], cat_ids: set, segm: bool, with_box: bool,
                      source: str) -> list[dict]:
    """`check_detections` detection by detection: raises EvalInputError for the first problem in file
    order (unknown image and category ids are gathered and reported after the rest)."""
    out: list[dict] = []
    bad_images: dict[Any, int] = {}
    bad_cats: dict[Any, int] = {}
    for i, d in enumerate(dets):
        if not isinstance(d, dict):
            raise EvalInputError(f"{source}[{i}]: a detection is an object, got a {type(d).__name__}")
        missing = [k for k in ("image_id", "category_id", "score") if k not in d]
        if missing:
            raise EvalInputError(f"{source}[{i}]: no {missing[0]!r}; a detection needs image_id, category_id and score")
        img_id, cat_id = d["image_id"], d["category_id"]
        for key, value in (("image_id", img_id), ("category_id", cat_id)):
            if type(value) is not int:
                raise EvalInputError(f"{source}[{i}]: {key!r} is {value!r:.60}, expected an integer id")
        if img_id not in sizes:
            bad_images.setdefault(img_id, i)
            continue
        if cat_id not in cat_ids:
            bad_cats.setdefault(cat_id, i)
            continue
        where = f"{source}[{i}] (image {img_id})"
        if not is_finite_number(d["score"]):
            raise EvalInputError(f"{where}: 'score' {d['score']!r:.60} is not a finite number")
        clean = {"image_id": img_id, "category_id": cat_id, "score": float(d["score"])}
        if with_box:
            bb = d.get("bbox")
            if not (isinstance(bb, list) and len(bb) == 4 and all(is_finite_number(v) for v in bb)):
                raise EvalInputError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bb!r:.80}")
            if bb[2] < 0 or bb[3] < 0:
                raise EvalInputError(f"{where}: 'bbox' {bb} has negative width/height; use [x, y, w, h]")
            clean["bbox"] = [float(v) for v in bb]
        if segm:
            clean["segmentation"] = _check_rle(d.get("segmentation"), sizes[img_id], where)
        out.append(clean)
    if bad_images:
        shown = ", ".join(f"{k!r} (first at {source}[{v}])" for k, v in list(bad_images.items())[:5])
        raise EvalInputError(
            f"{source}: {len(bad_images)} 'image_id' value(s) are not images of the ground truth: {shown}; "
            "evaluate against the GT file the detections were produced for"
        )
    if bad_cats:
        shown = ", ".join(f"{k!r} (first at {source}[{v}])" for k, v in list(bad_cats.items())[:5])
        raise EvalInputError(
            f"{source}: {len(bad_cats)} 'category_id' value(s) are not GT categories {sorted(cat_ids)[:10]}...: "
            f"{shown}; map labels to the GT file's category ids (class-agnostic: use any GT id)"
        )
    return out


def _check_rle(segm: Any, hw: tuple[int, int], where: str) -> dict:
    """Check one RLE against the image size; return it with str counts (compressed ones are
    checked together by `_check_compressed`)."""
    if not isinstance(segm, dict) or "size" not in segm or "counts" not in segm:
        kind = "a polygon list" if isinstance(segm, list) else repr(segm)[:60]
        raise EvalInputError(
            f"{where}: 'segmentation' must be an RLE dict {{'size': [h, w], 'counts': ...}}, got {kind}; "
            "encode masks with pycocotools.mask.encode"
        )
    size = segm["size"]
    if not (isinstance(size, list) and size == list(hw) and all(type(s) is int for s in size)):
        raise EvalInputError(f"{where}: 'segmentation' RLE size {size!r:.40} differs from the image's [h, w] = {list(hw)}")
    counts = segm["counts"]
    if isinstance(counts, bytes):  # pycocotools.mask.encode's own output, in-process
        counts = counts.decode("ascii", errors="replace")
    if isinstance(counts, str):
        return {"size": list(hw), "counts": counts}
    if isinstance(counts, list):
        if not all(type(c) is int and c >= 0 for c in counts) or sum(counts) != hw[0] * hw[1]:
            raise EvalInputError(
                f"{where}: 'segmentation' uncompressed RLE counts must be integers ≥ 0 summing to h*w = {hw[0] * hw[1]}"
            )
        rle = mask_utils.frPyObjects({"size": list(hw), "counts": counts}, hw[0], hw[1])
        return {"size": list(hw), "counts": rle["counts"].decode("ascii")}
    raise EvalInputError(f"{where}: 'segmentation' RLE counts must be a string or a list of ints, got {counts!r:.40}")


def _check_compressed(dets: list[dict], source: str) -> None:
    """Every detection's compressed counts string must parse and cover its image (pycocotools decodes
    uninitialised memory from a string such as '0')."""
    sums = compressed_rle_sums([d["segmentation"]["counts"] for d in dets])
    areas = np.array([h * w for h, w in (d["segmentation"]["size"] for d in dets)], np.int64)
    bad = np.flatnonzero(sums != areas)
    if len(bad):
        d = dets[bad[0]]
        where = f"{source}[{bad[0]}] (image {d['image_id']})"
        problem = ("is not a compressed COCO RLE (characters '0'..'o' as pycocotools.mask.encode writes them)"
                   if sums[bad[0]] < 0 else f"covers {sums[bad[0]]} pixels, expected h*w = {areas[bad[0]]}")
        raise EvalInputError(f"{where}: 'segmentation' RLE counts string {problem}")
