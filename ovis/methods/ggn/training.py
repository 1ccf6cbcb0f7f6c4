"""The teacher and student stages: the PA network, then every detector of the run, each trained with the
engine through ``ovis.methods.train.run_training``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ovis.config import Recipe
from ovis.engine.train import FINAL, METRICS
from ovis.methods.ggn.models import detectors
from ovis.methods.train import run_training
from ovis.runs import RunLayout


def run_teacher(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Train the PA network into ``<run_dir>/teacher/`` (local, torchrun or Slurm; resumes from last.pth).

    Skipped when the stage already finished for this recipe (unless ``force``, which trains from scratch).
    Returns ``{"stage", "final", "iteration", "skipped", "seconds"}``.
    """
    return run_training(recipe, "teacher", run_dir, force, stream, launcher=launcher, nproc=nproc, nodes=nodes,
                        partition=partition)["teacher"]


def run_student(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Train the base-only ``baseline``, the ``student`` (base + pseudo GT) and, for a Mask R-CNN
    student, its OLN variants (``model.heads: oln``): ``oln`` on base + pseudo GT and ``oln_baseline``
    on base GT only, all with ``recipe.student``.

    Each resumes from its own last.pth if interrupted. Returns ``{"baseline": {...}, "student": {...}
    [, "oln": {...}, "oln_baseline": {...}]}``.
    """
    pseudo_gt = RunLayout(run_dir).pseudo_gt  # baseline trains first: fail before it, not after
    if not pseudo_gt.is_file():
        raise FileNotFoundError(f"{pseudo_gt} not found; run the pseudo stage first")
    stages = detectors(recipe)
    outputs = [FINAL, METRICS] + [f"../{st}/{FINAL}" for st in stages if st != "student"]
    return run_training(recipe, "student", run_dir, force, stream, stages=stages, outputs=outputs,
                        launcher=launcher, nproc=nproc, nodes=nodes, partition=partition)
