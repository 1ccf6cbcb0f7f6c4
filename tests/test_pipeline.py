"""`ovis reproduce` runs stage notebooks headlessly, skips finished stages, names a failing cell."""

from __future__ import annotations

import shutil

import nbformat
import pytest

from ovis.pipeline import NOTEBOOKS, main, notebook_dir, parse_stages, reproduce

TINY = ["data.demo_num_train=6", "data.demo_num_val=4", "data.demo_image_size=64"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_splits_stage_notebook_runs_and_is_skipped_when_done(workdir):
    log: list[str] = []
    results = reproduce("demo_cpl", ["splits"], workdir / "run", TINY + ["data.root=data"], log=log.append)
    assert [r.status for r in results] == ["ran"]
    split = workdir / "run" / "splits"
    for name in ("train_base.json", "val.json", "val_novel.json", "val_base.json", "partition.json", "captions.json"):
        assert (split / name).is_file(), name
    executed = nbformat.read(workdir / "run" / "notebooks" / "00_splits.ipynb", as_version=4)
    assert executed.metadata["papermill"]["parameters"]["recipe"] == "demo_cpl"
    pngs = [o for c in executed.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pngs) == 2  # class-count bars and the example grid
    assert all("duration" in c.metadata.get("papermill", {}) for c in executed.cells if c.cell_type == "code")
    again = reproduce("demo_cpl", ["splits"], workdir / "run", TINY + ["data.root=data"], log=log.append)
    assert [r.status for r in again] == ["skipped"]
    assert any("skipped" in line for line in log) and any("done in" in line for line in log)
    # a different recipe (hash) re-runs the stage
    changed = reproduce("demo_cpl", ["splits"], workdir / "run", TINY + ["data.root=data", "data.demo_seed=3"], log=log.append)
    assert [r.status for r in changed] == ["ran"]


def test_failing_stage_is_named_with_its_cell_and_earlier_outputs_stay(workdir, monkeypatch, capsys):
    nbs = workdir / "nbs"
    nbs.mkdir()
    shutil.copy(notebook_dir() / NOTEBOOKS["splits"], nbs / NOTEBOOKS["splits"])
    bad = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('recipe = ""\nrun_dir = ""')
    cell.metadata["tags"] = ["parameters"]
    bad.cells = [cell, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('teacher exploded')")]
    bad.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(bad, nbs / NOTEBOOKS["teacher"])
    monkeypatch.setenv("OVIS_NOTEBOOKS", str(nbs))
    args = ["demo_cpl", "--stages", "splits,teacher", "--run-dir", str(workdir / "run")]
    for o in TINY + ["data.root=data"]:
        args += ["--set", o]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "stage teacher failed in code cell 3 (raise RuntimeError" in err and "RuntimeError: teacher exploded" in err
    assert (workdir / "run" / "splits" / "train_base.json").is_file()
    assert (workdir / "run" / "notebooks" / NOTEBOOKS["teacher"]).is_file()  # partial record kept


def test_stage_selection_and_listing(capsys):
    assert parse_stages("eval,splits") == ["splits", "eval"]
    with pytest.raises(ValueError, match="unknown stage"):
        parse_stages("splits,training")
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "demo_ggn" in out and "00_splits.ipynb" in out
    assert "method oln (ovis.methods.ggn): splits -> teacher -> pseudo -> student -> eval -> curves" in out
    assert main(["--params", "--stages", "splits"]) == 0
    assert "recipe = \"demo_cpl\"" in capsys.readouterr().out
    assert main(["nosuchrecipe"]) == 2
