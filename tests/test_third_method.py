"""A third method is a new folder plus one registry line (issue #16): tests/toy_method/ is that folder
(two stages: ``teacher`` trains with the engine, ``eval`` scores the trained net), the tests add its line
to ``ovis.registry.METHOD_MODULES`` and run it through ``ovis reproduce``, notebooks and all."""

from __future__ import annotations

import json
import os
import re
import sys
import types
from pathlib import Path

import nbformat
import pytest
import torch
from toy_task import SquareDataset, SquareNet

from ovis.cli import main as ovis
from ovis.config import RecipeError, load_recipe
from ovis.engine.train import CheckpointError
from ovis.eval import evaluate
from ovis.methods import HOOKS, for_recipe, method_module
from ovis.pipeline import NOTEBOOKS, check_run_files, notebook_dir, reproduce
from ovis.registry import METHOD_MODULES
from ovis.runs import stage_hash

TESTS = Path(__file__).resolve().parent
ITERATIONS = 12
RECIPE = f"""\
method: toy
description: a third method on toy data (tests/toy_method)
teacher: {{max_iter: {ITERATIONS}, batch_size: 4, lr: 0.01, warmup_iters: 0, num_workers: 0, log_period: 2,
          checkpoint_period: 6}}
eval: {{protocol: coco, iou_types: [bbox]}}
"""


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy method's registry line, in this process and in every notebook kernel ``ovis reproduce``
    starts (an IPython startup file; a newcomer writes the line into ovis/registry.py, which a test must
    not edit), its folder importable there; returns its recipe."""
    monkeypatch.setitem(METHOD_MODULES, "toy", "toy_method")
    startup = tmp_path / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "toy.py").write_text('from ovis.registry import METHOD_MODULES\nMETHOD_MODULES["toy"] = "toy_method"\n')
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p))
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text(RECIPE)
    return recipe


def test_a_third_method_runs_its_two_stages_through_reproduce(toy: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert ovis(["reproduce", str(toy), "--run-dir", str(run)]) == 0
    assert sorted(p.name for p in (run / "notebooks").glob("*.ipynb")) == [NOTEBOOKS["teacher"], NOTEBOOKS["eval"]]
    recipe = load_recipe(toy)
    # teacher: the engine trained SquareNet for the recipe's schedule
    marker = json.loads((run / "teacher" / "stage.json").read_text())
    assert marker["recipe_hash"] == stage_hash(recipe, "teacher")
    assert marker["outputs"] == ["model_final.pth", "metrics.jsonl"] and marker["result"]["iteration"] == ITERATIONS
    ckpt = torch.load(run / "teacher" / "model_final.pth", weights_only=True)
    assert ckpt["iteration"] == ITERATIONS and ckpt["model"].keys() == SquareNet().state_dict().keys()
    logged = [json.loads(line)["iteration"] for line in (run / "teacher" / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(2, ITERATIONS + 1, 2))
    # eval: the detections are what the trained net predicts on the held-out images, scored by ovis.eval
    net = SquareNet()
    net.load_state_dict(ckpt["model"])
    images = [img for img, _ in SquareDataset(n=8, seed=1).items]
    with torch.no_grad():
        out = net.eval().head(torch.cat([net.pool(net.backbone(im[None])) for im in images]))
    dets = json.loads((run / "eval" / "detections.json").read_text())
    assert [d["category_id"] for d in dets] == (out[:, 4:].argmax(1) + 1).tolist()
    assert [d["score"] for d in dets] == pytest.approx(out[:, 4:].softmax(1).max(1).values.tolist())
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert (metrics["protocol"], metrics["iou_type"], metrics["num_images"], metrics["num_detections"]) == \
        ("coco", "bbox", 8, 8)
    assert metrics["metrics"] == evaluate("coco", run / "eval" / "gt.json", run / "eval" / "detections.json",
                                          "bbox")["metrics"]
    marker = json.loads((run / "eval" / "stage.json").read_text())
    assert marker["recipe_hash"] == stage_hash(recipe, "eval")
    assert "teacher/model_final.pth" in [i[0] for i in marker["inputs"]]
    # the notebooks showed what the stages made: loss curves and the method's figure, the metrics table
    teacher_nb = nbformat.read(run / "notebooks" / NOTEBOOKS["teacher"], as_version=4)
    assert sum("image/png" in o.get("data", {}) for c in teacher_nb.cells for o in c.get("outputs", [])) == 2
    assert "# coco (bbox)" in nbformat.writes(nbformat.read(run / "notebooks" / NOTEBOOKS["eval"], as_version=4))
    assert [r.status for r in reproduce(str(toy), None, run, log=lambda _: None)] == ["skipped", "skipped"]


def test_the_registry_names_the_third_method_and_checks_what_it_provides(toy: Path, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(toy)
    with pytest.raises(RecipeError, match="method='sam' must be one of cpl, ggn, oln, toy"):
        load_recipe(toy, ["method=sam"])
    with pytest.raises(ValueError, match="method 'toy' has no pseudo stage; its stages: teacher, eval"):
        reproduce(str(toy), ["teacher", "pseudo"], tmp_path / "run")
    with pytest.raises(ValueError, match="method 'toy' has no student stage"):
        for_recipe(recipe, "student")
    # the checkpoint pre-check builds the model the toy declares for its training stage
    run = tmp_path / "run"
    (run / "teacher").mkdir(parents=True)
    torch.save({"model": SquareNet().state_dict()}, run / "teacher" / "model_final.pth")
    check_run_files(run, "eval", set(), recipe)
    torch.save({"model": {"backbone.0.weight": torch.zeros(1)}}, run / "teacher" / "model_final.pth")
    with pytest.raises(CheckpointError, match=r"'backbone.0.weight' has shape \(1\), the recipe's model needs"):
        check_run_files(run, "eval", set(), recipe)
    # a method that lacks a hook its stages call is named with what it lacks
    half = types.ModuleType("half_method")
    half.PIPELINE_STAGES = ("teacher", "eval")  # type: ignore[attr-defined]
    half.TRAINING_STAGES = {}  # type: ignore[attr-defined]
    half.run_teacher = half.run_eval = lambda *a, **k: {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "half_method", half)
    monkeypatch.setitem(METHOD_MODULES, "half", "half_method")
    with pytest.raises(ValueError, match=r"method 'half' \(half_method\) lacks teacher_figures \(teacher\)"):
        method_module("half")
    half.PIPELINE_STAGES = ("eval", "teacher")  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="PIPELINE_STAGES must be a non-empty tuple of pipeline stages in the order"):
        method_module("half")
    half.PIPELINE_STAGES = ("teacher", "eval")  # type: ignore[attr-defined]
    half.teacher_figures = half.run_teacher  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"method 'half' \(half_method\) lacks SECTIONS"):
        method_module("half")


def test_the_hooks_the_registry_checks_are_those_the_notebooks_call() -> None:
    for stage, name in NOTEBOOKS.items():
        nb = nbformat.read(notebook_dir() / name, as_version=4)
        code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert set(re.findall(r'for_recipe\(r, "(\w+)"\)', code)) <= {stage}, name
        called = re.findall(r"\bmethod\.(\w+)\(", code) + re.findall(r'for_recipe\(r, "\w+"\)\.(\w+)\(', code)
        assert sorted(set(called)) == sorted(HOOKS[stage]), name
