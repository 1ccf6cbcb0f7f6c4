"""Notebook 04_eval runs headless on a run folder built from real COCO GT and writes its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import papermill as pm

from ovis.eval.synthetic import class_agnostic, synthetic_detections
from ovis.viz.curves import plot_ap50_per_class, plot_ar_vs_k

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "notebooks" / "04_eval.ipynb"
VAL = ROOT / "tests" / "data" / "real" / "coco_mini" / "annotations" / "instances_val2017.json"
VOC = {1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72}


def test_notebook_evaluates_an_open_world_run(tmp_path):
    gt = json.loads(VAL.read_text())
    gt["images"] = gt["images"][:20]
    keep = {i["id"] for i in gt["images"]}
    gt["annotations"] = [{**a, "ignored_split": int(a["category_id"] in VOC)} for a in gt["annotations"] if a["image_id"] in keep]
    run = tmp_path / "run"
    (run / "splits").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "splits" / "val.json").write_text(json.dumps(gt))
    cats = {c["id"]: c["name"] for c in gt["categories"]}
    partition = {"protocol": "demo_open_world", "base": [{"id": i, "name": cats[i]} for i in sorted(VOC)],
                 "novel": [{"id": i, "name": n} for i, n in cats.items() if i not in VOC]}
    (run / "splits" / "partition.json").write_text(json.dumps(partition))
    (run / "eval" / "detections.json").write_text(json.dumps(class_agnostic(synthetic_detections(gt, 15, seed=2), 1)))
    pm.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="python3", progress_bar=False,
                        parameters={"recipe": "demo_ggn", "run_dir": str(run),
                                                               "detections": str(run / "eval" / "detections.json")}, cwd=str(ROOT))
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["protocol"] == "demo_open_world" and 0 < metrics["metrics"]["AR@100"] <= 1
    assert (run / "eval" / "metrics.md").read_text().startswith("# demo_open_world (segm)")
    assert (run / "eval" / "ar_vs_k_eval.png").stat().st_size > 10_000


def test_plots_draw_ours_beside_the_papers():
    fig = plot_ar_vs_k({"AR@10": 0.1, "AR@100": 0.3, "AR@1000": 0.45, "AR_s@100": 0.1}, "bbox")
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels[0] == "ovis" and "OLN-Box (paper)" in labels
    assert list(fig.axes[0].lines[0].get_xdata()) == [10, 100, 1000]
    fig = plot_ap50_per_class({"cat": 0.2, "dog": 0.5, "cake": -1.0}, ["dog"], ["cat", "cake"])
    bars = fig.axes[0].patches
    assert len(bars) == 2 and bars[0].get_height() == 50.0  # base first; "cake" (no GT) left out
