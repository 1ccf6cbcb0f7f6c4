"""One pipeline stage's lifecycle: :func:`execute` decides whether the stage runs, runs it and
records that it finished. Every stage goes through it: splits, curves, and each method's ``run_*`` (training,
pseudo, eval).

A stage is done when its ``stage.json`` holds the hash of the recipe sections it depends on, its outputs
exist and the files it read are unchanged (:func:`ovis.runs.stage_done`): ``execute`` then returns what the
stage reads back from that record, without running it. Otherwise the stage runs, afresh (``force``) when asked
or when a file it read has changed since it finished, else resuming from what it keeps (a training stage's
``last.pth``, a pseudo shard's progress file); then it is marked done with its outputs, the files it read
and its record. The stages write their outputs atomically and the marker comes last, so a crash inside a
stage leaves it not done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ovis.config import Recipe
from ovis.runs import RunLayout, inputs_changed, mark_stage_done, stage_done

T = TypeVar("T")


@dataclass(frozen=True)
class Pending(Generic[T]):
    """What a stage's ``run`` returns when it did its share but the stage has not finished (a pseudo shard
    while others still run): :func:`execute` returns ``result`` and marks nothing."""

    result: T


def execute(recipe: Recipe, stage: str, run_dir: str | Path, run: Callable[[bool], T | Pending[T]], *,
            outputs: Sequence[str] | Callable[[T], Sequence[str]], read: Callable[[dict[str, Any]], T],
            record: Callable[[T], dict[str, Any]] | None = None, inputs: Sequence[str | Path] = (),
            force: bool = False) -> T:
    """Pipeline stage ``stage`` of ``recipe`` in ``run_dir``: ``read(its stage.json)`` when it is done, else
    ``run(afresh)``'s result, after which the stage is marked done with ``outputs`` (relative to its folder;
    or ``outputs(result)`` when the result says which files it wrote), the ``inputs`` it read besides the
    earlier stages' outputs (:func:`ovis.runs.mark_stage_done`) and the keys ``record(result)`` gives.
    ``run`` is told to start afresh (not resume) when ``force`` or when a file the stage read has changed
    since it last finished."""
    force = force or inputs_changed(run_dir, stage, recipe)
    if not force and stage_done(run_dir, stage, recipe):
        return read(RunLayout(run_dir).record(stage))
    result = run(force)
    if isinstance(result, Pending):
        return result.result
    written = outputs(result) if callable(outputs) else outputs
    mark_stage_done(run_dir, stage, recipe, list(written), inputs, **(record(result) if record is not None else {}))
    return result
