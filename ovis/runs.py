"""Run directories: ``runs/<recipe>/<stage>/`` and the marker that says a stage finished for a recipe hash."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ovis.config import Recipe
from ovis.data.coco import write_json_atomic

STAGES = ("splits", "teacher", "pseudo", "student", "eval", "curves")
MARKER = "stage.json"


def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / recipe.name


def stage_dir(run_dir: str | Path, stage: str) -> Path:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return Path(run_dir) / stage


def stage_done(run_dir: str | Path, stage: str, recipe: Recipe) -> bool:
    """True when ``stage`` finished for this exact resolved recipe and its outputs still exist."""
    marker = stage_dir(run_dir, stage) / MARKER
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    outputs = [stage_dir(run_dir, stage) / o for o in info.get("outputs", [])]
    return info.get("recipe_hash") == recipe.hash() and all(p.exists() for p in outputs)


def mark_stage_done(run_dir: str | Path, stage: str, recipe: Recipe, outputs: list[str], **extra: Any) -> Path:
    """Record that ``stage`` wrote ``outputs`` (paths relative to the stage folder) for this recipe."""
    info = {"stage": stage, "recipe": recipe.name, "recipe_hash": recipe.hash(), "outputs": outputs,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
    return write_json_atomic(info, stage_dir(run_dir, stage) / MARKER)
