"""The training loop: schedule, checkpoints, resume, divergence, freezing, metrics (CPU, toy task)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from toy_task import SquareDataset, SquareNet

import ovis.engine.train as engine
from ovis.config import Recipe, TrainConfig, load_recipe
from ovis.engine.schedule import build_lr_scheduler, build_optimizer, lr_factor
from ovis.engine.train import (
    BatchStream,
    InfiniteSampler,
    StageSpec,
    TaskError,
    TrainingDiverged,
    TrainTask,
    load_task_builder,
    run_stage,
    save_atomic,
    task_spec,
    train,
)
from ovis.methods.train import main as ovis_train
from ovis.methods.train import run_stage as method_run_stage


def _cfg(**kw) -> TrainConfig:
    base = dict(max_iter=10, batch_size=2, lr=0.05, warmup_iters=2, steps=[8], checkpoint_period=5,
                log_period=1, num_workers=0, seed=3)
    return TrainConfig(**{**base, **kw})


def _task(cfg: TrainConfig, **kw) -> TrainTask:
    torch.manual_seed(0)
    data = SquareDataset(n=12)
    return TrainTask(model=SquareNet(), dataset=data, cfg=cfg, aspect_ratios=data.aspect_ratios(), **kw)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warms_up_linearly_then_steps():
    cfg = TrainConfig(lr=0.02, warmup_iters=10, warmup_factor=0.1, steps=[20, 30], gamma=0.1, bias_lr_factor=2.0)
    assert [round(lr_factor(cfg, i), 6) for i in (0, 5, 10, 19, 20, 29, 30, 100)] == [0.1, 0.55, 1, 1, 0.1, 0.1, 0.01, 0.01]
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    seen = {}
    for it in range(31):
        seen[it] = [g["lr"] for g in opt.param_groups]  # lr used by the step of 0-based iteration `it`
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx([0.002, 0.004])  # weights, biases (bias_lr_factor 2)
    assert seen[5] == pytest.approx([0.011, 0.022])
    assert seen[25] == pytest.approx([0.002, 0.004])
    assert seen[30] == pytest.approx([0.0002, 0.0004])


def test_bias_parameters_get_their_own_weight_decay():
    cfg = TrainConfig(weight_decay=1e-4, weight_decay_bias=0.0)
    groups = build_optimizer(torch.nn.Linear(2, 2), cfg).param_groups
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(1, 1e-4), (1, 0.0)]


def test_sampler_shards_like_distributed_sampler_and_batches_one_aspect_group():
    shards = [list(zip(range(6), InfiniteSampler(10, seed=1, rank=r, world_size=2))) for r in (0, 1)]
    first_epoch = sorted(i for s in shards for _, i in s[:5])
    assert first_epoch == list(range(10))  # the two ranks split the first epoch, no overlap
    groups = [i % 2 for i in range(10)]
    stream = iter(BatchStream(InfiniteSampler(10, seed=1), 3, groups, seed=1))
    batches = [next(stream) for _ in range(8)]
    assert all(len({groups[i] for i, _ in b}) == 1 and len(b) == 3 for b in batches)
    resumed = iter(BatchStream(InfiniteSampler(10, seed=1), 3, groups, seed=1, start_iter=5))
    assert [next(resumed) for _ in range(3)] == batches[5:]  # same indices and per-sample seeds


def test_checkpoint_final_and_metrics_contents(tmp_path):
    cfg = _cfg(max_iter=4, checkpoint_period=2, log_period=2)
    res = train(_task(cfg), tmp_path, progress=False, recipe_hash="abc123")
    ckpt = torch.load(res.last, weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "iteration"} <= set(ckpt)
    assert ckpt["iteration"] == 4 and ckpt["scheduler"]["last_epoch"] == 4 and len(ckpt["rng"]) == 1
    assert {"torch", "numpy", "random"} <= set(ckpt["rng"][0])
    final = torch.load(res.final, weights_only=True)
    assert final["recipe_hash"] == "abc123" and final["iteration"] == 4
    assert torch.equal(final["model"]["head.2.weight"], ckpt["model"]["head.2.weight"])
    rows = _metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [2, 4]
    assert {"loss_box", "loss_cls", "total_loss", "lr", "time_per_iter", "images_per_s", "max_mem_mb"} <= set(rows[0])
    assert rows[0]["total_loss"] == pytest.approx(rows[0]["loss_box"] + rows[0]["loss_cls"])
    # same recipe hash: nothing is trained again
    task = _task(cfg)
    again = train(task, tmp_path, progress=False, recipe_hash="abc123")
    assert again.skipped and again.iteration == 4 and task.model.calls == 0
    fresh = train(task, tmp_path, progress=False, resume=False, recipe_hash="abc123")
    assert not fresh.skipped and task.model.calls == 4


def test_a_checkpoint_of_another_recipe_is_not_resumed(tmp_path, caplog):
    # e.g. the pseudo masks changed: the student must train again, not "resume" a finished last.pth
    cfg = _cfg(max_iter=4, checkpoint_period=2)
    old = train(_task(cfg), tmp_path, progress=False, recipe_hash="old")
    old_weights = torch.load(old.final, weights_only=True)["model"]["head.2.weight"]
    task = _task(cfg)
    with caplog.at_level(logging.INFO, logger="ovis.engine.train"):
        new = train(task, tmp_path, progress=False, recipe_hash="new")
    assert not new.skipped and task.model.calls == 4 and new.iteration == 4
    assert "was written under recipe hash old" in caplog.text and "starting over" in caplog.text
    ckpt = torch.load(new.last, weights_only=True)
    assert ckpt["recipe_hash"] == "new" and torch.load(new.final, weights_only=True)["recipe_hash"] == "new"
    assert [r["iteration"] for r in _metrics(tmp_path)] == [1, 2, 3, 4]
    # the same data and seed as the old run: training again reproduces its weights
    assert torch.equal(torch.load(new.final, weights_only=True)["model"]["head.2.weight"], old_weights)


def test_resumed_run_matches_an_uninterrupted_run_whatever_the_workers(tmp_path):
    full = train(_task(_cfg()), tmp_path / "full", progress=False)
    train(_task(_cfg(max_iter=6)), tmp_path / "split", progress=False)
    resumed = train(_task(_cfg(num_workers=1)), tmp_path / "split", progress=False)
    a = torch.load(full.final, weights_only=True)["model"]
    b = torch.load(resumed.final, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["iteration"] for r in _metrics(tmp_path / "split")] == list(range(1, 11))


def test_crash_keeps_checkpoint_and_rerun_resumes_without_duplicate_metrics(tmp_path):
    def crash(iteration: int, model: torch.nn.Module) -> None:
        if iteration == 7:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(_task(_cfg(), after_step=crash), tmp_path, progress=False)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["iteration"] == 5
    assert not (tmp_path / "model_final.pth").exists()
    calls = []
    res = train(_task(_cfg(), after_step=lambda it, m: calls.append(it)), tmp_path, progress=False)
    assert res.iteration == 10
    assert calls == [5, 6, 7, 8, 9, 10]  # once at resume, then after each step
    assert [r["iteration"] for r in _metrics(tmp_path)] == list(range(1, 11))


def test_nan_loss_stops_naming_iteration_and_keeps_last_good_checkpoint(tmp_path):
    task = _task(_cfg(checkpoint_period=2))
    task.model.poison_at = 4
    with pytest.raises(TrainingDiverged, match=r"iteration 4: non-finite loss \(loss_box=nan, loss_cls=") as err:
        train(task, tmp_path, progress=False)
    assert err.value.iteration == 4 and "iteration 2) is kept" in str(err.value)
    assert torch.load(tmp_path / "last.pth", weights_only=True)["iteration"] == 2
    assert not (tmp_path / "model_final.pth").exists()


def test_frozen_prefixes_stay_unchanged(tmp_path, caplog):
    task = _task(_cfg(max_iter=3, freeze=["backbone"]))
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="ovis"):
        res = train(task, tmp_path, progress=False)
    after = torch.load(res.final, weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("backbone."))
    assert not torch.equal(before["head.2.weight"], after["head.2.weight"])
    assert "froze 4 of 6 parameter tensors" in caplog.text
    with pytest.raises(ValueError, match=r"\['backbon'\] match no parameter.*\['backbone', 'head'\]"):
        train(_task(_cfg(freeze=["backbon"])), tmp_path / "typo", progress=False)


def test_init_loads_weights_non_strictly_from_a_checkpoint(tmp_path, caplog):
    source = SquareNet()
    torch.save({"model": {**source.state_dict(), "extra.weight": torch.zeros(1)}, "iteration": 9}, tmp_path / "src.pth")
    with caplog.at_level(logging.INFO, logger="ovis"):
        res = train(_task(_cfg(max_iter=0, init="src.pth")), tmp_path / "teacher", progress=False)
    loaded = torch.load(res.final, weights_only=True)["model"]
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items())
    assert "1 unexpected ['extra.weight']" in caplog.text


def test_task_spec_errors_are_clear(capsys):
    with pytest.raises(TaskError, match="cannot import 'ovis.methods.nope'"):
        load_task_builder("ovis.methods.nope:teacher_task")
    assert ovis_train(["--recipe", "demo_cpl", "--stage", "teacher", "--task", "ovis.methods.nope:x", "--run-dir", "/nonexistent"]) == 2
    assert capsys.readouterr().err.startswith("ovis train: error: --task 'ovis.methods.nope:x': cannot import")


def test_the_engine_names_a_task_builder_by_module_for_other_processes():
    from ovis.methods import ggn

    assert task_spec(ggn.baseline_task) == "ovis.methods.ggn.method:baseline_task"
    assert load_task_builder(task_spec(ggn.baseline_task)) is ggn.baseline_task
    from_file = load_task_builder(f"{Path(__file__).with_name('toy_task.py')}:toy_task")
    for unnamed in (from_file, lambda recipe, run_dir, stage: None):  # a torchrun worker could not import them
        with pytest.raises(TaskError, match="cannot be imported by name in another process"):
            task_spec(unnamed)


def test_the_engine_command_line_takes_its_task_from_the_caller(tmp_path, capsys):
    recipe_path = Recipe(name="toy", sections={"teacher": _cfg(max_iter=2)}).save(tmp_path)
    args = ["--recipe", str(recipe_path), "--stage", "extra", "--run-dir", str(tmp_path / "run"), "--device", "cpu",
            "--no-progress"]
    with pytest.raises(SystemExit):  # without a resolver --task is required
        engine.main(args)
    assert "--task" in capsys.readouterr().err
    toy = load_task_builder(f"{Path(__file__).with_name('toy_task.py')}:toy_task")
    seen = []

    def resolve(recipe, stage, task):  # the method layer's part: builder, sections hashed, TrainConfig section
        seen.append((stage, task))
        return StageSpec(lambda r, d, s: toy(r, d, "teacher"), sections=("teacher",), config="teacher")

    assert engine.main(args, resolve=resolve, stages=["extra"]) == 0
    final = torch.load(tmp_path / "run" / "extra" / "model_final.pth", weights_only=True)
    assert seen == [("extra", None)] and final["iteration"] == 2
    assert final["recipe_hash"] == load_recipe(recipe_path).hash(("teacher",))


def test_the_engine_command_imports_the_task_before_it_reads_the_recipe(tmp_path):
    # a method's recipe sections are known once its package is imported: here by the task's module, in a
    # fresh process that has not imported ovis.methods otherwise
    recipe_path = Recipe(name="toy", sections={"teacher": _cfg(max_iter=2)}).save(tmp_path)
    (tmp_path / "my_tasks.py").write_text("import ovis.methods  # declares the recipes' sections\n"
                                          "from toy_task import toy_task\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ovis.engine.train", "--recipe", str(recipe_path), "--stage", "teacher",
           "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress",
           "--task", f"{tmp_path / 'my_tasks.py'}:toy_task"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    final = torch.load(tmp_path / "run" / "teacher" / "model_final.pth", weights_only=True)
    assert final["iteration"] == 2


def test_stage_seeds_the_initial_weights_whatever_ran_before(tmp_path):
    recipe = Recipe(name="toy", sections={"teacher": _cfg(max_iter=2, seed=5)})
    spec = f"{Path(__file__).with_name('toy_task.py')}:unseeded_task"
    finals = []
    for run, noise in (("a", 1), ("b", 2)):
        torch.manual_seed(noise)  # a notebook or library touched the global RNG before the stage
        res = run_stage(recipe, "teacher", tmp_path / run, task=load_task_builder(spec), device="cpu", progress=False)
        finals.append(torch.load(res.final, weights_only=True)["model"])
        assert not (tmp_path / run / ".ovis.lock").exists()  # the run dir's lock goes with the run
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


def test_temp_files_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".last.pth.{int(dead.stdout)}.tmp"
    live = tmp_path / f".metrics.jsonl.{os.getppid()}.abcd.tmp"  # a writer that is still running
    stale.write_bytes(b"half a checkpoint")
    live.write_text("{}")
    train(_task(_cfg(max_iter=2, checkpoint_period=2)), tmp_path, progress=False)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "last.pth", "metrics.jsonl", "model_final.pth"]


def test_a_corrupt_final_checkpoint_is_named(tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(RuntimeError, match=r"cannot read checkpoint .*model_final\.pth.*delete it to start over"):
        train(_task(_cfg(max_iter=2)), tmp_path, progress=False, recipe_hash="abc")


def test_a_stage_without_its_inputs_writes_nothing(tmp_path):
    recipe = load_recipe("demo_ggn", {"data.root": str(tmp_path / "data")})
    with pytest.raises(FileNotFoundError, match="run the splits stage first"):
        method_run_stage(recipe, "teacher", tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_checkpoint_written_in_the_background_holds_its_iteration_while_training_goes_on(tmp_path, monkeypatch):
    seen = {}
    task = _task(_cfg(max_iter=10, checkpoint_period=5))

    def slow_save(obj, path, **kw):
        if path.name == "last.pth":
            time.sleep(0.5)  # serialising a large model
            finals = sorted(p.name for p in path.parent.glob("*model_final.pth*"))
            seen[obj["iteration"]] = ({k: v.clone() for k, v in obj["model"].items()}, task.model.calls,
                                      threading.current_thread() is threading.main_thread(), finals)
        return save_atomic(obj, path, **kw)

    monkeypatch.setattr(engine, "save_atomic", slow_save)
    train(task, tmp_path / "async", progress=False)
    weights, calls_meanwhile, on_main_thread, _ = seen[5]
    assert calls_meanwhile > 5 and not on_main_thread  # training went on while iteration 5 was being written
    # the final weights are written meanwhile, and renamed into place only once last.pth is complete
    assert seen[10][3] == [f".model_final.pth.{os.getpid()}.tmp"]
    ref = torch.load(train(_task(_cfg(max_iter=5)), tmp_path / "ref", progress=False).final, weights_only=True)["model"]
    assert all(torch.equal(weights[k], ref[k]) for k in ref)  # a copy taken at iteration 5, not the live weights
    assert torch.load(tmp_path / "async" / "last.pth", weights_only=True)["iteration"] == 10


def test_a_failed_background_write_stops_the_run_on_its_thread_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    def full_disk_at_10(obj, path, **kw):
        if obj["iteration"] == 10:
            raise OSError(28, "No space left on device", str(path))
        return save_atomic(obj, path, **kw)

    monkeypatch.setattr(engine, "save_atomic", full_disk_at_10)
    task = _task(_cfg(max_iter=30, checkpoint_period=5))
    with pytest.raises(OSError, match="No space left on device") as err:
        train(task, tmp_path, progress=False)
    assert f"while writing {tmp_path / 'last.pth'} in the background, iteration 10" in err.value.__notes__[0]
    assert 10 <= task.model.calls <= 15  # raised at the next check, by the next checkpoint at the latest
    assert torch.load(tmp_path / "last.pth", weights_only=True)["iteration"] == 5
    assert not (tmp_path / "model_final.pth").exists()


def test_a_crash_while_a_write_is_in_flight_lets_it_finish_and_reports_its_failure_too(tmp_path, monkeypatch):
    def slow(obj, path, **kw):
        time.sleep(0.3)
        if obj["iteration"] == 10:
            raise OSError(28, "No space left on device", str(path))
        return save_atomic(obj, path, **kw)

    crashes = [6, 11]  # one per run: the second resumes from iteration 5

    def crash(iteration: int, model: torch.nn.Module) -> None:
        if iteration == crashes[0]:
            raise RuntimeError(f"simulated crash at {crashes.pop(0)}")

    monkeypatch.setattr(engine, "save_atomic", slow)
    with pytest.raises(RuntimeError, match="simulated crash at 6") as err:
        train(_task(_cfg(max_iter=20), after_step=crash), tmp_path / "a", progress=False)
    assert not hasattr(err.value, "__notes__")
    assert torch.load(tmp_path / "a" / "last.pth", weights_only=True)["iteration"] == 5  # finished after the crash
    with pytest.raises(RuntimeError, match="simulated crash at 11") as err:
        train(_task(_cfg(max_iter=20), after_step=crash), tmp_path / "a", progress=False)
    assert err.value.__notes__ == [f"the background write of {tmp_path / 'a' / 'last.pth'} failed too: OSError: "
                                   f"[Errno 28] No space left on device: '{tmp_path / 'a' / 'last.pth'}'"]
