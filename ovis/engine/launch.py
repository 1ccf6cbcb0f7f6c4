"""Run a training stage in-process, under torchrun, or on Slurm (submitit), from a notebook or a script.

* ``local``: :func:`ovis.engine.train.run_stage` in this process (CPU or one GPU; a notebook cell).
* ``torchrun``: ``python -m torch.distributed.run --nproc-per-node N -m ENTRY ...`` as a child process
  whose output (log lines, progress bar updates) is passed line by line to ``stream``; ``ENTRY`` is the
  module whose command line the workers run: :mod:`ovis.engine.train` (which needs ``--task``) unless
  the caller names its own (the method layer's, which resolves the stage as the caller did).
* ``slurm``: a submitit job with one task per GPU; every task runs the same entry, rendezvous via
  ``env://`` (ovis.engine.dist), and a preempted or timed-out job requeues itself and resumes from
  ``last.pth``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import submitit

from ovis.config import Recipe, load_recipe, parse_overrides, recipe_from_dict
from ovis.engine import dist as odist
from ovis.engine.train import (
    FINAL,
    LAST,
    METRICS,
    TaskBuilder,
    TaskError,
    TrainResult,
    load_checkpoint,
    load_task_builder,
    run_stage,
    task_spec,
)
from ovis.locks import folder_lock
from ovis.runs import RunLayout, default_run_dir

LAUNCHERS = ("local", "torchrun", "slurm")
ENGINE_ENTRY = run_stage.__module__  # the engine's own command line (ovis.engine.train)


class LaunchError(RuntimeError):
    """A launched training process failed; the message ends with the tail of its output."""


def _with_overrides(recipe: Recipe, overrides: list[str] | dict[str, Any] | None) -> Recipe:
    def update(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        for k, v in over.items():
            base[k] = update(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    return recipe_from_dict(update(recipe.to_dict(), parse_overrides(overrides))) if overrides else recipe


def _result_from_dir(out_dir: Path) -> TrainResult:
    final = out_dir / FINAL
    if not final.is_file():
        raise LaunchError(f"training finished without writing {final}")
    it = int(load_checkpoint(final, mmap=True).get("iteration", 0))
    return TrainResult(final, out_dir / LAST, out_dir / METRICS, it)


def torchrun_command(recipe_path: Path, stage: str, run_dir: Path, nproc: int, nodes: int = 1,
                     rdzv_endpoint: str | None = None, task: str | None = None, device: str = "auto",
                     resume: bool = True, entry: str = ENGINE_ENTRY) -> list[str]:
    """The torchrun command line for one node (``--standalone`` on a single node); every worker runs
    ``python -m entry`` (a module whose ``main()`` is an :func:`ovis.engine.train.main`)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if nodes == 1:
        cmd.append("--standalone")
    else:
        if not rdzv_endpoint:
            raise ValueError(f"torchrun on {nodes} nodes needs launch.rdzv_endpoint=HOST:PORT (run the same launch on every node)")
        cmd += ["--nnodes", str(nodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint,
                "--rdzv-id", f"ovis-{run_dir.name}-{stage}"]
    cmd += ["-m", entry, "--recipe", str(recipe_path), "--stage", stage, "--run-dir", str(run_dir),
            "--device", device]
    if task:
        cmd += ["--task", task]
    if not resume:
        cmd.append("--no-resume")
    return cmd


def stream_process(cmd: list[str], stream: Callable[[str], None], env: dict[str, str] | None = None,
                   tail_lines: int = 40) -> tuple[int, list[str]]:
    """Run ``cmd``, calling ``stream(line)`` for every line of its merged stdout/stderr as it comes
    (carriage-return progress updates count as lines). Returns (exit code, last lines).

    One reader in the calling thread, so ``stream`` is never called concurrently; an interrupt
    (KeyboardInterrupt in a notebook) terminates the child before propagating.
    """
    tail: deque[str] = deque(maxlen=tail_lines)
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}  # lines arrive as printed
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, bufsize=0)
    stdout = cast(IO[bytes], proc.stdout)  # a pipe: stdout=PIPE
    pending = b""
    try:
        while chunk := os.read(stdout.fileno(), 65536):
            *lines, pending = re.split(rb"[\r\n]", pending + chunk)
            for raw in lines:
                if line := raw.decode("utf-8", "replace").rstrip():
                    tail.append(line)
                    stream(line)
        if line := pending.decode("utf-8", "replace").rstrip():
            tail.append(line)
            stream(line)
        return proc.wait(), list(tail)
    except BaseException:
        proc.terminate()  # torchrun forwards SIGTERM to its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    finally:
        stdout.close()


class StageJob(submitit.helpers.Checkpointable):
    """The callable a Slurm task runs: one stage of a recipe. On preemption or timeout submitit
    calls ``checkpoint()``, which (inherited) resubmits this same callable; the requeued job
    resumes from ``last.pth``."""

    def __init__(self, recipe: dict[str, Any], stage: str, run_dir: str, task: TaskBuilder | str, device: str,
                 sections: tuple[str, ...] | None = None, config: str | None = None):
        self.recipe, self.stage, self.run_dir, self.task, self.device = recipe, stage, run_dir, task, device
        self.sections, self.config = sections, config

    def __call__(self) -> TrainResult:
        try:
            build = load_task_builder(self.task) if isinstance(self.task, str) else self.task
            return run_stage(recipe_from_dict(self.recipe), self.stage, self.run_dir, build, device=self.device,
                             progress=False, sections=self.sections, config=self.config)
        finally:
            odist.destroy_distributed()


def slurm_parameters(recipe: Recipe, stage: str, nproc: int, nodes: int, partition: str | None) -> dict[str, Any]:
    """submitit ``update_parameters`` keywords: one task per GPU on each node."""
    params: dict[str, Any] = {
        "name": f"ovis-{recipe.name}-{stage}",
        "nodes": nodes,
        "tasks_per_node": nproc,
        "gpus_per_node": nproc,
        "cpus_per_task": recipe.launch.cpus_per_task,
        "timeout_min": recipe.launch.timeout_min,
        "slurm_signal_delay_s": 120,  # time to finish the step in flight before the requeue
    }
    if recipe.launch.mem_gb is not None:
        params["mem_gb"] = recipe.launch.mem_gb
    if partition:
        params["slurm_partition"] = partition
    return params


def launch(recipe: str | Path | Recipe, stage: str, run_dir: str | Path | None = None, launcher: str | None = None,
           nproc: int | None = None, nodes: int | None = None, partition: str | None = None,
           task: TaskBuilder | str | None = None, overrides: list[str] | dict[str, Any] | None = None,
           stream: Callable[[str], None] = print, device: str | None = None, resume: bool = True,
           cluster: str = "slurm", sections: tuple[str, ...] | None = None, config: str | None = None,
           entry: str | None = None, progress: bool = True) -> TrainResult | submitit.Job:
    """Train ``stage`` of ``recipe`` into ``<run_dir>/<stage>/`` (default run dir ``runs/<recipe name>``).

    ``task`` is the task builder or its ``module:function`` spec; ``sections`` and ``config`` as in
    :class:`ovis.engine.train.StageSpec`. ``entry`` is the module the torchrun workers run (default
    the engine's command line, which hashes the stage by its name and cannot take ``sections`` or
    ``config``); the method layer passes its own, which resolves them the same way. ``progress``: the
    ``local`` launcher's progress bar on stderr (its log lines come all the same).
    Unset arguments come from the recipe's ``launch`` section. Returns the :class:`TrainResult`
    for ``local`` and ``torchrun`` (raising :class:`LaunchError` with the output's tail when the
    child fails), and the submitted ``submitit.Job`` for ``slurm`` (``job.result()`` waits for the
    TrainResult). ``cluster="debug"`` runs the Slurm callable in-process (submitit DebugExecutor).
    """
    rec = _with_overrides(recipe, overrides) if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    cfg = rec.launch
    launcher = launcher or cfg.launcher
    nodes = nodes or cfg.nodes
    device = device or cfg.device
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(rec)
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: expected one of {list(LAUNCHERS)}")
    if task is None:
        raise TaskError(f"launch: no task builder for stage {stage!r}; pass task (a builder or its 'module:function')")
    if launcher == "local":
        if (nproc or 1) > 1 or nodes > 1:
            raise ValueError(f"launcher='local' runs one process; use launcher='torchrun' for nproc={nproc}, nodes={nodes}")
        build = load_task_builder(task) if isinstance(task, str) else task
        return run_stage(rec, stage, run_dir, build, device=device, resume=resume, progress=progress, sections=sections,
                         config=config)
    nproc = nproc or cfg.nproc
    out_dir = RunLayout(run_dir).folder(stage)
    if launcher == "torchrun":
        if entry is None and (sections is not None or config is not None):
            raise ValueError("launcher='torchrun' with sections or config needs the entry module that resolves "
                             "them in the workers (launch(..., entry=...))")
        spec = task_spec(task)  # the workers import the builder by name
        with folder_lock(run_dir):  # held from the recipe copy on; the workers inherit it
            recipe_path = rec.save(out_dir)  # the child loads exactly this resolved recipe
            cmd = torchrun_command(recipe_path, stage, run_dir, nproc, nodes, cfg.rdzv_endpoint, spec, device, resume,
                                   entry or ENGINE_ENTRY)
            rc, tail = stream_process(cmd, stream)
        if rc != 0:
            raise LaunchError(f"torchrun ({nproc} processes, stage {stage!r}) exited with code {rc}; last lines:\n"
                              + "\n".join(tail))
        return _result_from_dir(out_dir)
    if cluster == "slurm" and shutil.which("srun") is None:
        raise LaunchError("launcher='slurm' needs a Slurm cluster (no srun on PATH); use launcher='torchrun' here")
    if not resume:
        warnings.warn("launcher='slurm' always resumes from last.pth (requeued jobs rely on it); resume=False ignored",
                      stacklevel=2)
    executor = submitit.AutoExecutor(folder=out_dir / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(**slurm_parameters(rec, stage, nproc, nodes, partition or cfg.partition))
    job = executor.submit(StageJob(rec.to_dict(), stage, str(run_dir), task, device, sections, config))
    stream(f"submitted Slurm job {job.job_id}: {nodes} node(s) × {nproc} GPU task(s), logs in {out_dir / 'slurm'}")
    return job


def train_stage(recipe: Recipe, stage: str, run_dir: str | Path, force: bool = False,
                stream: Callable[[str], None] = print, **launch_kw: Any) -> dict:
    """:func:`launch` one training stage and wait for it (a Slurm job too), for a method's pipeline stage.

    ``force`` trains from scratch (the stage's ``model_final.pth`` and ``last.pth`` are removed first:
    training skips a final checkpoint of the same recipe hash). Returns ``{"stage", "final",
    "iteration", "skipped", "seconds"}``, what the stage marker records."""
    out_dir = RunLayout(run_dir).folder(stage)
    if force:
        for name in (FINAL, LAST):
            (out_dir / name).unlink(missing_ok=True)
    t0 = time.perf_counter()
    result = launch(recipe, stage, run_dir, stream=stream, resume=not force, **launch_kw)
    if not isinstance(result, TrainResult):  # a submitit Job (Slurm): wait; it resumes itself when requeued
        stream(f"{stage}: waiting for Slurm job {result.job_id}")
        result = result.result()
    return {"stage": stage, "final": str(result.final), "iteration": result.iteration, "skipped": result.skipped,
            "seconds": round(time.perf_counter() - t0, 1)}

