"""A training process killed with SIGKILL mid-run, or while a checkpoint is being written in the
background, resumes from ``last.pth`` and ends with exactly the weights of an uninterrupted run with
the same seed (CPU, one thread, the toy task of toy_task.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
MAX_ITER, PERIOD, KILL_AFTER, STALLED = 200, 10, 60, 60
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
            "SUBMITIT_EXECUTOR")

DRIVER = f"""
import sys
import pytest
import torch
torch.set_num_threads(1)
sys.path.insert(0, {str(TESTS)!r})
from ovis.config import TrainConfig
from ovis.engine.train import TrainTask, train
from toy_task import SquareDataset, SquareNet

if len(sys.argv) > 2:  # the background write of this iteration's last.pth stalls once its temp file is written
    import time
    save = torch.save

    def stalled_save(obj, f, **kw):
        save(obj, f, **kw)
        if obj.get("iteration") == int(sys.argv[2]) and "optimizer" in obj:
            time.sleep(600)

    torch.save = stalled_save
torch.manual_seed(0)
cfg = TrainConfig(max_iter={MAX_ITER}, batch_size=4, lr=0.05, warmup_iters=20, steps=[150], checkpoint_period={PERIOD},
                  log_period=5, num_workers=0, seed=3)
ds = SquareDataset(32, seed=1)
train(TrainTask(SquareNet(), ds, cfg, aspect_ratios=ds.aspect_ratios()), sys.argv[1], device="cpu", progress=False)
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), env.get("PYTHONPATH", "")])
    return env


def _checkpoint_iter(path: Path) -> int:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["iteration"])
    except Exception:  # noqa: BLE001 - not there yet (written atomically, so never half-read)
        return 0


def _metric_iters(run: Path) -> list[int]:
    path = run / "metrics.jsonl"
    return [json.loads(line)["iteration"] for line in path.read_text().splitlines()] if path.is_file() else []


def _run_until(cmd: list[str], done, what: str) -> None:
    """Start the driver, SIGKILL it (with its process group) once ``done()`` holds."""
    proc = subprocess.Popen(cmd, env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not done():
            assert proc.poll() is None, f"driver exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"no {what} within 60 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    return [sys.executable, str(path)]


@pytest.fixture(scope="module")
def uninterrupted(driver, tmp_path_factory) -> dict:
    whole = tmp_path_factory.mktemp("whole")
    done = subprocess.run([*driver, str(whole)], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.load(whole / "model_final.pth", map_location="cpu", weights_only=True)


def _resume_and_compare(driver: list[str], killed: Path, at_kill: int, uninterrupted: dict) -> str:
    resumed = subprocess.run([*driver, str(killed)], env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {killed / 'last.pth'} at iteration {at_kill}" in resumed.stderr
    a = torch.load(killed / "model_final.pth", map_location="cpu", weights_only=True)
    assert a["iteration"] == uninterrupted["iteration"] == MAX_ITER
    assert a["model"].keys() == uninterrupted["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], uninterrupted["model"][k]), k
    assert _metric_iters(killed) == list(range(5, MAX_ITER + 1, 5))  # lines past the checkpoint dropped, none repeated
    return resumed.stderr


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path, driver, uninterrupted):
    killed = tmp_path / "killed"
    _run_until([*driver, str(killed)], lambda: _checkpoint_iter(killed / "last.pth") >= KILL_AFTER,
               f"checkpoint past iteration {KILL_AFTER}")
    assert not (killed / "model_final.pth").exists()
    at_kill = _checkpoint_iter(killed / "last.pth")
    assert KILL_AFTER <= at_kill < MAX_ITER and at_kill % PERIOD == 0
    _resume_and_compare(driver, killed, at_kill, uninterrupted)


def test_sigkill_while_a_checkpoint_is_written_in_the_background_keeps_the_previous_one(tmp_path, driver, uninterrupted):
    killed = tmp_path / "killed"
    # the write of iteration 60 hangs after its temp file; training goes on to iteration 70, where the
    # next checkpoint waits for it
    _run_until([*driver, str(killed), str(STALLED)],
               lambda: list(killed.glob(".last.pth.*.tmp")) and STALLED + PERIOD in _metric_iters(killed),
               f"training past iteration {STALLED} while its checkpoint is written")
    temps = list(killed.glob(".last.pth.*.tmp"))
    assert len(temps) == 1 and _checkpoint_iter(killed / "last.pth") == STALLED - PERIOD
    stderr = _resume_and_compare(driver, killed, STALLED - PERIOD, uninterrupted)
    assert f"removed {temps[0].name}, left by an interrupted checkpoint write" in stderr
    assert not temps[0].exists()
