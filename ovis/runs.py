"""Run directories: ``runs/<recipe>/<stage>/``, the paths in them that several modules read
(:class:`RunLayout`), and the marker that says a stage finished for a recipe.

A stage counts as finished when its marker holds the hash of the recipe sections the stage depends on
and its outputs still exist.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ovis.config import Recipe
from ovis.io import write_json_atomic

STAGES = ("splits", "teacher", "pseudo", "student", "eval", "curves")
MARKER = "stage.json"
FINAL = "model_final.pth"  # a training folder's final checkpoint, as the engine names it (ovis.engine.train.FINAL)
DETECTIONS = "detections.json"
TRAINING_LOG = "metrics.jsonl"  # a training folder's log, as the engine names it (ovis.engine.train.METRICS)
EVAL_METRICS = "metrics.json"  # an evaluation result (ovis.eval.report.write_metrics)

# The recipe sections each stage's outputs depend on (its own and every earlier stage's), so that
# changing, say, eval.max_images re-runs evaluation but does not retrain the teacher. The launch
# section is left out: where a run trains does not change what it computes.
_OWN_SECTIONS = {
    "splits": ("method", "data", "splits"),
    "teacher": ("model", "grounding", "teacher"),
    "pseudo": ("pseudo",),
    "student": ("student",),
    "eval": ("eval",),
    "curves": ("name", "description"),
}
def stage_sections(stage: str, own: Sequence[str] | None = None) -> tuple[str, ...]:
    """The recipe sections pipeline stage ``stage`` depends on, in stage order: every earlier stage's,
    then its own, or ``own`` for a training stage of ``stage`` that reads fewer of them (a method
    registry declares its training stages this way)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    earlier = tuple(s for st in STAGES[: STAGES.index(stage)] for s in _OWN_SECTIONS[st])
    return earlier + (tuple(own) if own is not None else _OWN_SECTIONS[stage])


def stage_hash(recipe: Recipe, stage: str) -> str:
    """Hash of the part of the recipe that pipeline stage ``stage`` depends on."""
    return recipe.hash(stage_sections(stage))


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


class RunLayout:
    """The paths under a run folder ``runs/<recipe>/`` that more than one module builds or reads."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, stage: str) -> Path:
        """Pipeline stage ``stage``'s folder (``ovis.runs.STAGES``)."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return self.root / stage

    def folder(self, name: str) -> Path:
        """The folder of pipeline stage or training stage ``name`` (``grounding``, ``baseline`` ...)."""
        return self.root / name

    def marker(self, stage: str) -> Path:
        """The record that pipeline stage ``stage`` finished (``<stage>/stage.json``)."""
        return self.stage(stage) / MARKER

    def record(self, stage: str) -> dict[str, Any]:
        """The record of finished stage ``stage``: what :func:`mark_stage_done` wrote, with the stage's own
        keys (its results); FileNotFoundError when it has not finished."""
        path = self.marker(stage)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; run the {stage} stage first")
        return json.loads(path.read_text())

    def checkpoint(self, folder: str) -> Path:
        """The final checkpoint of training folder ``folder`` (a training stage, e.g. ``grounding``)."""
        return self.folder(folder) / FINAL

    def split(self, name: str) -> Path:
        """File ``name`` of the splits stage (``train_base.json``, ``val.json``, ``partition.json`` ...)."""
        return self.stage("splits") / name

    @property
    def pseudo_gt(self) -> Path:
        """The pseudo stage's training file, base GT + pseudo annotations (``pseudo/train_pseudo.json``)."""
        return self.stage("pseudo") / "train_pseudo.json"

    @property
    def pseudo_stats(self) -> Path:
        """The pseudo stage's statistics (``pseudo/stats.json``)."""
        return self.stage("pseudo") / "stats.json"

    def detections(self, *parts: str) -> Path:
        """``eval/<parts...>/detections.json``: one model's (and setting's) detections, or without
        ``parts`` the run's headline detections (the student's)."""
        return self.stage("eval").joinpath(*parts, DETECTIONS)

    def training_log(self, folder: str) -> Path:
        """The training log of training folder ``folder`` (``<folder>/metrics.jsonl``)."""
        return self.folder(folder) / TRAINING_LOG

    def training_logs(self) -> dict[str, Path]:
        """{training folder: its log} of every folder of the run that has one, by folder name."""
        return {p.parent.name: p for p in sorted(self.root.glob(f"*/{TRAINING_LOG}"))}

    def eval_results(self) -> list[Path]:
        """Every evaluation result under ``eval/`` (``eval/**/metrics.json``: per model and setting, and the
        run's own), sorted."""
        return sorted(self.stage("eval").glob(f"**/{EVAL_METRICS}"))

    @property
    def report(self) -> Path:
        """The curves stage's report (``curves/report.md``)."""
        return self.stage("curves") / "report.md"

    @property
    def notebooks(self) -> Path:
        """The folder of the executed stage notebooks (``notebooks/``)."""
        return self.root / "notebooks"


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    return RunLayout(run_dir).stage(stage)


def file_signature(run_dir: str | Path, paths: Sequence[str | Path]) -> list[list]:
    """``[path relative to run_dir, size, mtime_ns]`` of each of ``paths`` (size and mtime ``None``
    for a missing file, so that its later appearance also counts as a change)."""
    run = Path(run_dir)
    out = []
    for rel in sorted({Path(p).as_posix() for p in paths}):
        p = run / rel
        out.append([rel, p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else [rel, None, None])
    return out


def _marker(run_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """The stage's marker, or None when it has not finished."""
    layout = RunLayout(run_dir)
    return layout.record(stage) if layout.marker(stage).is_file() else None


def _inputs_unchanged(run_dir: str | Path, info: dict[str, Any]) -> bool:
    inputs = info.get("inputs", [])
    return file_signature(run_dir, [i[0] for i in inputs]) == inputs


def stage_done(run_dir: str | Path, stage: str, recipe: Recipe) -> bool:
    """True when ``stage`` finished for this recipe's sections, its outputs still exist and the input
    files it recorded (if any) are unchanged (e.g. training logs that a resumed run extended)."""
    info = _marker(run_dir, stage)
    return (info is not None and info.get("recipe_hash") == stage_hash(recipe, stage)
            and all((stage_dir(run_dir, stage) / o).exists() for o in info.get("outputs", []))
            and _inputs_unchanged(run_dir, info))


def _upstream_outputs(run_dir: str | Path, stage: str) -> list[str]:
    """The outputs (relative to the run dir) that the earlier stages' markers record."""
    return [f"{earlier}/{o}" for earlier in STAGES[: STAGES.index(stage)]
            for o in (_marker(run_dir, earlier) or {}).get("outputs", [])]


def inputs_changed(run_dir: str | Path, stage: str, recipe: Recipe) -> bool:
    """True when ``stage`` finished for this recipe but a file it read has changed since (an earlier
    stage ran again, a source file was edited): its outputs must be made afresh, not resumed."""
    info = _marker(run_dir, stage)
    return (info is not None and info.get("recipe_hash") == stage_hash(recipe, stage)
            and not _inputs_unchanged(run_dir, info))


def mark_stage_done(run_dir: str | Path, stage: str, recipe: Recipe, outputs: list[str],
                    inputs: Sequence[str | Path] = (), **extra: Any) -> Path:
    """Record that ``stage`` wrote ``outputs`` (relative to the stage folder) for this recipe, having
    read ``inputs`` (relative to the run dir) and every earlier stage's outputs; the size and mtime of
    each input are recorded, so that the stage runs again when one changes."""
    inputs = [*inputs, *_upstream_outputs(run_dir, stage)]
    info = {"stage": stage, "recipe": recipe.name, "recipe_hash": stage_hash(recipe, stage), "outputs": outputs,
            "inputs": file_signature(run_dir, inputs), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    return write_json_atomic(info, RunLayout(run_dir).marker(stage))


def link_stages(run_dir: str | Path, new_run_dir: str | Path, folders: Sequence[str]) -> Path:
    """``new_run_dir`` with the finished ``folders`` of ``run_dir`` linked in (a pipeline stage needs its
    marker, a training folder such as ``grounding`` its ``model_final.pth``), so that later stages can be
    trained there again (other seeds, other settings) without touching the run. Returns ``new_run_dir``."""
    new = Path(new_run_dir)
    new.mkdir(parents=True, exist_ok=True)
    for name in folders:
        src = (Path(run_dir) / name).resolve()
        done = src / (MARKER if name in STAGES else FINAL)
        if not done.is_file():
            raise FileNotFoundError(f"{done} not found: the {name} stage of {run_dir} is not done")
        link = new / name
        if not link.exists():
            link.symlink_to(src, target_is_directory=True)
    return new

