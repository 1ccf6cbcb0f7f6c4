"""Files, written atomically and read with errors that name them: the bottom layer every writer imports.

Every file a stage writes goes through :func:`atomic_path` (or the JSON / text writers built on it):
the content lands in a temp file in the target's folder (``.<name>.<pid>.<hex>.tmp``), is fsynced and
renamed over the target, so readers — and a run resumed after a kill — see the old file or the new
one, never a part of one. :func:`remove_stale_temps` deletes what a killed writer left behind.
No torch and no numpy beyond type conversion: ``ovis eval`` starts without torch.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "JSONFileError",
    "atomic_path",
    "copy_atomic",
    "read_json",
    "remove_stale_temps",
    "write_json_atomic",
    "write_text_atomic",
]


class JSONFileError(ValueError):
    """A JSON file is unreadable or malformed; the one-line message names the file."""


# --------------------------------------------------------------------------------------------
# reading


def read_json(path: str | Path, error: type[ValueError] = JSONFileError) -> Any:
    """Parse a JSON file; unreadable, truncated or non-UTF-8 files, and NaN / Infinity literals, raise
    ``error`` (e.g. ``CocoFormatError``) with a message naming the file (and the place of a bad number)."""
    name = os.fspath(path)
    bad: list[_NonFinite] = []

    def non_finite(literal: str) -> _NonFinite:  # Python's json accepts NaN and Infinity; JSON does not
        bad.append(_NonFinite(literal))
        return bad[-1]

    try:
        with open(path, "rb") as f:
            data = json.load(f, parse_constant=non_finite)
    except OSError as e:
        raise error(f"{name}: cannot read file: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise error(
            f"{name}: not valid JSON (truncated or corrupt?): {e.msg} at line {e.lineno} "
            f"column {e.colno}; re-download or re-create the file"
        ) from e
    except UnicodeDecodeError as e:
        raise error(f"{name}: not a UTF-8 JSON file ({e.reason})") from e
    if bad:
        raise error(f"{name}: {_locate(data, bad[0])} is {bad[0].literal}; JSON numbers must be finite")
    return data


class _NonFinite:
    """Stands in for a NaN / Infinity literal while a file is parsed, so its place can be named."""

    def __init__(self, literal: str) -> None:
        self.literal = literal


# entries of a COCO file's top-level lists are named by their id, as the COCO validators name them
_ENTRY = {"images": "image", "annotations": "annotation", "categories": "category"}


def _locate(obj: Any, target: object, path: str = "") -> str:
    """Where ``target`` sits in ``obj``, named as the validators name it: ``annotation 7: field 'bbox'[0]``,
    ``image at index 3: field 'id'``, ``top level[5]: field 'score'``."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        if isinstance(key, str):
            here = f"{path}: field {key!r}" if path else key
        elif path in _ENTRY and isinstance(value, dict) and type(value.get("id")) is int:
            here = f"{_ENTRY[path]} {value['id']}"
        elif path in _ENTRY:
            here = f"{_ENTRY[path]} at index {key}"
        else:
            here = f"{path or 'top level'}[{key}]"
        if value is target:
            return here
        found = _locate(value, target, here) if isinstance(value, (dict, list)) else ""
        if found:
            return found
    return ""


# --------------------------------------------------------------------------------------------
# writing


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path, *, unique: bool = True, sync_dir: bool = False,
                before_rename: Callable[[], None] | None = None) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; when the block succeeds the temp file is fsynced and
    renamed over ``path``, when it fails the temp file is removed and an existing ``path`` is untouched.

    The temp file is ``.<name>.<pid>.<hex>.tmp``; ``unique=False`` drops ``<hex>`` (a file that one
    thread per process writes, such as a checkpoint). ``sync_dir`` also fsyncs the folder after the
    rename (the rename itself survives a power cut); ``before_rename`` runs just before the rename
    (waiting for a file that must be complete first). Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".{secrets.token_hex(4)}" if unique else ""
    tmp = path.with_name(f".{path.name}.{os.getpid()}{suffix}.tmp")
    try:
        yield tmp
        _fsync(tmp)
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        _fsync(path.parent)


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays come out of every computation; bytes are pycocotools RLE counts
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, bytes):
        return obj.decode("ascii")
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def write_json_atomic(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as compact JSON to ``path`` atomically (:func:`atomic_path`); returns the path.

    numpy scalars/arrays and ``bytes`` (RLE counts) are converted; NaN/inf are rejected.
    Parent directories are created.
    """
    path = Path(path)
    with atomic_path(path) as tmp, _create(tmp) as f:
        # one string, then one write: json.dump's chunked writes took 5x as long on a detections file
        f.write(json.dumps(obj, separators=(",", ":"), allow_nan=False, default=_json_default))
    return path


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically (as :func:`write_json_atomic`); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp, _create(tmp) as f:
        f.write(text)
    return path


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy the file ``src`` to ``dst`` atomically (:func:`atomic_path`); returns ``dst``."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def _create(tmp: Path) -> IO[str]:
    # os.open with mode 0o666 lets the umask decide permissions, unlike mkstemp's 0o600
    return os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8")


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
