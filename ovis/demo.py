"""`ovis demo`: both methods' demo recipes, all six stages each, side by side; then the summary table.

The two ``ovis reproduce`` runs go in parallel, each with its share of the CPU cores
(``OMP_NUM_THREADS``): the demo's small networks use two cores poorly from one process, and each run's
notebook kernels start (about 9 s each: Jupyter, torch, torchvision) while the other computes
(benchmarks/README.md, "demo_wall"). Their lines are prefixed with the recipe's name. If one run fails,
the other is stopped (Ctrl-C, as a user would) and the command exits 1; stages already done are
kept and skipped on the next run.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

DEMO_RECIPES = ("demo_cpl", "demo_ggn")
STOP_GRACE_S = 30.0  # a stopped run's kernel gets this long to shut down before it is killed


def threads_per_run(runs: int) -> int:
    """CPU threads for each of ``runs`` parallel runs: the usable cores shared out, at least one."""
    from ovis.engine.dist import usable_cpus

    return max(1, usable_cpus() // runs)


def _forward(name: str, proc: subprocess.Popen, width: int, lock: threading.Lock, muted: threading.Event) -> None:
    """Print ``proc``'s lines prefixed with ``name`` until it ends or ``muted`` is set (a run being
    stopped prints its KeyboardInterrupt traceback, which says nothing about the failure)."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        if not muted.is_set():
            with lock:
                print(f"{name:<{width}} | {raw.rstrip()}", flush=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # reproduce shuts its notebook kernel down on KeyboardInterrupt
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_parallel(recipes: list[str], overrides: list[str] | None = None, stages: str | None = None,
                 force: bool = False) -> int:
    """``ovis reproduce R`` for every recipe R at once (with the ``--set`` ``overrides``, ``--stages``), each with
    :func:`threads_per_run` threads; 0 when all succeed, else the first failure's exit code (the
    others are stopped)."""
    from ovis.data.synthetic import generate_for
    from ovis.methods import load_recipe

    for name in recipes:  # data both runs read is generated once, before they start
        data = load_recipe(name, overrides).data
        if data.demo:
            generate_for(data)
    extra = [a for o in overrides or [] for a in ("--set", o)] + (["--stages", stages] if stages else [])
    extra += ["--force"] if force else []
    threads = str(threads_per_run(len(recipes)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    width, lock, muted = max(len(r) for r in recipes), threading.Lock(), {r: threading.Event() for r in recipes}
    print(f"running {', '.join(recipes)} in parallel, {threads} CPU thread(s) each", flush=True)
    procs: dict[str, subprocess.Popen] = {}
    readers = []
    try:
        for name in recipes:
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "ovis.cli", "reproduce", name, *extra], env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
            readers.append(threading.Thread(target=_forward, args=(name, procs[name], width, lock, muted[name]), daemon=True))
            readers[-1].start()
        failed = None
        pending = dict(procs)
        while pending and failed is None:
            for name, proc in list(pending.items()):
                try:
                    rc = proc.wait(0.5)
                except subprocess.TimeoutExpired:
                    continue
                del pending[name]
                if rc != 0:
                    failed = (name, rc)
                    break
        if failed is not None:
            for name, proc in pending.items():
                muted[name].set()
                _stop(proc)
            for t in readers:
                t.join(5)
            print(f"ovis demo: {failed[0]} failed (exit {failed[1]}); the other run was stopped", file=sys.stderr)
            return failed[1]
        for t in readers:
            t.join(5)
        return 0
    except KeyboardInterrupt:
        for name, proc in procs.items():
            muted[name].set()
            _stop(proc)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ovis demo", description=__doc__.splitlines()[0])
    ap.add_argument("recipes", nargs="*", default=list(DEMO_RECIPES), help="recipes to run side by side (default: %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted recipe override for every run, e.g. student.max_iter=60 (repeatable)")
    ap.add_argument("--stages", help="comma-separated subset of the six stages (default: all)")
    ap.add_argument("--force", action="store_true", help="re-run stages even if their outputs match")
    args = ap.parse_args(argv)
    from ovis.config import RecipeError
    from ovis.methods import load_recipe

    try:
        for name in args.recipes:
            load_recipe(name, args.overrides)
    except RecipeError as e:
        print(f"ovis demo: error: {e}", file=sys.stderr)
        return 2
    rc = run_parallel(args.recipes, args.overrides, args.stages, args.force)
    if rc == 0:
        from ovis.pipeline import summary

        print(summary(args.recipes, Path("runs")))
    return rc


if __name__ == "__main__":
    sys.exit(main())
