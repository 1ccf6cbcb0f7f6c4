"""A training process killed with SIGKILL mid-run resumes from ``last.pth`` and ends with exactly the
weights of an uninterrupted run with the same seed (CPU, one thread, the toy task of toy_task.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent
MAX_ITER, PERIOD, KILL_AFTER = 200, 10, 60
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
            "SUBMITIT_EXECUTOR")

DRIVER = f"""
import sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {str(TESTS)!r})
from ovis.config import TrainConfig
from ovis.engine.train import TrainTask, train
from toy_task import SquareDataset, SquareNet

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


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    cmd = [sys.executable, str(driver)]
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    proc = subprocess.Popen([*cmd, str(killed)], env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _checkpoint_iter(killed / "last.pth") < KILL_AFTER:
            assert proc.poll() is None, f"driver exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, f"no checkpoint past iteration {KILL_AFTER} within 60 s"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model_final.pth").exists()
    at_kill = _checkpoint_iter(killed / "last.pth")
    assert KILL_AFTER <= at_kill < MAX_ITER and at_kill % PERIOD == 0

    resumed = subprocess.run([*cmd, str(killed)], env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {killed / 'last.pth'} at iteration {at_kill}" in resumed.stderr
    uninterrupted = subprocess.run([*cmd, str(whole)], env=_env(), capture_output=True, text=True, timeout=120)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    a = torch.load(killed / "model_final.pth", map_location="cpu", weights_only=True)
    b = torch.load(whole / "model_final.pth", map_location="cpu", weights_only=True)
    assert a["iteration"] == b["iteration"] == MAX_ITER
    assert a["model"].keys() == b["model"].keys()
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    iters = [json.loads(line)["iteration"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert iters == list(range(5, MAX_ITER + 1, 5))  # lines past the checkpoint were dropped, none repeated
