"""``ovis train``: one training stage of a recipe, with the task its method declares.

The method layer's side of :mod:`ovis.engine.train`: the registry (:mod:`ovis.methods`) resolves a
recipe's stage into a task builder, the recipe sections its checkpoint hashes and its ``TrainConfig``
section, which the engine receives. The methods' notebook stages train through :func:`run_training`
(one pipeline stage: its training stages, skipped when done, then its marker; on CPU in up to
``launch.workers`` processes at once, :func:`train_in_workers`) and :func:`train_stage`; torchrun workers
run this module's :func:`main`, so they resolve a stage as their launcher did.

Command line (also ``ovis train``)::

    python -m ovis.methods.train --recipe demo_cpl --stage teacher --run-dir runs/demo_cpl
    torchrun --nproc-per-node 8 -m ovis.methods.train --recipe cpl_coco --stage teacher --run-dir runs/cpl
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from ovis.config import Recipe
from ovis.engine import launch as engine_launch
from ovis.engine import train as engine
from ovis.engine.dist import resolve_device
from ovis.engine.workers import explain_broken_pool, single_threaded_children
from ovis.locks import folder_lock
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
    The training stages train one after another, or in :func:`training_workers` processes at once.
    Returns ``{training stage: {"stage", "final", "iteration", "skipped", "seconds"}}``."""
    run_dir = Path(run_dir)
    names = list(stages) if stages is not None else training_stages(stage, recipe.method)
    single = names == [stage]

    def train(afresh: bool) -> dict[str, dict]:
        if (workers := training_workers(recipe, len(names), launch_kw)) > 1:
            return train_in_workers(recipe, stage, names, run_dir, afresh, stream, workers, **launch_kw)
        return {name: train_stage(recipe, name, run_dir, afresh, stream, **launch_kw) for name in names}

    def read(record: dict[str, Any]) -> dict[str, dict]:
        recorded = {stage: record[key]} if single else record[key]
        return {k: {**v, "skipped": True} for k, v in recorded.items()}

    return execute(recipe, stage, run_dir, train, outputs=outputs, read=read, force=force,
                   record=lambda results: {key: results[stage] if single else results})


def training_workers(recipe: Recipe, n_stages: int, launch_kw: dict[str, Any]) -> int:
    """How many processes train ``n_stages`` independent training stages: ``launch.workers``, at most one per
    stage, with the local launcher (of ``recipe`` unless ``launch_kw`` names one) on CPU; else 1."""
    workers = min(recipe.launch.workers, n_stages)
    if workers == 1 or (launch_kw.get("launcher") or recipe.launch.launcher) != "local":
        return 1  # the device is not resolved then: a Slurm job's GPUs are not on the machine that submits it
    return workers if resolve_device(launch_kw.get("device") or recipe.launch.device).type == "cpu" else 1


def train_in_workers(recipe: Recipe, stage: str, names: Sequence[str], run_dir: Path, force: bool,
                     stream: Callable[[str], None], workers: int, **launch_kw: Any) -> dict[str, dict]:
    """:func:`train_stage` for each of ``names`` in ``workers`` spawned processes with one BLAS/OpenMP/torch
    thread each (the checkpoints equal a one-thread run's in this process), without progress bars; their
    log lines reach ``stream`` prefixed with the training stage's name. Every stage runs to its end before
    the first failure (in ``names`` order) is raised, naming its stage: the others keep their checkpoints.
    Returns ``{name: result}`` in ``names`` order."""
    stream(f"{stage}: training {', '.join(names)} in {workers} worker processes (launch.workers)")
    ctx = mp.get_context("spawn")
    # this process holds the run folder while the workers train: their run_stage's lock joins it, as
    # descendants do ($OVIS_HELD_LOCKS), where two siblings would each find the other in the way
    with (folder_lock(run_dir), ctx.Manager() as manager, single_threaded_children(),
          ProcessPoolExecutor(workers, mp_context=ctx) as pool,
          explain_broken_pool(f"{stage}: a training worker process died", "lower launch.workers")):
        lines = manager.Queue()
        futures = {name: pool.submit(_train_in_worker, recipe, name, run_dir, force, lines, launch_kw) for name in names}
        try:
            while True:
                finished = all(f.done() for f in futures.values())  # before the read: then no line can come after it
                try:
                    stream(lines.get(timeout=0.2))
                except queue.Empty:
                    if finished:
                        break
        except BaseException:  # an interrupt: the stages not started yet do not start
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        failed = [e for f in futures.values() if (e := f.exception()) is not None]
        if failed:
            for other in failed[1:]:
                failed[0].add_note(str(other))
            raise failed[0]
        return {name: f.result() for name, f in futures.items()}


class _LineHandler(logging.Handler):
    """Log records as lines to a callable."""

    def __init__(self, stream: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        self.stream(self.format(record))


def _train_in_worker(recipe: Recipe, name: str, run_dir: Path, force: bool, lines: Any,
                     launch_kw: dict[str, Any]) -> dict:
    """:func:`train_stage` of ``name`` in a worker of :func:`train_in_workers`: its stream and ovis's log
    lines go to the ``lines`` queue prefixed with ``name``; a failure comes back as a ``LaunchError`` naming
    it (whatever the original exception needs to be rebuilt in another process)."""

    def put(line: str) -> None:
        lines.put(line if line.startswith(f"{name}:") else f"{name}: {line}")

    log = logging.getLogger("ovis")
    handler = _LineHandler(put)
    log.addHandler(handler)  # instead of the engine's stderr handler, which no one reads here
    log.setLevel(logging.INFO)
    try:
        return train_stage(recipe, name, run_dir, force, put, progress=False, **launch_kw)
    except Exception as e:
        raise engine_launch.LaunchError(f"training stage {name!r} failed in a launch.workers process: "
                                        f"{type(e).__name__}: {e}") from e
    finally:
        log.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    return engine.main(argv, resolve=stage_spec, stages=list(all_training_stages()), prog="ovis train")


if __name__ == "__main__":
    # run inside the importable module, not __main__ (as the launcher's workers expect)
    from ovis.methods.train import main as _main

    sys.exit(_main())
