"""The product path: `ovis reproduce` runs all six stage notebooks headlessly for both methods,
and a reproduce killed during training resumes from its checkpoint instead of restarting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch
from tiny import CPL, GGN, as_overrides

from ovis.pipeline import NOTEBOOKS, reproduce

COMMON = ["splits/train_base.json", "splits/val.json", "splits/partition.json", "teacher/model_final.pth",
          "teacher/last.pth", "teacher/metrics.jsonl", "teacher/recipe.yaml", "pseudo/train_pseudo.json",
          "pseudo/stats.json", "student/model_final.pth", "student/metrics.jsonl", "eval/detections.json",
          "eval/metrics.json", "curves/report.md", "curves/training.png"]
EXPECTED = {
    "demo_cpl": (CPL, COMMON + ["splits/val_novel.json", "splits/val_base.json", "splits/captions.json",
                                "grounding/model_final.pth", "eval/metrics.md"]),
    "demo_ggn": (GGN, COMMON + ["baseline/model_final.pth", "oln/model_final.pth"]),
}


def _images(nb_path: Path) -> int:
    nb = nbformat.read(nb_path, as_version=4)
    return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_six_notebooks_run_headless_and_write_every_stage_file(recipe, tmp_path, monkeypatch):
    tiny, files = EXPECTED[recipe]
    monkeypatch.chdir(tmp_path)
    results = reproduce(recipe, None, tmp_path / "run", as_overrides(tiny, **{"data.root": "data"}), log=lambda s: None)
    assert [r.status for r in results] == ["ran"] * 6
    run = tmp_path / "run"
    missing = [f for f in files if not (run / f).is_file()]
    assert not missing
    for stage, name in NOTEBOOKS.items():
        executed = run / "notebooks" / name
        assert executed.is_file(), stage
        assert executed.with_suffix(".kernel.log").is_file(), stage  # the kernel process's stderr
        if stage in ("splits", "teacher", "pseudo", "curves"):
            assert _images(executed) >= 1, f"{name} shows no figure"
    assert json.loads((run / "eval" / "metrics.json").read_text())["protocol"] == recipe.replace("demo_cpl", "demo_ovr").replace("demo_ggn", "demo_open_world")
    again = reproduce(recipe, ["teacher", "pseudo"], tmp_path / "run", as_overrides(tiny, **{"data.root": "data"}), log=lambda s: None)
    assert [r.status for r in again] == ["skipped", "skipped"]
    # a file an earlier stage wrote changes (its splits made again from edited annotations): what read it is redone
    train_base = run / "splits" / "train_base.json"
    coco = json.loads(train_base.read_text())
    train_base.write_text(json.dumps({**coco, "annotations": coco["annotations"][1:]}))
    final = run / "teacher" / "model_final.pth"
    before = final.stat().st_mtime_ns
    redo = reproduce(recipe, ["teacher", "pseudo"], tmp_path / "run", as_overrides(tiny, **{"data.root": "data"}), log=lambda s: None)
    assert [r.status for r in redo] == ["ran", "ran"]
    assert final.stat().st_mtime_ns != before  # trained afresh, not resumed from the finished checkpoint


def test_killed_reproduce_resumes_training_instead_of_restarting(tmp_path):
    overrides = as_overrides(GGN, **{"data.root": "data", "teacher.max_iter": 80, "teacher.checkpoint_period": 5})
    cmd = [sys.executable, "-m", "ovis.cli", "reproduce", "demo_ggn", "--stages", "splits,teacher", "--run-dir", "run"]
    for o in overrides:
        cmd += ["--set", o]
    last = tmp_path / "run" / "teacher" / "last.pth"
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not last.is_file() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert last.is_file(), "training never wrote a checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as a crash or a pre-empted job would
        proc.wait()
    time.sleep(3)  # the orphaned kernel notices its parent is gone and exits
    killed_at = torch.load(last, map_location="cpu", weights_only=True)["iteration"]
    assert 0 < killed_at < 80
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    teacher_nb = nbformat.read(tmp_path / "run" / "notebooks" / NOTEBOOKS["teacher"], as_version=4)
    text = "".join(o.get("text", "") for c in teacher_nb.cells for o in c.get("outputs", []))
    assert f"resumed from {last.relative_to(tmp_path)} at iteration" in text
    iterations = [json.loads(line)["iteration"] for line in (last.parent / "metrics.jsonl").read_text().splitlines()]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 80
