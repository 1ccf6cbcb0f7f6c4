"""Launchers: in-process, torchrun (2 CPU processes, gloo) streaming into the caller, Slurm via submitit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ovis.config import LaunchConfig, Recipe, TrainConfig
from ovis.engine import dist
from ovis.engine import launch as launch_mod
from ovis.engine.launch import (
    LaunchError,
    StageJob,
    launch,
    slurm_parameters,
    stream_process,
    torchrun_command,
)
from ovis.engine.train import TrainResult
from ovis.methods import train as method_train

TOY = f"{Path(__file__).with_name('toy_task.py')}:toy_task"


def _recipe(**kw) -> Recipe:
    cfg = TrainConfig(max_iter=4, batch_size=2, lr=0.05, warmup_iters=1, checkpoint_period=2, log_period=1, num_workers=0)
    return Recipe(name="toy", sections={"teacher": cfg}, **kw)


def test_local_launch_trains_in_process_then_skips_when_recipe_unchanged(tmp_path):
    res = launch(_recipe(), "teacher", tmp_path, launcher="local", task=TOY, device="cpu")
    assert res.iteration == 4 and not res.skipped
    assert (tmp_path / "teacher" / "recipe.yaml").is_file()
    assert launch(_recipe(), "teacher", tmp_path, launcher="local", task=TOY, device="cpu").skipped
    changed = launch(_recipe(), "teacher", tmp_path, launcher="local", task=TOY, device="cpu",
                     overrides=["teacher.max_iter=5"])
    assert not changed.skipped and changed.iteration == 5  # resumed from last.pth at 4


def test_torchrun_two_cpu_processes_write_once_and_stream_to_caller(tmp_path):
    lines: list[str] = []
    # the workers run the method layer's entry, as the methods' stages launch them
    res = launch(_recipe(), "teacher", tmp_path, launcher="torchrun", nproc=2, task=TOY, device="cpu",
                 stream=lines.append, entry=method_train.ENTRY)
    assert res.iteration == 4
    ckpt = torch.load(res.last, weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])  # each rank's own stream
    rows = [json.loads(x) for x in res.metrics.read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3, 4]  # rank 0 writes alone
    assert rows[-1]["images_per_s"] > 0
    assert sorted(p.name for p in res.final.parent.iterdir()) == ["last.pth", "metrics.jsonl", "model_final.pth", "recipe.yaml"]
    assert any("trained 4 iterations" in line for line in lines)  # the child's log line reached us
    assert any("4/4" in line for line in lines)  # and its progress bar


def test_a_methods_stage_reaches_the_launcher_with_its_builder_sections_and_entry(tmp_path, monkeypatch):
    from ovis.config import load_recipe
    from ovis.methods import ggn, training_stage

    seen: dict = {}

    def fake_launch(recipe, stage, run_dir, **kw):
        seen.update(kw, stage=stage)
        return TrainResult(tmp_path / "final", tmp_path / "last", tmp_path / "metrics", 3)

    monkeypatch.setattr(launch_mod, "launch", fake_launch)
    res = method_train.train_stage(load_recipe("demo_ggn"), "oln_baseline", tmp_path, launcher="torchrun")
    assert seen["stage"] == "oln_baseline" and seen["task"] is ggn.oln_baseline_task and res["iteration"] == 3
    assert seen["sections"] == training_stage("oln_baseline").sections and seen["config"] == "student"
    assert seen["entry"] == method_train.ENTRY == method_train.__name__
    cmd = torchrun_command(tmp_path / "recipe.yaml", "oln_baseline", tmp_path, 2, task="ovis.methods.ggn:oln_baseline_task",
                           entry=seen["entry"])
    assert cmd[cmd.index("--standalone") + 1 :][:2] == ["-m", "ovis.methods.train"]


def test_streaming_splits_progress_updates_and_merges_stderr():
    lines: list[str] = []
    code = "import sys; print('log line'); sys.stderr.write('bar 1/2\\rbar 2/2\\n'); print('no newline', end='')"
    rc, tail = stream_process([sys.executable, "-c", code], lines.append)
    assert rc == 0 and lines == tail == ["log line", "bar 1/2", "bar 2/2", "no newline"]


def test_failed_child_raises_with_its_last_lines(tmp_path, monkeypatch):
    code = "import sys; print('building task'); sys.exit('ovis train: error: cannot import no_such_module')"
    monkeypatch.setattr(launch_mod, "torchrun_command", lambda *a, **k: [sys.executable, "-c", code])
    with pytest.raises(LaunchError, match=r"exited with code 1; last lines:\nbuilding task\novis train: error: cannot import"):
        launch(_recipe(), "teacher", tmp_path, launcher="torchrun", nproc=2, task=TOY, stream=lambda line: None)


def test_slurm_job_asks_one_task_per_gpu():
    recipe = _recipe(launch=LaunchConfig(cpus_per_task=6, timeout_min=60, mem_gb=200))
    params = slurm_parameters(recipe, "teacher", nproc=8, nodes=2, partition="gpu")
    assert params == {"name": "ovis-toy-teacher", "nodes": 2, "tasks_per_node": 8, "gpus_per_node": 8,
                      "cpus_per_task": 6, "timeout_min": 60, "slurm_signal_delay_s": 120, "mem_gb": 200,
                      "slurm_partition": "gpu"}


def test_slurm_callable_runs_under_debug_executor_and_requeues_itself(tmp_path):
    lines: list[str] = []
    job = launch(_recipe(), "teacher", tmp_path, launcher="slurm", nproc=1, task=TOY, device="cpu",
                 cluster="debug", stream=lines.append)
    res = job.result()
    assert res.iteration == 4 and res.final.is_file()
    assert lines[0].startswith(f"submitted Slurm job {job.job_id}")
    callable_ = job.submission().function
    assert isinstance(callable_, StageJob)
    assert callable_.checkpoint().function is callable_  # a preempted job resubmits itself


def test_slurm_environment_becomes_an_env_rendezvous(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR"):
        monkeypatch.setenv(key, "")  # recorded, so what _env_from_slurm exports is undone after the test
        monkeypatch.delenv(key)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    calls = []

    def scontrol(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="gpu07\ngpu08\n")

    monkeypatch.setattr(dist.subprocess, "run", scontrol)
    assert dist._env_from_slurm() == (5, 8, 1)
    assert calls == [["scontrol", "show", "hostnames", "gpu[07-08]"]]
    env = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    assert env == {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": "23456"}


def test_one_process_needs_no_process_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    info = dist.init_distributed("cpu")
    assert (info.rank, info.world_size, info.distributed, info.device.type) == (0, 1, False, "cpu")
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}] and dist.is_main_process()
