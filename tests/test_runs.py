"""Stage markers: a stage is redone only when a recipe section it depends on changes."""

from __future__ import annotations

import json
from pathlib import Path

import tiny

from ovis.config import load_recipe
from ovis.data.splits import run_splits_stage
from ovis.runs import STAGES, mark_stage_done, stage_done, stage_hash, training_stages


def test_changing_eval_does_not_retrain_and_changing_the_teacher_redoes_everything_after_it():
    base = load_recipe("demo_ggn")
    ev = load_recipe("demo_ggn", ["eval.max_images=5"])
    assert [stage_hash(base, s) == stage_hash(ev, s) for s in STAGES] == [True, True, True, True, False, False]
    te = load_recipe("demo_ggn", ["teacher.max_iter=7"])
    assert [stage_hash(base, s) == stage_hash(te, s) for s in STAGES] == [True, False, False, False, False, False]
    la = load_recipe("demo_ggn", ["launch.launcher=torchrun", "launch.nproc=2"])
    assert all(stage_hash(base, s) == stage_hash(la, s) for s in STAGES)  # where it runs changes nothing
    assert stage_hash(base, "baseline") == stage_hash(base, "student")  # engine stages map onto pipeline stages


def test_a_new_teacher_schedule_keeps_the_caption_grounding_but_a_new_grounding_one_does_not():
    base = load_recipe("demo_cpl")
    te = load_recipe("demo_cpl", ["teacher.max_iter=7"])
    assert stage_hash(base, "grounding") == stage_hash(te, "grounding")
    assert stage_hash(base, "teacher") != stage_hash(te, "teacher")
    gr = load_recipe("demo_cpl", ["grounding.max_iter=7"])
    assert stage_hash(base, "grounding") != stage_hash(gr, "grounding")
    assert stage_hash(base, "teacher") != stage_hash(gr, "teacher")  # the teacher starts from the grounding
    md = load_recipe("demo_cpl", ["model.min_size=128"])
    assert stage_hash(base, "grounding") != stage_hash(md, "grounding")


def test_each_pipeline_stage_names_the_models_it_trains():
    assert training_stages("teacher") == ["grounding", "teacher"]
    assert training_stages("student") == ["student", "baseline", "oln", "oln_baseline"]
    assert training_stages("eval") == []
    # the OLN baseline depends on the same recipe sections as the student, so the same changes retrain it
    r = load_recipe("demo_ggn")
    assert stage_hash(r, "oln_baseline") == stage_hash(r, "student")
    assert stage_hash(load_recipe("demo_ggn", ["student.max_iter=7"]), "oln_baseline") != stage_hash(r, "oln_baseline")


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


def test_splits_stage_reruns_when_a_source_file_changes(tmp_path):
    recipe = load_recipe("demo_ggn", {**tiny.GGN, "data.root": str(tmp_path / "data")})
    run = tmp_path / "run"
    run_splits_stage(recipe, run)
    inputs = json.loads((run / "splits" / "stage.json").read_text())["inputs"]
    val = tmp_path / "data" / "annotations" / "instances_val.json"
    assert sorted(Path(i[0]).name for i in inputs) == ["instances_train.json", "instances_val.json"]
    assert stage_done(run, "splits", recipe)
    coco = json.loads(val.read_text())
    coco["annotations"] = coco["annotations"][1:]
    val.write_text(json.dumps(coco))
    assert not stage_done(run, "splits", recipe)
    run_splits_stage(recipe, run)
    assert stage_done(run, "splits", recipe)
