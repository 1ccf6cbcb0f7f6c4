"""COCO instances JSON: validated reading, atomic writing, RLE/polygon masks (no torch: ``ovis eval``
starts without it; the torch Dataset is ``ovis.data.dataset``).

COCO JSON with RLE masks is ovis's interchange format, so everything here stays compatible
with pycocotools: masks decode exactly as ``COCO.annToMask`` does, and every file written can be
loaded by pycocotools, detectron2 and mmdetection.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ovis.data.masks import ann_to_mask, ann_to_rle, mask_to_rle, masks_to_rles

__all__ = [
    "CocoFormatError",
    "ann_to_mask",
    "is_finite_number",
    "ann_to_rle",
    "load_coco",
    "mask_to_rle",
    "masks_to_rles",
    "save_coco",
    "validate_coco",
    "write_json_atomic",
    "write_text_atomic",
]


class CocoFormatError(ValueError):
    """A COCO file is unreadable or inconsistent; the one-line message names the file and the id."""


# --------------------------------------------------------------------------------------------
# reading and validation


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; unreadable, truncated or non-UTF-8 files raise CocoFormatError naming it."""
    name = os.fspath(path)
    bad: list[_NonFinite] = []

    def non_finite(literal: str) -> _NonFinite:  # Python's json accepts NaN and Infinity; JSON does not
        bad.append(_NonFinite(literal))
        return bad[-1]

    try:
        with open(path, "rb") as f:
            data = json.load(f, parse_constant=non_finite)
    except OSError as e:
        raise CocoFormatError(f"{name}: cannot read file: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise CocoFormatError(
            f"{name}: not valid JSON (truncated or corrupt?): {e.msg} at line {e.lineno} "
            f"column {e.colno}; re-download or re-create the file"
        ) from e
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{name}: not a UTF-8 JSON file ({e.reason})") from e
    if bad:
        raise CocoFormatError(f"{name}: {_locate(data, bad[0])} is {bad[0].literal}; JSON numbers must be finite")
    return data


class _NonFinite:
    """Stands in for a NaN / Infinity literal while a file is parsed, so its place can be named."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


def _locate(obj: Any, target: object, path: str = "") -> str:
    """Where ``target`` sits in ``obj``: e.g. ``annotations id 7: field 'bbox'``."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        if value is target:
            return f"{path}: field {key!r}" if isinstance(key, str) and path else f"{path or 'top level'}[{key!r}]"
        if isinstance(value, (dict, list)):
            here = path
            if isinstance(key, str):
                here = f"{path}.{key}" if path else key
            elif isinstance(value, dict) and "id" in value:
                here = f"{path} id {value['id']}"
            else:
                here = f"{path}[{key}]"
            found = _locate(value, target, here)
            if found:
                return found
    return ""


def load_coco(
    path: str | Path, image_root: str | Path | None = None, check_images: bool = False
) -> dict:
    """Read and validate a COCO instances JSON; returns the parsed dict.

    A missing ``annotations`` key is filled with ``[]`` (an image-only file); nothing else is
    changed. With ``check_images=True`` every ``image_root / file_name`` must exist.
    Raises CocoFormatError naming the file and the offending image/annotation/category id.
    """
    name = os.fspath(path)
    data = read_json(path)
    validate_coco(data, name)
    if check_images:
        if image_root is None:
            raise ValueError("load_coco(check_images=True) needs image_root")
        root = Path(image_root)
        for img in data["images"]:
            file_name = img.get("file_name")
            if not isinstance(file_name, str):
                raise CocoFormatError(f"{name}: image {img['id']}: no 'file_name'")
            if not (root / file_name).is_file():
                raise CocoFormatError(
                    f"{name}: image {img['id']}: file {root / file_name} not found; "
                    "check image_root or download the images"
                )
    return data


def validate_coco(data: Any, name: str = "<dataset>") -> None:
    """Validate a parsed COCO instances dict; ``name`` is the file named in errors.

    Checks: top-level keys; unique image/annotation/category ids; images with positive integer
    height/width; annotations pointing at known images and categories; bbox ``[x, y, w, h]``
    of finite numbers with ``w > 0`` and ``h > 0`` that touches its image; ``iscrowd`` 0/1 and
    ``area`` ≥ 0 when present; polygons of finite numbers with >= 3 points per part; RLE with
    ``counts`` and a ``size`` equal to the image's ``[height, width]`` whose run lengths
    (compressed strings parsed, not decoded) sum to h*w; a non-empty name per category.
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

    sizes = _image_sizes(data["images"], name)
    category_ids = _unique_ids(data["categories"], "category", name)
    for cat in data["categories"]:
        if not isinstance(cat.get("name"), str) or not cat["name"].strip():
            raise CocoFormatError(f"{name}: category {cat['id']}: 'name' is {cat.get('name')!r}, expected a "
                                  "non-empty string")
    seen: set = set()
    for i, ann in enumerate(data["annotations"]):
        try:
            aid = ann["id"]
            hw = sizes.get(ann["image_id"])
            if hw is None:
                raise CocoFormatError(f"{_where(name, ann)}: image id is not in 'images'")
            if aid in seen:
                raise CocoFormatError(f"{name}: annotation {aid}: duplicate annotation id")
            seen.add(aid)
            if ann["category_id"] not in category_ids:
                raise CocoFormatError(
                    f"{_where(name, ann)}: category id {ann['category_id']} is not in 'categories'"
                )
            bbox = ann["bbox"]
            if len(bbox) != 4:
                raise CocoFormatError(
                    f"{_where(name, ann)}: bbox has {len(bbox)} numbers, expected [x, y, w, h]"
                )
            if not all(is_finite_number(v) for v in bbox):
                raise CocoFormatError(f"{_where(name, ann)}: bbox {bbox} holds a value that is not a finite number")
            if not (bbox[2] > 0 and bbox[3] > 0):
                raise CocoFormatError(
                    f"{_where(name, ann)}: bbox {bbox} has non-positive width or height; "
                    "fix or drop the annotation"
                )
            x, y, w, h = bbox
            if x >= hw[1] or y >= hw[0] or x + w <= 0 or y + h <= 0:
                raise CocoFormatError(f"{_where(name, ann)}: bbox {bbox} lies outside its "
                                      f"{hw[1]}x{hw[0]} image")
            if "iscrowd" in ann and (type(ann["iscrowd"]) is not int or ann["iscrowd"] not in (0, 1)):
                raise CocoFormatError(f"{_where(name, ann)}: iscrowd is {ann['iscrowd']!r}, expected 0 or 1")
            if "area" in ann and not (is_finite_number(ann["area"]) and ann["area"] >= 0):
                raise CocoFormatError(f"{_where(name, ann)}: area is {ann['area']!r}, expected a number ≥ 0")
            segm = ann.get("segmentation")
            if segm is not None:
                _check_segmentation(segm, hw, name, ann)
        except (KeyError, TypeError, AttributeError) as e:
            raise CocoFormatError(
                f"{name}: annotation {_id_or_index(ann, i)}: malformed annotation "
                f"({type(e).__name__}: {e}); expected keys id, image_id, category_id, bbox"
            ) from e


def _where(name: str, ann: dict) -> str:
    return f"{name}: annotation {ann['id']} (image {ann['image_id']})"


def _id_or_index(entry: Any, index: int) -> str:
    if isinstance(entry, dict) and "id" in entry:
        return str(entry["id"])
    return f"at index {index}"


def _image_sizes(images: list, name: str) -> dict[Any, tuple[int, int]]:
    sizes: dict[Any, tuple[int, int]] = {}
    for i, img in enumerate(images):
        try:
            iid, h, w = img["id"], img["height"], img["width"]
        except (KeyError, TypeError) as e:
            raise CocoFormatError(
                f"{name}: image {_id_or_index(img, i)}: malformed image entry, missing {e}; "
                "expected keys id, height, width"
            ) from e
        if iid in sizes:
            raise CocoFormatError(f"{name}: image {iid}: duplicate image id")
        if type(h) is not int or type(w) is not int or h <= 0 or w <= 0:
            raise CocoFormatError(
                f"{name}: image {iid}: height/width must be positive integers, got {h!r}/{w!r}"
            )
        sizes[iid] = (h, w)
    return sizes


def _unique_ids(entries: list, kind: str, name: str) -> set:
    try:
        ids = [e["id"] for e in entries]
    except (KeyError, TypeError) as e:
        bad = next(i for i, x in enumerate(entries) if not isinstance(x, dict) or "id" not in x)
        raise CocoFormatError(f"{name}: {kind} at index {bad}: no 'id'") from e
    unique = set(ids)
    if len(unique) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise CocoFormatError(f"{name}: {kind} {dup}: duplicate {kind} id")
    return unique


def is_finite_number(v: Any) -> bool:
    """A JSON number that is neither a bool, NaN nor infinite."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _compressed_counts(s: str | bytes) -> list[int] | None:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``), without
    decoding the mask; None when the string is not one."""
    data = s.encode("ascii", "replace") if isinstance(s, str) else s
    counts: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data) or not 48 <= data[p] < 48 + 64:
                return None
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _check_segmentation(segm: Any, hw: tuple[int, int], name: str, ann: dict) -> None:
    if type(segm) is list:
        if not segm:
            raise CocoFormatError(f"{_where(name, ann)}: segmentation is an empty polygon list")
        for j, part in enumerate(segm):
            if type(part) is list and len(part) >= 6 and len(part) % 2 == 0 and all(map(is_finite_number, part)):
                continue
            part_of = f" (part {j} of {len(segm)})" if len(segm) > 1 else ""
            if type(part) is not list:
                problem = f"polygon is a {type(part).__name__}, expected [x1, y1, x2, y2, ...]"
            elif not all(map(is_finite_number, part)):
                bad = next(v for v in part if not is_finite_number(v))
                problem = f"polygon coordinate {bad!r} is not a finite number"
            elif len(part) % 2:
                problem = f"polygon has an odd number of coordinates ({len(part)})"
            else:
                problem = f"polygon has {len(part) // 2} points, needs at least 3"
            raise CocoFormatError(f"{_where(name, ann)}: {problem}{part_of}")
    elif type(segm) is dict:
        if "counts" not in segm:
            raise CocoFormatError(f"{_where(name, ann)}: RLE segmentation has no 'counts'")
        size = segm.get("size")
        h, w = hw
        if size is None or list(size) != [h, w]:
            raise CocoFormatError(
                f"{_where(name, ann)}: RLE size {size} does not match the image's "
                f"[height, width] [{h}, {w}]"
            )
        counts = segm["counts"]
        if isinstance(counts, (str, bytes)):
            counts = _compressed_counts(counts)
            if counts is None:
                raise CocoFormatError(f"{_where(name, ann)}: RLE counts string is not a compressed COCO RLE")
        if type(counts) is list:
            if not all(type(c) is int and c >= 0 for c in counts):
                raise CocoFormatError(f"{_where(name, ann)}: RLE counts hold a value that is not an integer ≥ 0")
            total = sum(counts)
            if total != h * w:
                raise CocoFormatError(
                    f"{_where(name, ann)}: uncompressed RLE counts sum to {total}, "
                    f"expected height*width = {h * w}"
                )
        else:
            raise CocoFormatError(
                f"{_where(name, ann)}: RLE counts is a {type(counts).__name__}, "
                "expected a list or a string"
            )
    else:
        raise CocoFormatError(
            f"{_where(name, ann)}: segmentation is a {type(segm).__name__}, "
            "expected polygons or RLE"
        )


# --------------------------------------------------------------------------------------------
# writing


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays come out of every computation; bytes are pycocotools RLE counts
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.decode("ascii")
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files (``.<name>.<pid>….tmp``) in ``folder`` whose writing process is gone:
    what a kill in the middle of an atomic write leaves behind. Returns the removed paths."""
    removed = []
    for tmp in sorted(Path(folder).glob(".*.*.tmp")):
        pid = next((int(part) for part in tmp.name.split(".") if part.isdigit()), None)
        if pid is not None and pid != os.getpid() and _process_alive(pid):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextmanager
def _atomic_open(path: Path) -> Iterator[TextIO]:
    """Text file handle whose content replaces ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # os.open with mode 0o666 lets the umask decide permissions, unlike mkstemp's 0o600
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as compact JSON to ``path`` atomically; returns the path.

    Writes a temp file in the same directory and renames it over ``path``, so readers never see
    a partial file; on any error the temp file is removed and an existing ``path`` is untouched.
    numpy scalars/arrays and ``bytes`` (RLE counts) are converted; NaN/inf are rejected.
    Parent directories are created.
    """
    path = Path(path)
    with _atomic_open(path) as f:
        json.dump(obj, f, separators=(",", ":"), allow_nan=False, default=_json_default)
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (as ``write_json_atomic``); returns the path."""
    path = Path(path)
    with _atomic_open(path) as f:
        f.write(text)
    return path


def save_coco(dataset: dict, path: str | Path) -> Path:
    """Validate a COCO instances dict (as ``load_coco`` does) and write it atomically."""
    validate_coco(dataset, os.fspath(path))
    return write_json_atomic(dataset, path)
