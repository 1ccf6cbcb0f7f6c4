"""COCO instances JSON: validated reading and writing (atomic, ``ovis.io``), RLE/polygon masks (no torch: ``ovis eval``
starts without it; the torch Dataset is ``ovis.data.dataset``).

COCO JSON with RLE masks is ovis's interchange format, so everything here stays compatible
with pycocotools: masks decode exactly as ``COCO.annToMask`` does, and every file written can be
loaded by pycocotools, detectron2 and mmdetection.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from ovis.data.masks import ann_to_mask, ann_to_rle, mask_to_rle, masks_to_rles
from ovis.io import read_json as _read_json
from ovis.io import write_json_atomic

__all__ = [
    "EVAL_ANNOTATION_KEYS",
    "CocoFormatError",
    "ann_to_mask",
    "compressed_rle_runs",
    "compressed_rle_sums",
    "is_coco_id",
    "is_finite_number",
    "ann_to_rle",
    "load_coco",
    "mask_to_rle",
    "masks_to_rles",
    "save_coco",
    "validate_coco",
]


# what COCOeval reads of every ground-truth annotation besides its geometry
EVAL_ANNOTATION_KEYS = ("area", "iscrowd")


class CocoFormatError(ValueError):
    """A COCO file is unreadable or inconsistent; the one-line message names the file and the id."""


# --------------------------------------------------------------------------------------------
# reading and validation


def read_json(path: str | Path) -> Any:
    """Parse a JSON file (:func:`ovis.io.read_json`); unreadable, truncated or non-UTF-8 files raise
    CocoFormatError naming it."""
    return _read_json(path, CocoFormatError)


def load_coco(
    path: str | Path, image_root: str | Path | None = None, check_images: bool = False,
    need_file_names: bool = False, annotation_keys: Sequence[str] = (),
) -> dict:
    """Read and validate a COCO instances JSON; returns the parsed dict.

    A missing ``annotations`` key is filled with ``[]`` (an image-only file); nothing else is
    changed. ``need_file_names`` and ``annotation_keys`` are as in :func:`validate_coco`; with ``check_images=True``
    every ``image_root / file_name`` must exist.
    Raises CocoFormatError naming the file and the offending image/annotation/category id.
    """
    name = os.fspath(path)
    data = read_json(path)
    validate_coco(data, name, need_file_names or check_images, annotation_keys)
    if check_images:
        if image_root is None:
            raise ValueError("load_coco(check_images=True) needs image_root")
        root = Path(image_root)
        for img in data["images"]:
            file_name = img["file_name"]
            if not (root / file_name).is_file():
                raise CocoFormatError(
                    f"{name}: image {img['id']}: file {root / file_name} not found; "
                    "check image_root or download the images"
                )
    return data


def validate_coco(data: Any, name: str = "<dataset>", need_file_names: bool = False,
                  annotation_keys: Sequence[str] = ()) -> None:
    """Validate a parsed COCO instances dict; ``name`` is the file named in errors.

    Checks: top-level keys and section types; integer ids, unique per section; images with
    positive integer height/width and a non-empty string ``file_name`` (required with
    ``need_file_names``, else checked when present); annotations pointing at known images and
    categories; bbox ``[x, y, w, h]`` of finite numbers with ``w > 0`` and ``h > 0`` that touches
    its image; ``iscrowd`` 0/1 and ``area`` ≥ 0 when present; polygons of finite numbers with >= 3
    points per part; RLE with ``counts`` and a ``size`` equal to the image's ``[height, width]``
    whose run lengths (compressed strings parsed, not decoded) sum to h*w; a non-empty name per
    category; every key of ``annotation_keys`` in every annotation, and a segmentation in every one
    once any has one. Ids are 64-bit integers and an image
    has fewer than 2**32 pixels (pycocotools' RLE holds uint32 runs). Unknown keys are allowed, as in
    COCO. Every error is one line naming the file, the
    entry (image / annotation / category id, or its index) and the field.
    Sets ``data["annotations"] = []`` when the key is absent.
    """
    if not isinstance(data, dict):
        raise CocoFormatError(f"{name}: top level is a {type(data).__name__}, expected an object")
    for key in ("images", "categories"):
        if key not in data:
            raise CocoFormatError(
                f"{name}: missing top-level key {key!r} (is this a COCO instances file?)"
            )
    data.setdefault("annotations", [])
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            kind = type(data[key]).__name__
            raise CocoFormatError(f"{name}: {key!r} is a {kind}, expected a list")
    for key, expected in (("info", dict), ("licenses", list)):
        if key in data and not isinstance(data[key], expected):
            raise CocoFormatError(f"{name}: {key!r} is a {type(data[key]).__name__}, expected a {expected.__name__}")

    sizes = _image_sizes(data["images"], name, need_file_names)
    categories = _entries(data["categories"], "category", name)
    for cid, cat in categories.items():
        if not isinstance(cat.get("name"), str) or not cat["name"].strip():
            raise CocoFormatError(f"{name}: category {cid}: 'name' is {cat.get('name')!r}, expected a "
                                  "non-empty string")
        if "supercategory" in cat and not isinstance(cat["supercategory"], str):
            raise CocoFormatError(f"{name}: category {cid}: 'supercategory' is {cat['supercategory']!r}, "
                                  "expected a string")
    rles: list[tuple[dict, str | bytes, int]] = []  # compressed RLEs, checked together below
    annotations = _entries(data["annotations"], "annotation", name)
    # a file with masks has one per annotation: training and segm evaluation read them all
    masks = any(a.get("segmentation") is not None for a in annotations.values())
    required = ("image_id", "category_id", "bbox", *annotation_keys, *(("segmentation",) if masks else ()))
    for aid, ann in annotations.items():
        where = f"{name}: annotation {aid}"
        for key in required:
            if ann.get(key) is None:
                raise CocoFormatError(f"{where}: {key!r} is missing or null; an annotation here needs "
                                      f"id, {', '.join(dict.fromkeys(required))}")
        hw = sizes.get(ann["image_id"]) if is_coco_id(ann["image_id"]) else None
        if hw is None:
            raise CocoFormatError(f"{where}: 'image_id' {ann['image_id']!r} is not an image id in 'images'")
        where = f"{where} (image {ann['image_id']})"
        if not is_coco_id(ann["category_id"]) or ann["category_id"] not in categories:
            raise CocoFormatError(f"{where}: 'category_id' {ann['category_id']!r} is not a category id in 'categories'")
        _check_bbox(ann["bbox"], hw, where)
        if "iscrowd" in ann and (type(ann["iscrowd"]) is not int or ann["iscrowd"] not in (0, 1)):
            raise CocoFormatError(f"{where}: 'iscrowd' is {ann['iscrowd']!r}, expected 0 or 1")
        if "area" in ann and not (is_finite_number(ann["area"]) and ann["area"] >= 0):
            raise CocoFormatError(f"{where}: 'area' is {ann['area']!r}, expected a number ≥ 0")
        if ann.get("segmentation") is not None:
            _check_segmentation(ann["segmentation"], hw, where, rles, ann)
    if rles:
        sums = compressed_rle_sums([counts for _, counts, _ in rles])
        for (ann, _, area), total in zip(rles, sums):
            if total != area:
                where = f"{name}: annotation {ann['id']} (image {ann['image_id']})"
                raise CocoFormatError(f"{where}: 'segmentation' {_rle_problem(total, area)}")


def _rle_problem(total: int, area: int) -> str:
    """Why a compressed RLE whose runs sum to ``total`` (-1: unparsable) is not a mask of ``area`` pixels."""
    if total < 0:
        return ("RLE counts string is not a compressed COCO RLE (characters '0'..'o' as "
                "pycocotools.mask.encode writes them)")
    return f"RLE counts string covers {total} pixels, expected height*width = {area}"


def is_coco_id(value: Any) -> TypeGuard[int]:
    """An id COCO tools can hold: a 64-bit integer (not a bool, float or string)."""
    return type(value) is int and -(2**63) <= value < 2**63


def _entries(entries: list, kind: str, name: str) -> dict[int, dict]:
    """``{id: entry}`` of one section; every entry an object with a unique integer ``id``."""
    out: dict[int, dict] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise CocoFormatError(f"{name}: {kind} at index {i} is a {type(entry).__name__}, expected an object")
        if "id" not in entry:
            raise CocoFormatError(f"{name}: {kind} at index {i}: no 'id'")
        eid = entry["id"]
        if not is_coco_id(eid):
            raise CocoFormatError(f"{name}: {kind} at index {i}: 'id' is {eid!r:.40}, expected a 64-bit integer")
        if eid in out:
            raise CocoFormatError(f"{name}: {kind} {eid}: duplicate 'id' (also at index "
                                  f"{list(out).index(eid)})")
        out[eid] = entry
    return out


def _image_sizes(images: list, name: str, need_file_names: bool) -> dict[int, tuple[int, int]]:
    sizes: dict[int, tuple[int, int]] = {}
    for iid, img in _entries(images, "image", name).items():
        for key in ("height", "width"):
            v = img.get(key)
            if type(v) is not int or v <= 0:
                raise CocoFormatError(f"{name}: image {iid}: {key!r} is {v!r}, expected a positive integer")
        if need_file_names or "file_name" in img:
            f = img.get("file_name")
            if not isinstance(f, str) or not f.strip():
                raise CocoFormatError(f"{name}: image {iid}: 'file_name' is {f!r}, expected a non-empty string")
        if img["height"] * img["width"] >= 2**32:
            raise CocoFormatError(f"{name}: image {iid}: 'height' x 'width' = {img['height']} x {img['width']} is "
                                  "more pixels than a COCO RLE mask can hold (2**32)")
        sizes[iid] = (img["height"], img["width"])
    return sizes


def _check_bbox(bbox: Any, hw: tuple[int, int], where: str) -> None:
    if type(bbox) is not list or len(bbox) != 4:
        got = f"{len(bbox)} values" if type(bbox) is list else f"a {type(bbox).__name__}"
        raise CocoFormatError(f"{where}: 'bbox' has {got}, expected [x, y, w, h]")
    if not all(is_finite_number(v) for v in bbox):
        raise CocoFormatError(f"{where}: 'bbox' {bbox} holds a value that is not a finite number")
    if not (bbox[2] > 0 and bbox[3] > 0):
        raise CocoFormatError(f"{where}: 'bbox' {bbox} has non-positive width or height; fix or drop the annotation")
    x, y, w, h = bbox
    if x >= hw[1] or y >= hw[0] or x + w <= 0 or y + h <= 0:
        raise CocoFormatError(f"{where}: 'bbox' {bbox} lies outside its {hw[1]}x{hw[0]} image")


def is_finite_number(v: Any) -> bool:
    """A JSON number that is neither a bool, NaN nor infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite_numbers(values: list) -> bool:
    """`is_finite_number` for every value; JSON's plain ints and floats are checked in C (a COCO
    file holds millions of polygon coordinates)."""
    if set(map(type, values)) <= {int, float}:
        return all(map(math.isfinite, values))
    return all(map(is_finite_number, values))


# pycocotools rasterises polygons at 5x in 32-bit ints: a coordinate beyond this overflows them
_POLYGON_LIMIT = 2**31 / 5


def _check_segmentation(segm: Any, hw: tuple[int, int], where: str,
                        rles: list[tuple[dict, str | bytes, int]], ann: dict) -> None:
    """Check polygons and uncompressed RLE now; queue compressed RLE strings on ``rles`` (parsed together)."""
    if type(segm) is list:
        if not segm:
            raise CocoFormatError(f"{where}: 'segmentation' is an empty polygon list")
        for j, part in enumerate(segm):
            if (type(part) is list and len(part) >= 6 and len(part) % 2 == 0 and _finite_numbers(part)
                    and max(map(abs, part)) < _POLYGON_LIMIT):
                continue
            part_of = f" (part {j} of {len(segm)})" if len(segm) > 1 else ""
            if type(part) is not list:
                problem = f"polygon is a {type(part).__name__}, expected [x1, y1, x2, y2, ...]"
            elif not all(map(is_finite_number, part)):
                bad = next(v for v in part if not is_finite_number(v))
                problem = f"polygon coordinate {bad!r} is not a finite number"
            elif len(part) % 2:
                problem = f"polygon has an odd number of coordinates ({len(part)})"
            elif max(map(abs, part)) >= _POLYGON_LIMIT:
                problem = f"polygon coordinate {max(part, key=abs)!r} is beyond ±{_POLYGON_LIMIT:.0f} pixels"
            else:
                problem = f"polygon has {len(part) // 2} points, needs at least 3"
            raise CocoFormatError(f"{where}: 'segmentation' {problem}{part_of}")
    elif type(segm) is dict:
        if "counts" not in segm:
            raise CocoFormatError(f"{where}: 'segmentation' is an RLE without 'counts'")
        size = segm.get("size")
        h, w = hw
        if type(size) is not list or size != [h, w]:
            raise CocoFormatError(
                f"{where}: 'segmentation' RLE size {size!r} does not match the image's [height, width] [{h}, {w}]"
            )
        counts = segm["counts"]
        if isinstance(counts, (str, bytes)):
            rles.append((ann, counts, h * w))
        elif type(counts) is list:
            if not all(type(c) is int and c >= 0 for c in counts):
                raise CocoFormatError(f"{where}: 'segmentation' RLE counts hold a value that is not an integer ≥ 0")
            total = sum(counts)
            if total != h * w:
                raise CocoFormatError(
                    f"{where}: 'segmentation' uncompressed RLE counts sum to {total}, expected height*width = {h * w}"
                )
        else:
            raise CocoFormatError(
                f"{where}: 'segmentation' RLE counts is a {type(counts).__name__}, expected a list or a string"
            )
    else:
        raise CocoFormatError(f"{where}: 'segmentation' is a {type(segm).__name__}, expected polygons or RLE")


# --------------------------------------------------------------------------------------------
# compressed RLE counts (pycocotools' rleToString / rleFrString format)

# a run length is below 2**32 (pycocotools stores uint32), so its difference to the run two back
# needs at most 34 bits with the sign: 7 characters of 5 bits; pycocotools never writes longer groups
_RLE_MAX_CHARS = 7
_RUN_LIMIT = 1 << 32
# a value's last character ('0'..'o' minus 48) as a signed 5-bit digit: bit 4 is the sign
_LAST_DIGIT = np.array([(d & 0x1F) - ((d & 0x10) << 1) for d in range(256)], np.int64)
# compressed_rle_sums works through the strings in batches of about this many characters: its
# temporaries then come from memory the allocator reuses (arrays of the whole input are fresh pages,
# and touching them costs more than the arithmetic)
_BATCH_CHARS = 1 << 20


def _as_bytes(strings: Sequence[str | bytes]) -> list[bytes]:
    return [s.encode("utf-8", "surrogatepass") if isinstance(s, str) else bytes(s) for s in strings]


def _rle_values(raw: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The values (int64) of compressed counts strings as written, before undoing pycocotools'
    differences; string ``i`` holds ``values[offsets[i]:offsets[i + 1]]``. ``ok[i]`` is False for a
    character outside ``'0'..'o'``, a value cut off at the end or longer than 7 characters."""
    lengths = np.fromiter(map(len, raw), np.int64, len(raw))
    text_ends = np.cumsum(lengths)  # one past each string's last character
    c = np.frombuffer(b"".join(raw), np.uint8) - np.uint8(48)  # '0'..'o' -> 0..63; anything else > 63
    ok = np.ones(len(raw), bool)
    if len(c) and c.max() > 63:
        ok[np.searchsorted(text_ends, np.flatnonzero(c > 63), "right")] = False
    more = c >= 32  # another 5-bit digit of this value follows (bit 5; other characters failed above)
    last = text_ends[lengths > 0] - 1
    ok[lengths > 0] &= ~more[last]  # the string ends inside a value
    more[last] = False  # a value never runs into the next string
    values = _LAST_DIGIT[c[~more]]  # nearly every value is one character: its last digit, sign-extended
    cont = np.flatnonzero(more)  # the other characters of longer values
    bounds = np.r_[0, text_ends]
    offsets = bounds - np.searchsorted(cont, bounds)  # values end where characters do not continue
    if len(cont):
        value_of = cont - np.arange(len(cont))
        first = np.flatnonzero(np.r_[True, value_of[1:] != value_of[:-1]])
        extra = np.diff(np.r_[first, len(cont)])  # characters before the last one of each long value
        value = value_of[first]
        ok[np.searchsorted(offsets, value[extra >= _RLE_MAX_CHARS], "right") - 1] = False
        digit = np.minimum(cont - np.repeat(cont[first], extra), _RLE_MAX_CHARS)  # too long: ok is False
        low = np.add.reduceat((c[cont] & np.uint8(0x1F)).astype(np.int64) << (5 * digit), first)
        values[value] = values[value] * (np.int64(1) << (5 * np.minimum(extra, _RLE_MAX_CHARS))) + low
    return values, offsets, ok


def compressed_rle_runs(strings: Sequence[str | bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse many compressed COCO RLE ``counts`` strings at once, without decoding any mask.

    Returns ``(runs, offsets, ok)``: the run lengths of string ``i`` are ``runs[offsets[i]:offsets[i + 1]]``
    (int64, as ``pycocotools.mask.frPyObjects`` would hold them); ``ok[i]`` is False when string ``i``
    is not one pycocotools writes: a character outside ``'0'..'o'``, a value cut off at the end, a
    value longer than 7 characters, or a run length outside [0, 2**32) (its runs are then meaningless).
    Whether the runs cover the image is the caller's check (``runs sum == h * w``).
    """
    x, offsets, ok = _rle_values(_as_bytes(strings))
    # pycocotools stores value j > 2 of a string as its difference to value j - 2. With G the cumulative
    # sum over every second value of the concatenation, run i = G[i] - G[q - 2], q the first value of
    # i's chain (j = 1 or 2) in its string; the per-chain offsets enter as corrections at each q.
    first = offsets[:-1, None] + np.array([1, 2])
    q = first[first < offsets[1:, None]]
    g = _every_second_cumsum(x)
    base = np.where(q >= 2, g[np.maximum(q - 2, 0)], 0)
    step = np.zeros_like(x)
    for parity in (0, 1):
        on = q % 2 == parity
        step[q[on]] = np.diff(base[on], prepend=0)
    runs = g - _every_second_cumsum(step)
    heads = offsets[:-1][offsets[1:] > offsets[:-1]]
    runs[heads] = x[heads]  # value 0 of each string is stored as it is
    bad = np.flatnonzero((runs < 0) | (runs >= _RUN_LIMIT))
    ok[np.searchsorted(offsets, bad, "right") - 1] = False
    return runs, offsets, ok


def _every_second_cumsum(x: np.ndarray) -> np.ndarray:
    """``out[i] = x[i] + out[i - 2]``: the cumulative sums of the even and of the odd positions."""
    out = np.empty_like(x)
    for parity in (0, 1):
        np.cumsum(x[parity::2], out=out[parity::2])
    return out


def compressed_rle_sums(strings: Sequence[str | bytes]) -> np.ndarray:
    """Sum of the run lengths of each compressed RLE ``counts`` string (the pixels it covers), -1 where
    :func:`compressed_rle_runs` finds it malformed. A valid mask of an h×w image sums to h*w."""
    raw = _as_bytes(strings)
    lengths = np.fromiter(map(len, raw), np.int64, len(raw))
    batch = (np.cumsum(lengths) - lengths) // _BATCH_CHARS  # the batch a string's first character falls in
    cuts = [0, *(np.flatnonzero(np.diff(batch)) + 1).tolist(), len(raw)]
    return np.concatenate([_batch_sums(raw[a:b]) for a, b in zip(cuts[:-1], cuts[1:])])


def _batch_sums(raw: list[bytes]) -> np.ndarray:
    """`compressed_rle_sums` of a batch without building its runs.

    A string's values x_0, x_1, ... hold the runs r_0 = x_0 and, for j = 1 and 2, the chains
    r_j, r_j+2, ... as cumulative sums of x_j, x_j+2, ... . With g the cumulative sums of the batch's
    even (odd) positions, a chain's runs are g minus g at the value before the chain, so each
    string's lowest and highest run and its sum are one reduction over its stretch of g. The highest
    run is checked (< 2**32) so that the sums, taken modulo 2**64, are exact: a string of n runs in
    [0, 2**32) covers less than 2**63 pixels for n < 2**31. g itself is exact below 2**28 characters
    per batch (|x| < 2**35).
    """
    x, offsets, ok = _rle_values(raw)
    counts = np.diff(offsets)
    starts = offsets[:-1]
    total = np.zeros(len(raw), np.int64)
    has = counts > 0
    total[has] = head = x[starts[has]]
    ok[has] &= (head >= 0) & (head < _RUN_LIMIT)
    for parity in (0, 1):
        g = np.cumsum(x[parity::2])
        lo = (starts + 1 - parity) // 2  # the string's values at this parity are g[lo:lo + n]
        n = (offsets[1:] + 1 - parity) // 2 - lo
        on = n > 0
        if not on.any():
            continue
        lo, n = lo[on], n[on]
        # the chain holding x_0 starts after it (r_0 is not a difference), the other one at x_1
        base = np.where(starts[on] % 2 == parity, g[lo], np.where(lo > 0, g[lo - 1], 0))
        ok[on] &= (np.minimum.reduceat(g, lo) >= base) & (np.maximum.reduceat(g, lo) - base < _RUN_LIMIT)
        total[on] += np.add.reduceat(g, lo) - n * base
    return np.where(ok, total, -1)


# --------------------------------------------------------------------------------------------
# writing


def save_coco(dataset: dict, path: str | Path) -> Path:
    """Validate a COCO instances dict (as ``load_coco`` does) and write it atomically."""
    validate_coco(dataset, os.fspath(path))
    return write_json_atomic(dataset, path)
