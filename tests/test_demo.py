"""`ovis demo`: both demo recipes side by side, lines prefixed by recipe, one failure stops the other."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tiny import CPL, GGN, as_overrides

from ovis.config import recipe_dir
from ovis.demo import threads_per_run


def test_threads_are_shared_out_and_never_zero():
    assert threads_per_run(1) >= threads_per_run(2) >= 1
    assert threads_per_run(10_000) == 1


def test_both_recipes_run_side_by_side_with_prefixed_lines_and_a_summary(tmp_path):
    # the splits-only part of both demos (each run: one notebook kernel), on tiny demo data
    overrides = sorted(set(as_overrides(CPL, **{"data.root": "data"})) & set(as_overrides(GGN, **{"data.root": "data"})))
    cmd = [sys.executable, "-m", "ovis.cli", "demo", "--stages", "splits", *[a for o in overrides for a in ("--set", o)]]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("running demo_cpl, demo_ggn in parallel, ")
    for name in ("demo_cpl", "demo_ggn"):
        assert any(line.startswith(f"{name} | [1/1] splits: done in ") for line in lines), done.stdout
        assert (tmp_path / "runs" / name / "notebooks" / "00_splits.kernel.log").is_file()
        counts = json.loads((tmp_path / "runs" / name / "splits" / "stage.json").read_text())["counts"]
        assert counts
    assert "| recipe | model / setting | protocol | metrics (%) |" in lines
    assert "IPKernelApp" not in done.stdout + done.stderr and done.stderr == ""
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["parameters"]["num_train"] == CPL["data.demo_num_train"]


def test_a_failing_run_stops_the_other_and_the_exit_code_says_so(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {recipe_dir() / 'demo_cpl.yaml'}\ndata: {{demo: false, root: nowhere}}\n")
    slow = tmp_path / "slow.yaml"  # would train for minutes
    slow.write_text(f"extends: {recipe_dir() / 'demo_ggn.yaml'}\ndata: {{root: data, demo_num_train: 6, demo_num_val: 4, demo_image_size: 64}}\n"
                    "teacher: {max_iter: 100000}\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ovis.cli", "demo", str(slow), str(bad)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert f"ovis demo: {bad} failed (exit 2); the other run was stopped" in done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith(str(bad)) and "| ovis reproduce: error: nowhere/" in line for line in lines), done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert time.monotonic() - start < 300
    assert not (tmp_path / "runs" / "demo_ggn" / "teacher" / "model_final.pth").exists()


def test_an_unknown_recipe_is_one_line_before_anything_starts(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ovis.cli", "demo", "demo_cpl", "no_such_recipe"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("ovis demo: error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "no_such_recipe" in done.stderr
    assert list(tmp_path.iterdir()) == []
