"""Stage markers: a stage is redone only when a recipe section it depends on changes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import tiny

from ovis.cli import main as ovis
from ovis.config import load_recipe
from ovis.data.splits import run_splits_stage
from ovis.locks import LOCK, FolderInUse, folder_lock
from ovis.methods import training_stage, training_stages
from ovis.runs import STAGES, RunLayout, inputs_changed, link_stages, mark_stage_done, stage_done, stage_hash

ANN = Path(__file__).parent / "data" / "real" / "coco_mini" / "annotations"
HOLDER = """
import sys, time
from ovis.locks import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_changing_eval_does_not_retrain_and_changing_the_teacher_redoes_everything_after_it():
    base = load_recipe("demo_ggn")
    ev = load_recipe("demo_ggn", ["eval.max_images=5"])
    assert [stage_hash(base, s) == stage_hash(ev, s) for s in STAGES] == [True, True, True, True, False, False]
    te = load_recipe("demo_ggn", ["teacher.max_iter=7"])
    assert [stage_hash(base, s) == stage_hash(te, s) for s in STAGES] == [True, False, False, False, False, False]
    la = load_recipe("demo_ggn", ["launch.launcher=torchrun", "launch.nproc=2"])
    assert all(stage_hash(base, s) == stage_hash(la, s) for s in STAGES)  # where it runs changes nothing
    # engine training stages map onto pipeline stages
    assert training_stage("baseline").recipe_hash(base) == stage_hash(base, "student")


def _hash(recipe, stage):
    """The recipe hash of an engine training stage, as its method declares it (ovis.methods)."""
    return training_stage(stage).recipe_hash(recipe)


def test_a_new_teacher_schedule_keeps_the_caption_grounding_but_a_new_grounding_one_does_not():
    base = load_recipe("demo_cpl")
    te = load_recipe("demo_cpl", ["teacher.max_iter=7"])
    assert _hash(base, "grounding") == _hash(te, "grounding")
    assert _hash(base, "teacher") != _hash(te, "teacher")
    gr = load_recipe("demo_cpl", ["grounding.max_iter=7"])
    assert _hash(base, "grounding") != _hash(gr, "grounding")
    assert _hash(base, "teacher") != _hash(gr, "teacher")  # the teacher starts from the grounding
    md = load_recipe("demo_cpl", ["model.min_size=128"])
    assert _hash(base, "grounding") != _hash(md, "grounding")


def test_each_pipeline_stage_names_the_models_it_trains():
    assert training_stages("teacher") == ["grounding", "teacher"]
    assert training_stages("student") == ["student", "baseline", "oln", "oln_baseline"]
    assert training_stages("eval") == []
    # those one method trains (the notebooks' live curves and loss plots)
    assert (training_stages("teacher", "ggn"), training_stages("student", "cpl")) == (["teacher"], ["student"])
    assert training_stages("student", "oln") == ["student", "baseline", "oln", "oln_baseline"]
    # the OLN baseline depends on the same recipe sections as the student, so the same changes retrain it
    r = load_recipe("demo_ggn")
    assert _hash(r, "oln_baseline") == stage_hash(r, "student")
    assert _hash(load_recipe("demo_ggn", ["student.max_iter=7"]), "oln_baseline") != _hash(r, "oln_baseline")


def test_marker_needs_matching_hash_and_existing_outputs(tmp_path):
    r = load_recipe("demo_ggn")
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "model_final.pth").write_bytes(b"x")
    assert not stage_done(tmp_path, "teacher", r)
    mark_stage_done(tmp_path, "teacher", r, ["model_final.pth"])
    assert stage_done(tmp_path, "teacher", r)
    assert stage_done(tmp_path, "teacher", load_recipe("demo_ggn", ["student.max_iter=3"]))
    assert not stage_done(tmp_path, "teacher", load_recipe("demo_ggn", ["model.fpn_channels=8"]))
    (tmp_path / "teacher" / "model_final.pth").unlink()
    assert not stage_done(tmp_path, "teacher", r)


def test_the_run_layout_names_the_shared_paths_and_reads_a_stage_record(tmp_path):
    from ovis.engine.train import FINAL

    layout = RunLayout(tmp_path)
    assert layout.checkpoint("grounding") == tmp_path / "grounding" / FINAL  # the engine's name for it
    assert (layout.split("val.json"), layout.pseudo_gt, layout.pseudo_stats) == (
        tmp_path / "splits" / "val.json", tmp_path / "pseudo" / "train_pseudo.json", tmp_path / "pseudo" / "stats.json")
    assert (layout.detections(), layout.detections("student", "generalized")) == (
        tmp_path / "eval" / "detections.json", tmp_path / "eval" / "student" / "generalized" / "detections.json")
    with pytest.raises(ValueError, match="unknown stage 'grounding'"):
        layout.marker("grounding")  # a training folder has no stage record
    with pytest.raises(FileNotFoundError, match=r"teacher/stage.json not found; run the teacher stage first"):
        layout.record("teacher")
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / FINAL).write_bytes(b"x")
    r = load_recipe("demo_ggn")
    mark_stage_done(tmp_path, "teacher", r, [FINAL], result={"iteration": 2})
    assert layout.marker("teacher") == tmp_path / "teacher" / "stage.json"
    record = layout.record("teacher")
    assert (record["result"], record["recipe_hash"], record["outputs"]) == ({"iteration": 2}, stage_hash(r, "teacher"), [FINAL])


def test_the_run_layout_names_the_training_logs_eval_results_report_and_notebooks(tmp_path):
    from ovis.engine.train import METRICS
    from ovis.eval.report import write_metrics

    layout = RunLayout(tmp_path)
    assert layout.training_log("teacher") == tmp_path / "teacher" / METRICS  # the engine's name for it
    assert (layout.training_logs(), layout.eval_results()) == ({}, [])
    for folder in ("student", "grounding"):
        layout.folder(folder).mkdir()
        layout.training_log(folder).write_text("")
    layout.stage("splits").mkdir()  # a folder without a log
    assert layout.training_logs() == {"grounding": tmp_path / "grounding" / METRICS,
                                      "student": tmp_path / "student" / METRICS}
    result = {"protocol": "coco", "iou_type": "bbox", "metrics": {"stats": [0.0] * 12}}
    write_metrics(result, layout.stage("eval") / "student" / "bbox")
    write_metrics(result, layout.stage("eval"))
    assert layout.eval_results() == [tmp_path / "eval" / "metrics.json",
                                     tmp_path / "eval" / "student" / "bbox" / "metrics.json"]
    assert (layout.report, layout.notebooks) == (tmp_path / "curves" / "report.md", tmp_path / "notebooks")


def test_recorded_inputs_that_change_or_appear_make_a_stage_stale(tmp_path):
    r = load_recipe("demo_ggn")
    (tmp_path / "curves").mkdir()
    (tmp_path / "curves" / "report.md").write_text("x")
    (tmp_path / "teacher").mkdir()
    log = tmp_path / "teacher" / "metrics.jsonl"
    log.write_text('{"iteration": 1}\n')
    mark_stage_done(tmp_path, "curves", r, ["report.md"], inputs=["teacher/metrics.jsonl", "eval/stage.json"])
    assert stage_done(tmp_path, "curves", r)
    with open(log, "a") as f:  # a resumed run appends to its log
        f.write('{"iteration": 2}\n')
    assert not stage_done(tmp_path, "curves", r)
    mark_stage_done(tmp_path, "curves", r, ["report.md"], inputs=["teacher/metrics.jsonl", "eval/stage.json"])
    assert stage_done(tmp_path, "curves", r)
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "stage.json").write_text("{}")  # a stage that finishes later
    assert not stage_done(tmp_path, "curves", r)


def test_a_stage_is_stale_when_an_earlier_stage_rewrote_its_outputs(tmp_path):
    r = load_recipe("demo_ggn")
    for stage, out in (("splits", "train_base.json"), ("teacher", "model_final.pth")):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / out).write_text("first")
        mark_stage_done(tmp_path, stage, r, [out])
    inputs = json.loads((tmp_path / "teacher" / "stage.json").read_text())["inputs"]
    assert [i[0] for i in inputs] == ["splits/train_base.json"]
    assert stage_done(tmp_path, "teacher", r) and not inputs_changed(tmp_path, "teacher", r)
    (tmp_path / "splits" / "train_base.json").write_text("second, longer")
    assert not stage_done(tmp_path, "teacher", r)
    assert inputs_changed(tmp_path, "teacher", r)  # so the stage trains afresh instead of resuming
    assert not inputs_changed(tmp_path, "teacher", load_recipe("demo_ggn", ["teacher.max_iter=3"]))  # a new recipe: not "changed inputs"


def test_run_training_trains_records_skips_and_redoes_a_stage_whose_inputs_changed(tmp_path, monkeypatch):
    """ovis.methods.train.run_training: the pipeline stage's training stages, then its record (one result
    for a stage that trains only its namesake); done: read back as skipped; an input changed: from scratch."""
    from ovis.engine.train import FINAL, METRICS
    from ovis.methods import train

    calls = []

    def fake_train_stage(recipe, name, run_dir, force, stream, **launch_kw):
        calls.append((name, force, launch_kw))
        for f in (FINAL, METRICS):
            RunLayout(run_dir).folder(name).mkdir(exist_ok=True)
            (RunLayout(run_dir).folder(name) / f).write_text(name)
        return {"stage": name, "iteration": 2, "skipped": False}

    monkeypatch.setattr(train, "train_stage", fake_train_stage)
    r = load_recipe("demo_cpl")
    RunLayout(tmp_path).stage("splits").mkdir()
    RunLayout(tmp_path).split("train_base.json").write_text("{}")
    mark_stage_done(tmp_path, "splits", r, ["train_base.json"])
    trained = {n: {"stage": n, "iteration": 2, "skipped": False} for n in ("grounding", "teacher")}
    assert train.run_training(r, "teacher", tmp_path, key="results", nproc=2) == trained
    assert calls == [("grounding", False, {"nproc": 2}), ("teacher", False, {"nproc": 2})]
    assert RunLayout(tmp_path).record("teacher")["results"] == trained
    assert RunLayout(tmp_path).record("teacher")["outputs"] == [FINAL, METRICS]
    again = train.run_training(r, "teacher", tmp_path, key="results")
    assert len(calls) == 2 and again == {n: {**v, "skipped": True} for n, v in trained.items()}
    assert train.run_training(r, "student", tmp_path)["student"]["iteration"] == 2
    assert RunLayout(tmp_path).record("student")["result"] == {"stage": "student", "iteration": 2, "skipped": False}
    assert train.run_training(r, "student", tmp_path)["student"]["skipped"] and len(calls) == 3
    RunLayout(tmp_path).split("train_base.json").write_text('{"images": []}')  # the splits stage ran again
    train.run_training(r, "teacher", tmp_path, key="results")
    assert calls[3:] == [("grounding", True, {}), ("teacher", True, {})]


def test_splits_stage_reruns_when_a_source_file_changes(tmp_path):
    recipe = load_recipe("demo_ggn", {**tiny.GGN, "data.root": str(tmp_path / "data")})
    run = tmp_path / "run"
    counts = run_splits_stage(recipe, run)
    record = RunLayout(run).record("splits")
    val = tmp_path / "data" / "annotations" / "instances_val.json"
    assert sorted(Path(i[0]).name for i in record["inputs"]) == ["instances_train.json", "instances_val.json"]
    assert record["counts"] == counts and record["outputs"] == sorted(counts) + ["partition.json"]
    assert stage_done(run, "splits", recipe)
    written = RunLayout(run).split("val.json").stat().st_mtime_ns
    assert run_splits_stage(recipe, run) == counts  # skipped: the counts read back
    assert RunLayout(run).split("val.json").stat().st_mtime_ns == written
    coco = json.loads(val.read_text())
    coco["annotations"] = coco["annotations"][1:]
    val.write_text(json.dumps(coco))
    assert not stage_done(run, "splits", recipe)
    resplit = run_splits_stage(recipe, run)
    assert resplit["val.json"]["annotations"] == counts["val.json"]["annotations"] - 1
    assert len(json.loads(RunLayout(run).split("val.json").read_text())["annotations"]) == len(coco["annotations"])
    assert stage_done(run, "splits", recipe) and RunLayout(run).record("splits")["counts"] == resplit


def _hold(folder: Path) -> subprocess.Popen:
    """Another process that holds the lock on ``folder`` until killed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("OVIS_HELD_LOCKS", None)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline() == "locked\n"
    return proc


def _contents(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_a_second_splits_into_a_folder_in_use_fails_at_once_naming_it_and_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["splits", "--protocol", "coco_voc_nonvoc", "--train-instances", str(ANN / "instances_train2017.json"),
            "--val-instances", str(ANN / "instances_val2017.json"), "--out", str(out)]
    holder = _hold(out)
    try:
        before = _contents(out)
        assert ovis(args) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"ovis splits: error: {out} is in use by another ovis process (pid {holder.pid}); "
                       "wait for it to finish or write into another folder")
        assert _contents(out) == before
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder leaves its lock file, but no lock
        holder.wait()
    assert (out / LOCK).exists()
    assert ovis(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "partition.json", "train_base.json", "val.json"]


def test_a_child_of_the_holder_may_write_into_its_folder_and_nobody_else(tmp_path):
    run = tmp_path / "run"
    child = [sys.executable, "-c", "import sys; from ovis.locks import folder_lock\nwith folder_lock(sys.argv[1]): pass",
             str(run)]
    with folder_lock(run) as locked:
        assert locked == run and (run / LOCK).read_text() == str(os.getpid())
        with folder_lock(run):  # nested in this process
            pass
        assert (run / LOCK).is_file()
        inherit = subprocess.run(child, capture_output=True, text=True)  # e.g. the notebook kernel of a reproduce
        assert inherit.returncode == 0, inherit.stderr
        outsider = subprocess.run(child, capture_output=True, text=True,
                                  env={k: v for k, v in os.environ.items() if k != "OVIS_HELD_LOCKS"})
        assert outsider.returncode == 1 and FolderInUse.__name__ in outsider.stderr
        assert f"{run} is in use by another ovis process (pid {os.getpid()})" in outsider.stderr
    assert not run.exists()  # created for the lock, left empty: removed
    assert "OVIS_HELD_LOCKS" not in os.environ


@pytest.mark.parametrize("command", [["train", "--recipe", "demo_ggn", "--stage", "teacher"],
                                     ["reproduce", "demo_ggn", "--stages", "eval"]])
def test_a_second_training_or_reproduce_run_into_a_run_dir_in_use_fails_at_once(tmp_path, capsys, command):
    run = tmp_path / "runs" / "demo_ggn"
    (run / "teacher").mkdir(parents=True)
    (run / "teacher" / "last.pth").write_bytes(b"the other run's checkpoint")
    holder = _hold(run)
    try:
        before = {p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}
        assert ovis([*command, "--run-dir", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"ovis {command[0]}: error: {run} is in use by another ovis process (pid {holder.pid}); "
                       "wait for it to finish or write into another folder")
        assert {p.relative_to(run): (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()} == before
    finally:
        holder.kill()
        holder.wait()


def test_link_stages_links_finished_stages_and_names_an_unfinished_one(tmp_path):
    r = load_recipe("demo_cpl")
    run = tmp_path / "run"
    (run / "splits").mkdir(parents=True)
    (run / "splits" / "val.json").write_text("{}")
    mark_stage_done(run, "splits", r, ["val.json"])
    (run / "grounding").mkdir()
    (run / "grounding" / "model_final.pth").write_bytes(b"x")
    new = link_stages(run, tmp_path / "seed1", ["splits", "grounding"])
    assert (new / "splits").is_symlink() and (new / "splits" / "val.json").read_text() == "{}"
    assert stage_done(new, "splits", r)
    assert link_stages(run, new, ["splits"]) == new  # again: nothing to do
    with pytest.raises(FileNotFoundError, match=r"teacher/stage.json not found: the teacher stage of .* is not done"):
        link_stages(run, tmp_path / "seed2", ["teacher"])
