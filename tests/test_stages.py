"""ovis.stages.execute: one pipeline stage's skip-or-run, its done-marker and its record."""

from __future__ import annotations

import pytest

from ovis.methods import load_recipe
from ovis.runs import RunLayout, mark_stage_done, stage_done
from ovis.stages import Pending, execute


class Stage:
    """A pseudo stage that writes ``pseudo/out.txt`` and counts its runs (and whether each started afresh)."""

    def __init__(self, run_dir, fail: bool = False, pending: bool = False) -> None:
        self.run_dir, self.fail, self.pending, self.calls = run_dir, fail, pending, []

    def run(self, afresh: bool):
        self.calls.append(afresh)
        if self.fail:
            raise RuntimeError("crashed mid-stage")
        out = RunLayout(self.run_dir).stage("pseudo")
        out.mkdir(parents=True, exist_ok=True)
        (out / "out.txt").write_text("done")
        result = {"n": len(self.calls)}
        return Pending(result) if self.pending else result

    def __call__(self, recipe, force: bool = False):
        return execute(recipe, "pseudo", self.run_dir, self.run, outputs=["out.txt"], force=force,
                       read=lambda record: {**record["result"], "skipped": True},
                       record=lambda result: {"result": result})


@pytest.fixture
def run(tmp_path):
    """A run folder whose splits stage is done: its ``train_base.json`` is an input of the later stages."""
    recipe = load_recipe("demo_ggn")
    RunLayout(tmp_path).stage("splits").mkdir()
    RunLayout(tmp_path).split("train_base.json").write_text("{}")
    mark_stage_done(tmp_path, "splits", recipe, ["train_base.json"])
    return tmp_path, recipe


def test_runs_marks_done_with_record_then_skips_reading_it_back(run):
    run_dir, recipe = run
    stage = Stage(run_dir)
    assert stage(recipe) == {"n": 1} and stage.calls == [False]
    record = RunLayout(run_dir).record("pseudo")
    assert record["outputs"] == ["out.txt"] and record["result"] == {"n": 1}
    assert [i[0] for i in record["inputs"]] == ["splits/train_base.json"]
    assert stage(recipe) == {"n": 1, "skipped": True} and stage.calls == [False]
    # another recipe hash for the stage: runs again, resuming (not afresh)
    assert stage(load_recipe("demo_ggn", ["pseudo.top_k=5"])) == {"n": 2} and stage.calls == [False, False]


def test_changed_input_file_or_force_redoes_afresh(run):
    run_dir, recipe = run
    stage = Stage(run_dir)
    stage(recipe)
    RunLayout(run_dir).split("train_base.json").write_text('{"images": []}')  # the splits stage ran again
    assert stage(recipe) == {"n": 2} and stage.calls == [False, True]
    assert stage(recipe)["skipped"]
    assert stage(recipe, force=True) == {"n": 3} and stage.calls == [False, True, True]


def test_a_missing_output_reruns_the_stage(run):
    run_dir, recipe = run
    stage = Stage(run_dir)
    stage(recipe)
    (RunLayout(run_dir).stage("pseudo") / "out.txt").unlink()
    assert stage(recipe) == {"n": 2} and stage.calls == [False, False]


def test_a_crash_inside_run_leaves_no_marker(run):
    run_dir, recipe = run
    with pytest.raises(RuntimeError, match="crashed"):
        Stage(run_dir, fail=True)(recipe)
    assert not RunLayout(run_dir).marker("pseudo").exists()
    stage = Stage(run_dir)
    assert stage(recipe) == {"n": 1} and stage.calls == [False]  # the rerun resumes


def test_a_crash_when_redoing_leaves_the_old_marker_not_done(run):
    run_dir, recipe = run
    Stage(run_dir)(recipe)
    RunLayout(run_dir).split("train_base.json").write_text('{"images": []}')
    with pytest.raises(RuntimeError):
        Stage(run_dir, fail=True)(recipe)
    assert not stage_done(run_dir, "pseudo", recipe)
    stage = Stage(run_dir)
    assert stage(recipe) == {"n": 1} and stage.calls == [True]  # still afresh: the input still changed


def test_a_pending_stage_returns_its_result_unmarked(run):
    run_dir, recipe = run
    stage = Stage(run_dir, pending=True)
    assert stage(recipe) == {"n": 1}
    assert not RunLayout(run_dir).marker("pseudo").exists()
    assert stage(recipe) == {"n": 2}


def test_outputs_from_the_result_and_inputs_are_recorded(run):
    run_dir, recipe = run
    source = run_dir / "source.json"
    source.write_text("{}")
    calls = []

    def stage(force: bool = False):
        def write(afresh: bool) -> list[str]:
            calls.append(afresh)
            out = RunLayout(run_dir).stage("pseudo")
            out.mkdir(parents=True, exist_ok=True)
            (out / "a.txt").write_text("a")
            return ["a.txt"]

        return execute(recipe, "pseudo", run_dir, write, outputs=lambda written: written, inputs=[source],
                       read=lambda record: record["outputs"], force=force)

    assert stage() == ["a.txt"]
    record = RunLayout(run_dir).record("pseudo")
    assert record["outputs"] == ["a.txt"]
    assert [i[0] for i in record["inputs"]] == sorted([source.as_posix(), "splits/train_base.json"])
    assert stage() == ["a.txt"] and calls == [False]  # read back
    source.write_text('{"changed": true}')  # a source file the stage read: redone afresh
    assert stage() == ["a.txt"] and calls == [False, True]
