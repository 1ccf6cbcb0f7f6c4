"""``ovis train``: one training stage of a recipe, with the task its method declares.

The method layer's side of :mod:`ovis.engine.train`: the registry (:mod:`ovis.methods`) resolves a
recipe's stage into a task builder, the recipe sections its checkpoint hashes and its ``TrainConfig``
section, which the engine receives. The methods' notebook stages train through :func:`run_training`
(one pipeline stage: its training stages, skipped when done, then its marker) and :func:`train_stage`;
torchrun workers run this module's :func:`main`, so they resolve a stage as their launcher did.

Command line (also ``ovis train``)::

    python -m ovis.methods.train --recipe demo_cpl --stage teacher --run-dir runs/demo_cpl
    torchrun --nproc-per-node 8 -m ovis.methods.train --recipe cpl_coco --stage teacher --run-dir runs/cpl
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ovis.config import Recipe
from ovis.engine import launch as engine_launch
from ovis.engine import train as engine
from ovis.methods import all_training_stages, task_builder, training_stage, training_stages
from ovis.stages import execute

ENTRY = "ovis.methods.train"  # the module torchrun workers run (this one; __name__ is __main__ there)


def stage_spec(recipe: Recipe, stage: str, task: engine.TaskBuilder | str | None = None) -> engine.StageSpec:
    """How the engine trains ``stage`` of ``recipe``: ``task`` (a builder or a ``module:function``
    spec) or the builder ``recipe.method`` declares, with the stage's sections and config section."""
    st = training_stage(stage)
    if task is None:
        build = task_builder(recipe.method, stage)
    else:
        build = engine.load_task_builder(task) if isinstance(task, str) else task
    return engine.StageSpec(build, st.sections, st.config)


def run_stage(recipe: Recipe, stage: str, run_dir: str | Path, task: engine.TaskBuilder | str | None = None,
              device: str = "auto", resume: bool = True, progress: bool = True) -> engine.TrainResult:
    """:func:`ovis.engine.train.run_stage` with the task ``recipe.method`` declares for ``stage``
    (or ``task``): trains ``<run_dir>/<stage>/`` in this process."""
    spec = stage_spec(recipe, stage, task)
    return engine.run_stage(recipe, stage, run_dir, spec.build, device=device, resume=resume, progress=progress,
                            sections=spec.sections, config=spec.config)


def train_stage(recipe: Recipe, stage: str, run_dir: str | Path, force: bool = False,
                stream: Callable[[str], None] = print, task: engine.TaskBuilder | str | None = None,
                **launch_kw: Any) -> dict:
    """:func:`ovis.engine.launch.train_stage` (local, torchrun or Slurm, as the recipe's ``launch``
    section and ``launch_kw`` say) with the task ``recipe.method`` declares for ``stage``."""
    spec = stage_spec(recipe, stage, task)
    # a spec string goes on as it is: torchrun workers import a builder loaded from a file by its spec
    return engine_launch.train_stage(recipe, stage, run_dir, force, stream, task=task if isinstance(task, str) else spec.build,
                                     sections=spec.sections, config=spec.config, entry=ENTRY, **launch_kw)


def run_training(recipe: Recipe, stage: str, run_dir: str | Path, force: bool = False,
                 stream: Callable[[str], None] = print, stages: Sequence[str] | None = None,
                 outputs: Sequence[str] = (engine.FINAL, engine.METRICS), key: str = "result",
                 **launch_kw: Any) -> dict[str, dict]:
    """Pipeline stage ``stage`` of a method that trains, through :func:`ovis.stages.execute`: each of
    ``stages`` (by default the training stages ``recipe.method`` declares part of ``stage``) through
    :func:`train_stage`, each resuming from its ``last.pth``; then ``stage`` is marked done with ``outputs``
    (relative to its folder) and the results under ``key`` in its ``stage.json``: the one result when
    ``stage`` trains only its namesake, else ``{training stage: result}``.

    Skipped when the stage is done for this recipe: the results are read back from its record, each with
    ``"skipped": True``; trained from scratch when ``force`` or when a file it read has changed since.
    Returns ``{training stage: {"stage", "final", "iteration", "skipped", "seconds"}}``."""
    run_dir = Path(run_dir)
    names = list(stages) if stages is not None else training_stages(stage, recipe.method)
    single = names == [stage]

    def train(afresh: bool) -> dict[str, dict]:
        return {name: train_stage(recipe, name, run_dir, afresh, stream, **launch_kw) for name in names}

    def read(record: dict[str, Any]) -> dict[str, dict]:
        recorded = {stage: record[key]} if single else record[key]
        return {k: {**v, "skipped": True} for k, v in recorded.items()}

    return execute(recipe, stage, run_dir, train, outputs=outputs, read=read, force=force,
                   record=lambda results: {key: results[stage] if single else results})


def main(argv: list[str] | None = None) -> int:
    return engine.main(argv, resolve=stage_spec, stages=list(all_training_stages()), prog="ovis train")


if __name__ == "__main__":
    # run inside the importable module, not __main__ (as the launcher's workers expect)
    from ovis.methods.train import main as _main

    sys.exit(_main())
