"""Sharded, resumable per-image work of a pseudo stage (CPL's caption labels, GGN's candidate masks) and its merge.

Shard ``s`` of ``n`` owns every ``n``-th image of the stage's image list, starting at ``s``. While it runs it
appends one JSON line per finished image (a record with its ``image_id``) to its progress file
``<folder>/<name>.<s>-of-<n>.partial.jsonl``, after a header line ``{"key", "shard", "num_shards",
"image_ids"}``; a rerun under the same key and images resumes after the last intact line (a line torn by a
crash is dropped). A finished shard is ``<name>.<s>-of-<n>.json``: the header's fields and ``records`` in
image order, written atomically, the progress file removed. ``key`` is what the records depend on (a recipe
hash, the teacher's digest ...): a file written under another key or image list counts as not there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from ovis.config import Recipe
from ovis.io import write_json_atomic, write_text_atomic
from ovis.runs import RunLayout
from ovis.stages import Pending, execute

__all__ = ["Shard", "Sharding", "pseudo_stage", "resolve_shards"]

T = TypeVar("T")


def pseudo_stage(recipe: Recipe, run_dir: str | Path, run: Callable[[bool], dict | Pending[T]], *, force: bool,
                 record: Callable[[dict], dict[str, Any]], inputs: Iterable[str | Path] = ()) -> dict | T:
    """A method's pseudo stage through :func:`ovis.stages.execute`: ``run(afresh)`` labels this process's
    shards and merges once all are done, writing ``pseudo/train_pseudo.json`` and ``pseudo/stats.json``
    (returning the stats, or ``Pending`` while shards are missing); a finished stage returns its stats read
    back from ``stats.json``. ``inputs``: files outside the run that it reads (it runs afresh when one changes)."""
    layout = RunLayout(run_dir)
    return execute(recipe, "pseudo", run_dir, run, force=force, outputs=[layout.pseudo_gt.name, layout.pseudo_stats.name],
                   read=lambda _: json.loads(layout.pseudo_stats.read_text()), record=record, inputs=list(inputs))


def resolve_shards(shard: int | None, num_shards: int | None, default_shards: int = 1) -> list[tuple[int, int]]:
    """The ``(shard, num_shards)`` pairs this process works on.

    Explicit arguments first; else torch.distributed's rank and world size; else torchrun's RANK/WORLD_SIZE;
    else a Slurm array's SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT (minus SLURM_ARRAY_TASK_MIN); else every
    shard of ``default_shards`` in turn.
    """
    if (shard is None) != (num_shards is None):
        raise ValueError(f"pass both shard and num_shards or neither (got shard={shard}, num_shards={num_shards})")
    env = os.environ
    if shard is None or num_shards is None:  # both None (checked above)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            shard, num_shards = torch.distributed.get_rank(), torch.distributed.get_world_size()
        elif int(env.get("WORLD_SIZE", "1")) > 1 and "RANK" in env:
            shard, num_shards = int(env["RANK"]), int(env["WORLD_SIZE"])
        elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            shard = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            num_shards = int(env["SLURM_ARRAY_TASK_COUNT"])
        else:
            if default_shards < 1:
                raise ValueError(f"pseudo.shards={default_shards} must be ≥ 1")
            return [(s, default_shards) for s in range(default_shards)]
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards}: need 0 ≤ shard < num_shards")
    return [(shard, num_shards)]


@dataclass(frozen=True)
class Sharding:
    """A stage's ``image_ids`` split into ``num_shards`` shards whose files are ``<folder>/<name>.<s>-of-<n>.*``."""

    folder: Path
    name: str
    num_shards: int
    key: str
    image_ids: list[int]

    def shard(self, index: int) -> Shard:
        return Shard(self, index)

    def unfinished(self) -> list[int]:
        """The shards whose finished file is missing or was written under another key or image list."""
        return [s for s in range(self.num_shards) if self.shard(s).finished() is None]

    def records(self) -> dict[int, dict] | None:
        """Every shard's records by image id, or None while a shard is unfinished."""
        out: dict[int, dict] = {}
        for s in range(self.num_shards):
            records = self.shard(s).finished()
            if records is None:
                return None
            out.update((r["image_id"], r) for r in records)
        return out


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of a :class:`Sharding`: its images, its progress file and its finished file."""

    sharding: Sharding
    index: int

    @property
    def image_ids(self) -> list[int]:
        return self.sharding.image_ids[self.index :: self.sharding.num_shards]

    def _file(self, suffix: str) -> Path:
        s = self.sharding
        return s.folder / f"{s.name}.{self.index}-of-{s.num_shards}.{suffix}"

    @property
    def path(self) -> Path:
        """The finished shard file."""
        return self._file("json")

    @property
    def progress_path(self) -> Path:
        return self._file("partial.jsonl")

    def _header(self) -> dict[str, Any]:
        s = self.sharding
        return {"key": s.key, "shard": self.index, "num_shards": s.num_shards, "image_ids": self.image_ids}

    def _matches(self, header: dict[str, Any]) -> bool:
        return header.get("key") == self.sharding.key and header.get("image_ids") == self.image_ids

    def finished(self) -> list[dict] | None:
        """The records of the finished file, or None when there is none for this key and these images."""
        if not self.path.is_file():
            return None
        data = json.loads(self.path.read_text(encoding="utf-8"))
        return data["records"] if self._matches(data) else None

    def read_progress(self, stream: Callable[[str], None] | None = None) -> dict[int, dict]:
        """The records of the progress file by image id (none when it was written under another key or image
        list, which ``stream`` is told); reads, does not write."""
        if not self.progress_path.is_file():
            return {}
        lines = self.progress_path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            return {}
        if not self._matches(header):
            if stream is not None:
                stream(f"{self.progress_path} was written for another key or image list: starting over")
            return {}
        done = {}
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # cut short by a crash: everything before it is intact
            done[rec["image_id"]] = rec
        return done

    def begin(self, done: dict[int, dict]) -> None:
        """Rewrite the progress file as the header and the intact records ``done``, so that appends never
        follow a torn line."""
        lines = [json.dumps(self._header()) + "\n"] + [json.dumps(r) + "\n" for r in done.values()]
        write_text_atomic("".join(lines), self.progress_path)

    def append(self, records: Iterable[dict]) -> None:
        """Append finished images' records to the progress file, on disk when this returns."""
        with open(self.progress_path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())

    def finish(self, done: dict[int, dict]) -> Path:
        """Write the finished file (``done`` holds a record of every image of the shard) and remove the
        progress file; returns the finished file."""
        write_json_atomic({**self._header(), "records": [done[i] for i in self.image_ids]}, self.path)
        self.progress_path.unlink(missing_ok=True)
        return self.path

    def discard(self) -> None:
        """Remove the shard's files: it starts over."""
        self.path.unlink(missing_ok=True)
        self.progress_path.unlink(missing_ok=True)
