"""Stage 04 (docs/cpl.md#25-inference, docs/protocols.md#41-open-vocabulary-ap): teacher and student under the
generalized and both constrained settings, each with its own vocabulary, side by side."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from torchvision.models.detection.roi_heads import RoIHeads

from ovis.config import Recipe
from ovis.data.dataset import CocoDetection
from ovis.io import copy_atomic, write_json_atomic, write_text_atomic
from ovis.models.detector import set_class_embeddings
from ovis.pseudo.detectors import class_embeddings, load_model, need_file
from ovis.runs import DETECTIONS, RunLayout
from ovis.stages import execute

# setting name → split file (docs/protocols.md#41-open-vocabulary-ap); "constrained" in the name marks constrained runs
EVAL_SETTINGS = {"generalized": "val.json", "constrained_novel": "val_novel.json", "constrained_base": "val_base.json"}


def _subset_gt(gt: dict, ids: Sequence[int]) -> dict:
    keep = set(ids)
    return {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}


def _ap50_markdown(side: dict) -> str:
    """The side-by-side ``eval/metrics.json`` object as markdown: teacher / student rows, AP50 base /
    novel / all columns (%) per IoU type; generalized first, then each constrained run."""
    ious = list(side["teacher"])
    header = "| model | " + " | ".join(f"{t} AP50 {k}" for t in ious for k in ("base", "novel", "all")) + " |"
    rule = "|---|" + "---|" * (3 * len(ious))

    def pct(v: float | None) -> str:  # -1: no GT of that split in the run's file
        return "n/a" if v is None or v < 0 else f"{100 * v:.1f}"

    def table(block: dict) -> list[str]:
        return [header, rule] + [
            f"| {w} | " + " | ".join(pct(block[w][t].get(f"AP50_{k}")) for t in ious for k in ("base", "novel", "all"))
            + " |" for w in ("teacher", "student")]

    lines = [f"# {side['protocol']}: teacher vs student (AP50, %)", "",
             "## generalized (val.json, base + novel names)", "", *table(side)]
    for kind, block in side["constrained"].items():
        lines += ["", f"## constrained {kind}-only ({EVAL_SETTINGS['constrained_' + kind]}, {kind} names)", "",
                  *table(block)]
    return "\n".join(lines) + "\n"


def run_eval(recipe: Recipe, run_dir: str | Path, force: bool = False, stream: Callable[[str], None] = print,
             device: str | None = None) -> list[dict]:
    """Stage 04 (CPL): for teacher and student, the generalized (val.json, base + novel names),
    constrained-novel (val_novel.json) and constrained-base (val_base.json) runs, each with the
    classifier swapped to its file's class names (unnormalised for the teacher, L2-normalised
    for the student). Writes ``eval/<which>/<setting>/detections.json`` and
    ``eval/<which>/<setting>/<iou_type>/metrics.{json,md}`` (full ``ovis.eval.evaluate`` results);
    ``eval/metrics.json`` holds them side by side, M being a result's ``metrics`` object:
    ``{"protocol", "teacher": {iou_type: M}, "student": {iou_type: M}, "constrained": {"novel":
    {"teacher": {iou_type: M}, "student": ...}, "base": ...}}`` (generalized at the top level),
    ``eval/metrics.md`` its AP50 table; ``eval/detections.json`` is the student's generalized run;
    ``eval/summary.json`` holds the returned rows ``{model, setting, iou_type, AP50_base,
    AP50_novel, AP50_all, AP}``, read back from it when the stage is done (:func:`ovis.stages.execute`).
    ``eval.max_images`` evaluates the first N images of each file (GT restricted to them)."""
    summary = RunLayout(run_dir).stage("eval") / "summary.json"
    return execute(recipe, "eval", run_dir, lambda afresh: _evaluate(recipe, Path(run_dir), stream, device),
                   force=force, outputs=[DETECTIONS, "metrics.json", "metrics.md", "summary.json"],
                   read=lambda record: json.loads(summary.read_text()))


def _evaluate(recipe: Recipe, run_dir: Path, stream: Callable[[str], None], device: str | None) -> list[dict]:
    """The eval stage's work (:func:`run_eval`): every run's detections and metrics; returns the summary rows."""
    from ovis.engine.dist import resolve_device
    from ovis.engine.infer import run_inference
    from ovis.eval import evaluate
    from ovis.eval.report import write_metrics

    layout = RunLayout(run_dir)
    out = layout.stage("eval")
    dev = resolve_device(device or recipe.launch.device)
    partition = layout.split("partition.json")
    rows: list[dict] = []
    side: dict[str, Any] = {"protocol": None, "teacher": {}, "student": {},
                            "constrained": {s.removeprefix("constrained_"): {"teacher": {}, "student": {}}
                                            for s in EVAL_SETTINGS if s.startswith("constrained")}}
    for which in ("teacher", "student"):
        model = load_model(recipe, run_dir, which).to(dev)
        cast(RoIHeads, model.roi_heads).detections_per_img = recipe.eval.detections_per_img
        for setting, fname in EVAL_SETTINGS.items():
            gt_path = need_file(layout.split(fname), "run the splits stage first")
            ds = CocoDetection(gt_path, recipe.data.path(recipe.data.val_images), with_masks=False, drop_crowd=False)
            names = [c["name"] for c in ds.coco["categories"] if c["id"] in ds.category_ids]
            set_class_embeddings(model, class_embeddings(recipe, names, normalize=which == "student"))
            t0 = time.perf_counter()
            folder = out / which / setting
            dets_path = run_inference(model, ds, layout.detections(which, setting), ds.label_to_cat_id, dev,
                                      max_images=recipe.eval.max_images)
            gt = _subset_gt(ds.coco, ds.ids[: recipe.eval.max_images or None])
            constrained = setting.startswith("constrained")
            block = side["constrained"][setting.removeprefix("constrained_")] if constrained else side
            for iou in recipe.eval.iou_types:
                res = evaluate(recipe.eval.protocol, gt, dets_path, iou, partition=partition)
                res["setting"] = "constrained" if constrained else "generalized"
                res["model"] = which
                write_metrics(res, folder / iou)
                m = res["metrics"]
                side["protocol"] = res["protocol"]
                block[which][iou] = m
                rows.append({"model": which, "setting": setting, "iou_type": iou, "AP50_base": m.get("AP50_base"),
                             "AP50_novel": m.get("AP50_novel"), "AP50_all": m.get("AP50_all"), "AP": m["stats"][0]})
            stream(f"eval: {which} {setting}: {len(gt['images'])} images in {time.perf_counter() - t0:.1f} s")
    copy_atomic(layout.detections("student", "generalized"), layout.detections())
    write_json_atomic(side, out / "metrics.json")
    table = _ap50_markdown(side)
    write_text_atomic(table, out / "metrics.md")
    write_json_atomic(rows, out / "summary.json")
    recipe.save(out)
    stream(table)
    return rows
