"""Curves stage: training-log parsing and smoothing, ours-vs-paper tables, the report, CLI and notebook 05."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nbformat
import numpy as np
import papermill as pm
import pytest
from matplotlib.figure import Figure

from ovis.config import load_recipe
from ovis.eval import evaluate
from ovis.eval.report import write_metrics
from ovis.eval.synthetic import class_agnostic, synthetic_detections
from ovis.runs import RunLayout, stage_hash
from ovis.viz.curves import (
    find_eval_results,
    load_metrics_jsonl,
    main,
    metric_figures,
    paper_table,
    plot_ar_vs_k,
    plot_training,
    run_curves_stage,
    smooth,
    training_summary,
)

ROOT = Path(__file__).parents[1]
NOTEBOOK = ROOT / "notebooks" / "05_curves.ipynb"
VAL = ROOT / "tests" / "data" / "real" / "coco_mini" / "annotations" / "instances_val2017.json"
VOC = [1, 2, 3, 4, 5, 6, 7, 9, 16, 17, 18, 19, 20, 21, 44, 62, 63, 64, 67, 72]


def _row(it: int, lr: float, scale: float = 1.0) -> dict:
    cls, box = 2.0 * scale * math.exp(-it / 80), 0.5 * scale * math.exp(-it / 300)
    return {"iteration": it, "loss_classifier": cls, "loss_box_reg": box, "total_loss": cls + box, "lr": lr,
            "time_per_iter": 0.5, "images_per_s": 8.0 + it / 100, "max_mem_mb": 100.0 + it}


def _write_logs(run: Path) -> None:
    """teacher: logged 20..160, crashed, resumed from 100 (120..300 logged again, different values),
    crashed again mid-line; student: 20..400 with a step decay of the lr."""
    (run / "teacher").mkdir(parents=True)
    first = [_row(it, 0.01, scale=9.0) for it in range(20, 161, 20)]
    resumed = [_row(it, 0.01) for it in range(120, 301, 20)]
    text = "".join(json.dumps(r) + "\n" for r in first + resumed) + '{"iteration": 320, "total_lo'
    (run / "teacher" / "metrics.jsonl").write_text(text)
    (run / "student").mkdir()
    rows = [_row(it, 0.02 if it <= 300 else 0.002) for it in range(20, 401, 20)]
    (run / "student" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def eval_results() -> dict[str, dict]:
    gt = json.loads(VAL.read_text())
    gt["images"] = gt["images"][:12]
    keep = {i["id"] for i in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in keep]
    dets = synthetic_detections(gt, 12, seed=3)
    agnostic = class_agnostic(dets, 1)
    partition = {"protocol": "demo_open_world", "base": VOC, "novel": []}
    return {
        "ow_segm": evaluate("demo_open_world", gt, agnostic, "segm", partition),
        "ow_bbox": evaluate("demo_open_world", gt, agnostic, "bbox", partition),
        "ovr_segm": evaluate("coco_ovr_48_17", gt, dets, "segm"),
    }


@pytest.fixture
def ggn_run(tmp_path, eval_results) -> Path:
    run = tmp_path / "run"
    _write_logs(run)
    write_metrics(eval_results["ow_segm"], run / "eval" / "student" / "segm")
    write_metrics(eval_results["ow_bbox"], run / "eval" / "student" / "bbox")
    (run / "splits").mkdir()
    (run / "splits" / "partition.json").write_text(json.dumps({"protocol": "demo_open_world", "base": VOC,
                                                               "novel": [8, 10, 11]}))
    return run


def test_metrics_jsonl_keeps_the_last_line_per_iteration_and_skips_a_truncated_end(ggn_run):
    rows = load_metrics_jsonl(ggn_run / "teacher" / "metrics.jsonl")
    assert [r["iteration"] for r in rows] == list(range(20, 301, 20))
    assert rows[5]["total_loss"] == pytest.approx(_row(120, 0.01)["total_loss"])  # the resumed run's value
    assert rows[4]["total_loss"] == pytest.approx(_row(100, 0.01, scale=9.0)["total_loss"])


def test_a_bad_line_before_the_end_warns_with_its_line_number(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "loss": 2.0}\n{"iteration": 2, "lo{"iteration": 1, "loss": 1.0}\n\n'
                    '{"iteration": 3, "loss": 0.5}\n')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:2: not a JSON object"):
        rows = load_metrics_jsonl(path)
    assert [(r["iteration"], r["loss"]) for r in rows] == [(1, 2.0), (3, 0.5)]


def test_a_resume_drops_the_earlier_runs_lines_from_its_first_iteration_on(tmp_path):
    path = tmp_path / "metrics.jsonl"
    its = [20, 40, 60, 80, 40, 60, 20, 40]  # resumed at 40 (crash after 80), then at 20 (crash after 60)
    path.write_text("".join(json.dumps({"iteration": it, "loss": i}) + "\n" for i, it in enumerate(its)))
    assert [(r["iteration"], r["loss"]) for r in load_metrics_jsonl(path)] == [(20, 6), (40, 7)]


def test_smooth_is_a_trailing_mean():
    np.testing.assert_allclose(smooth([1, 2, 3, 4, 5], 2), [1, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(smooth([3, 0, 6, 3], 3), [3, 1.5, 3, 3])
    np.testing.assert_allclose(smooth([1, 5], 1), [1, 5])
    assert smooth([], 4).shape == (0,)
    with pytest.raises(ValueError, match="window must be >= 1"):
        smooth([1.0], 0)


def test_a_plot_into_a_subfigures_axes_returns_the_root_figure():
    fig = Figure()
    ax = fig.subfigures(1, 2)[0].subplots()  # a SubFigure has no tight_layout
    assert plot_ar_vs_k({"AR@10": 0.2, "AR@100": 0.4}, "segm", ax=ax) is fig


def test_training_summary_and_figure(ggn_run):
    s = training_summary(load_metrics_jsonl(ggn_run / "student" / "metrics.jsonl"))
    tail = [_row(it, 0.002) for it in range(320, 401, 20)]
    assert s["iteration"] == 400 and s["lines"] == 20 and s["lr"] == 0.002 and s["memory_mb"] == 500.0
    assert s["total"] == pytest.approx(np.mean([r["total_loss"] for r in tail]))
    assert s["images_per_s"] == pytest.approx(np.mean([r["images_per_s"] for r in tail]))
    assert set(s) >= {"loss_classifier", "loss_box_reg"}
    fig = plot_training(ggn_run, smooth_window=20)
    ax_loss, ax_lr = fig.axes[0], fig.axes[1]
    assert len(fig.axes) == 4 and "teacher" in ax_loss.get_title() and "student" in fig.axes[2].get_title()
    labels = [line.get_label() for line in ax_loss.lines if not line.get_label().startswith("_")]
    assert labels == ["total", "classifier", "box_reg"]
    assert ax_loss.get_yscale() == "log" and ax_lr.get_yscale() == "linear" and fig.axes[3].get_yscale() == "log"
    smoothed = ax_loss.lines[1].get_ydata()  # 15 lines -> window capped at 3
    assert smoothed[2] == pytest.approx(np.mean([_row(it, 0.01, 9.0)["total_loss"] for it in (20, 40, 60)]))


def test_plot_training_skips_stages_without_a_log_and_says_so_when_none_has_one(ggn_run):
    # the notebooks pass their method's stages: one of them (baseline here) may have logged nothing
    fig = plot_training(ggn_run, ["baseline", "student"])
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["student", "student"]
    (ax,) = plot_training(ggn_run, ["baseline", "oln"]).axes  # not an error: a placeholder naming them
    assert [t.get_text() for t in ax.texts] == [f"no baseline|oln/metrics.jsonl under {ggn_run}"]
    (ax,) = plot_training(ggn_run / "untrained").axes
    assert [t.get_text() for t in ax.texts] == [f"no <stage>/metrics.jsonl under {ggn_run / 'untrained'}"]


def test_paper_table_open_world_demo_says_not_comparable(eval_results):
    recipe = load_recipe("demo_ggn")
    results = [{**eval_results["ow_segm"], "label": "student/segm"},
               {**eval_results["ow_bbox"], "label": "student/bbox"}]
    md = paper_table(results, recipe)
    assert md.count("**Not comparable:**") == 2 and "for COCO" in md
    ours = f"{100 * eval_results['ow_segm']['metrics']['AR@100']:.1f}"
    segm, bbox = md.split("### demo_open_world, box")
    row = next(line for line in segm.splitlines() if line.startswith("| AR@100 |"))
    assert row.split(" | ")[1] == ours and "28.7" in row  # GGN (Mask R-CNN) mask AR@100, first for a ggn recipe
    assert segm.index("GGN (Mask R-CNN) (paper)") < segm.index("v-CLR (paper)")
    assert "| AUC |" in bbox and "24.8" in bbox and "| AR@1000 |" in bbox and "45.0" in bbox
    assert "mcahny/object_localization_network" in md and "Generic-Grouping" in md


def test_paper_table_ovr_puts_generalized_numbers_beside_the_papers(eval_results):
    recipe = load_recipe("cpl_coco")
    r = eval_results["ovr_segm"]
    md = paper_table([{**r, "label": "student/segm"}, {**r, "label": "constrained/segm"}], recipe)
    assert "Not comparable" not in md and "betrayed-by-captions" in md
    lines = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in md.splitlines() if line.startswith("| ")}
    assert lines["AP50 (%)"][3] == "XPM / CPL (paper)"  # the recipe's own method first
    novel = lines["generalized novel"]
    assert novel[1] == f"{100 * r['metrics']['AP50_novel']:.1f}" and novel[2] == "–" and novel[3] == "21.6"
    assert lines["constrained novel"][1:4] == ["–", f"{100 * r['metrics']['AP50_novel']:.1f}", "24.0"]
    no_results = paper_table([], recipe)
    assert no_results.startswith("No `eval/**/metrics.json` found") and "36.3" in no_results


def test_ovr_figure_has_split_and_per_class_panels(eval_results):
    figs = metric_figures([{**eval_results["ovr_segm"], "label": "student/segm"}])
    fig = figs["ap50_student_segm"]
    assert len(fig.axes) == 2
    ours = [p.get_height() for p in fig.axes[0].containers[0]]
    metrics = eval_results["ovr_segm"]["metrics"]
    assert ours == pytest.approx([100 * metrics[f"AP50_{s}"] for s in ("base", "novel", "all")])


def test_report_stage_marker_skip_and_rerun_on_new_logs(ggn_run, eval_results):
    recipe = load_recipe("demo_ggn")
    report = run_curves_stage(recipe, ggn_run)
    out = ggn_run / "curves"
    assert report == out / "report.md"
    names = ["training.png", "ar_vs_k_student_bbox.png", "ar_vs_k_student_segm.png"]
    for name in names:
        assert (out / name).stat().st_size > 10_000
    text = report.read_text()
    assert recipe.hash() in text and "Stages found: teacher, student" in text
    assert f"{100 * eval_results['ow_segm']['metrics']['AR@10']:.1f}" in text and "28.7" in text
    assert "**Not comparable:**" in text and all(f"[{n}]({n})" in text for n in names)
    assert "| student | 400 |" in text and "| teacher | 300 |" in text
    marker = json.loads((out / "stage.json").read_text())
    assert marker["recipe_hash"] == stage_hash(recipe, "curves") and marker["outputs"] == ["report.md", *names]
    read = {i[0] for i in marker["inputs"] if i[1] is not None}  # the files the report read (markers absent)
    assert read == {"teacher/metrics.jsonl", "student/metrics.jsonl", "splits/partition.json",
                    *(p.relative_to(ggn_run).as_posix() for p in RunLayout(ggn_run).eval_results())}
    mtime = report.stat().st_mtime_ns
    assert run_curves_stage(recipe, ggn_run) == report and report.stat().st_mtime_ns == mtime  # skipped
    with open(ggn_run / "student" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(_row(420, 0.002)) + "\n")
    run_curves_stage(recipe, ggn_run)
    assert "| student | 420 |" in report.read_text()  # a changed log makes the report stale


def test_eval_metrics_without_the_contract_keys_are_named(tmp_path):
    (tmp_path / "eval" / "x").mkdir(parents=True)
    (tmp_path / "eval" / "x" / "metrics.json").write_text('{"AR@100": 0.2}')
    with pytest.raises(ValueError, match=r"x/metrics.json: expected the keys protocol, iou_type, metrics"):
        find_eval_results(tmp_path)


def test_cli(ggn_run, capsys):
    assert main(["--recipe", "demo_ggn", "--run-dir", str(ggn_run), "--set", "teacher.max_iter=300"]) == 0
    assert capsys.readouterr().out.strip() == str(ggn_run / "curves" / "report.md")
    assert main(["--recipe", "demo_ggn", "--run-dir", str(ggn_run / "nope")]) == 2
    assert "ovis curves: error: run dir" in capsys.readouterr().err
    assert main(["--recipe", "demo_ggn", "--run-dir", str(ggn_run), "--set", "teacher.nope=1"]) == 2
    assert "ovis curves: error:" in capsys.readouterr().err


def test_notebook_shows_curves_and_report(ggn_run, tmp_path):
    out = tmp_path / "out.ipynb"
    pm.execute_notebook(str(NOTEBOOK), str(out), kernel_name="python3", progress_bar=False,
                        parameters={"run_dir": str(ggn_run)}, cwd=str(ROOT))
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # training + two AR@k figures
    assert any("Curves report: demo_ggn" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert (ggn_run / "curves" / "report.md").is_file()


def test_paper_table_and_ar_plot_of_another_setting_show_that_settings_numbers(eval_results):
    """person -> non-person: the model zoo's 4.9 -> 20.9 beside ours, not VOC -> non-VOC's curves or AUC."""
    recipe = load_recipe("ggn_coco_person")
    result = {**eval_results["ow_segm"], "protocol": "coco_person_nonperson", "label": "student/segm"}
    md = paper_table([result, {**eval_results["ow_bbox"], "protocol": "coco_person_nonperson", "label": "student/bbox"}],
                     recipe)
    segm = md.split(", box")[0]
    row = next(line for line in segm.splitlines() if line.startswith("| AR@100 |"))
    assert "20.9" in row and "4.9" in row and "28.7" not in row
    assert "24.8" not in md  # OLN-Box AUC is a VOC -> non-VOC number
    lines = metric_figures([result])["ar_vs_k_student_segm"].axes[0].get_lines()
    paper = {line.get_label(): list(line.get_ydata()) for line in lines if line.get_label().endswith("(paper)")}
    assert paper == {"GGN (Mask R-CNN) (paper)": [pytest.approx(20.9)], "Mask R-CNN (class-agnostic) (paper)": [pytest.approx(4.9)]}


def test_open_images_results_get_no_coco_numbers_but_the_abstracts_gain_with_its_source(eval_results):
    """ovr_category_split (cpl_oi_cc): the COCO 48/17 table is another setting's; XPM's abstract gives +5.1 mAP."""
    recipe = load_recipe("cpl_oi_cc")
    segm = {**eval_results["ovr_segm"], "protocol": "ovr_category_split", "label": "student/segm"}
    for md in (paper_table([segm], recipe), paper_table([], recipe)):
        assert "+5.1 mAP" in md and "Open Images + Conceptual Captions" in md and "not in the kit" in md
        assert "Huynh et al." in md and "docs/protocols.md#51-cpl-results" in md
        assert "(paper)" not in md and "21.6" not in md and "36.3" not in md and "betrayed-by-captions" not in md
    row = next(line for line in paper_table([segm], recipe).splitlines() if line.startswith("| generalized novel |"))
    assert row.split(" | ")[1:] == [f"{100 * segm['metrics']['AP50_novel']:.1f} |"]  # ours alone
    bars = metric_figures([segm])["ap50_student_segm"].axes[0].containers
    assert len(bars) == 1  # ours, no paper bars
    coco = paper_table([{**eval_results["ovr_segm"], "label": "student/segm"}], recipe)
    assert "21.6" in coco and "+5.1 mAP" not in coco  # the same recipe's COCO 48/17 result keeps COCO's table


def test_open_world_paper_numbers_follow_the_results_protocol_not_the_recipes(eval_results):
    result = {**eval_results["ow_segm"], "protocol": "coco_person_nonperson", "label": "student/segm"}
    row = next(line for line in paper_table([result], load_recipe("demo_ggn")).splitlines()
               if line.startswith("| AR@100 |"))
    assert "20.9" in row and "28.7" not in row  # person -> non-person, though demo_ggn evaluates demo_open_world
