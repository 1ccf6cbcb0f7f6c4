"""The teacher and student stages: the PA network, then every detector of the run, each trained with the
engine through ``ovis.methods.train.train_stage``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ovis.config import Recipe
from ovis.engine.train import FINAL, METRICS
from ovis.methods.ggn.models import detectors
from ovis.runs import RunLayout, inputs_changed, mark_stage_done, stage_done


def run_teacher(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Train the PA network into ``<run_dir>/teacher/`` (local, torchrun or Slurm; resumes from last.pth).

    Skipped when the stage already finished for this recipe (unless ``force``, which trains from scratch).
    Returns ``{"stage", "final", "iteration", "skipped", "seconds"}``.
    """
    from ovis.methods.train import train_stage

    run_dir = Path(run_dir)
    force = force or inputs_changed(run_dir, "teacher", recipe)  # redo, do not resume
    if not force and stage_done(run_dir, "teacher", recipe):
        return {**RunLayout(run_dir).record("teacher").get("result", {}), "skipped": True}
    result = train_stage(recipe, "teacher", run_dir, force, stream, launcher=launcher, nproc=nproc, nodes=nodes,
                         partition=partition)
    mark_stage_done(run_dir, "teacher", recipe, [FINAL, METRICS], result=result)
    return result


def run_student(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Train the base-only ``baseline``, the ``student`` (base + pseudo GT) and, for a Mask R-CNN
    student, its OLN variants (``model.heads: oln``): ``oln`` on base + pseudo GT and ``oln_baseline``
    on base GT only, all with ``recipe.student``.

    Each resumes from its own last.pth if interrupted. Returns ``{"baseline": {...}, "student": {...}
    [, "oln": {...}, "oln_baseline": {...}]}``.
    """
    from ovis.methods.train import train_stage

    run_dir = Path(run_dir)
    force = force or inputs_changed(run_dir, "student", recipe)  # redo, do not resume
    if not force and stage_done(run_dir, "student", recipe):
        return {k: {**v, "skipped": True} for k, v in RunLayout(run_dir).record("student").get("result", {}).items()}
    if not RunLayout(run_dir).pseudo_gt.is_file():
        raise FileNotFoundError(f"{RunLayout(run_dir).pseudo_gt} not found; run the pseudo stage first")
    stages = detectors(recipe)
    result = {stage: train_stage(recipe, stage, run_dir, force, stream, launcher=launcher, nproc=nproc, nodes=nodes,
                                 partition=partition) for stage in stages}
    outputs = [FINAL, METRICS] + [f"../{st}/{FINAL}" for st in stages if st != "student"]
    mark_stage_done(run_dir, "student", recipe, outputs, result=result)
    return result
