"""The teacher and student stages: caption grounding and the teacher, then the robust student, each trained
with the engine through ``ovis.methods.train.run_training``; :class:`StudentHook` freezes the σ-head and logs σ/λ."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import cast

from torch import nn

from ovis.config import Recipe
from ovis.io import write_text_atomic
from ovis.methods.train import run_training
from ovis.models.student import RobustStudent


def run_teacher(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Stage 01 (CPL): caption grounding (``<run_dir>/grounding/``) then the teacher
    (``<run_dir>/teacher/``) through :func:`ovis.methods.train.run_training`; marks stage "teacher" done.
    Returns ``{"grounding": {...}, "teacher": {...}}`` (checkpoint, iterations, seconds)."""
    return run_training(recipe, "teacher", run_dir, force, stream, key="results",
                        launcher=launcher, nproc=nproc, nodes=nodes, partition=partition)


class StudentHook:
    """``TrainTask.after_step``: freezes the σ-head once ``iteration ≥ freeze_after`` (idempotent),
    and appends ``{"iteration", "sigma_mean", "lambda_pl"}`` means to ``log_path`` every
    ``log_period`` iterations, each over the steps that reported it (``log_path`` None: no log; only
    the process with ``is_main``)."""

    def __init__(self, freeze_after: int, log_path: str | Path | None = None, log_period: int = 20,
                 is_main: Callable[[], bool] = lambda: True) -> None:
        self.freeze_after, self.log_period, self.is_main = freeze_after, max(1, log_period), is_main
        self.log_path = Path(log_path) if log_path is not None else None
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._started = False

    def __call__(self, iteration: int, model: nn.Module) -> None:
        model = cast(RobustStudent, getattr(model, "module", model))
        if iteration >= self.freeze_after:
            model.roi_heads.mask_predictor.log_var.requires_grad_(False)
        if self.log_path is None or not self.is_main():
            return
        if not self._started:  # a fresh or resumed run: drop lines past the current iteration
            self._started = True
            keep = []
            if self.log_path.is_file():
                for line in self.log_path.read_text().splitlines():
                    try:
                        if json.loads(line)["iteration"] <= iteration:
                            keep.append(line + "\n")
                    except (ValueError, KeyError, TypeError):
                        continue
            write_text_atomic("".join(keep), self.log_path)
        stats = getattr(model, "last_stats", {})
        for k, v in stats.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
            self._counts[k] = self._counts.get(k, 0) + 1
        if iteration % self.log_period == 0 and self._counts:
            row = {"iteration": iteration, **{k: v / self._counts[k] for k, v in self._sums.items()},
                   "sigma_head_frozen": iteration >= self.freeze_after}
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
            self._sums, self._counts = {}, {}


def run_student(recipe: Recipe, run_dir: str | Path, launcher: str | None = None, nproc: int | None = None,
                nodes: int | None = None, partition: str | None = None, stream: Callable[[str], None] = print,
                force: bool = False) -> dict:
    """Stage 03 (CPL): train the robust student into ``<run_dir>/student/``; marks it done."""
    return run_training(recipe, "student", run_dir, force, stream, key="results",
                        launcher=launcher, nproc=nproc, nodes=nodes, partition=partition)["student"]
