"""The eval stage: every detector of the run on ``splits/val.json`` under the recipe's open-world protocol
(``eval/<model>/<iou_type>/metrics.json``), side by side in ``eval/metrics.json`` and a Markdown table."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ovis.config import Recipe
from ovis.data.coco import load_coco
from ovis.data.dataset import CocoDetection
from ovis.engine.dist import resolve_device
from ovis.engine.workers import explain_broken_pool, single_threaded_children
from ovis.io import copy_atomic, write_json_atomic
from ovis.methods.ggn.datasets import split_file
from ovis.methods.ggn.models import detectors, load_model
from ovis.runs import DETECTIONS, RunLayout
from ovis.stages import execute


def side_by_side(results: list[dict], recipe: Recipe) -> dict:
    """``{"protocol", "baseline": {iou: metrics}, <method>: {...}[, "oln": {...}, "oln_baseline": {...}]}`` from ``run_eval`` results;
    the student's key is ``recipe.method`` ("ggn" or "oln"), metrics as ``ovis.eval.evaluate`` gives them."""
    out: dict = {"protocol": recipe.eval.protocol}
    for r in results:
        key = recipe.method if r["model"] == "student" else r["model"]
        out.setdefault(key, {})[r["iou_type"]] = r["metrics"]
    return out


def run_eval(recipe: Recipe, run_dir: str | Path, force: bool = False,
             stream: Callable[[str], None] = print) -> list[dict]:
    """Baseline, student and (for a Mask R-CNN student) the OLN variants on ``splits/val.json`` under
    ``recipe.eval.protocol`` (docs/protocols.md#42-open-world-ar), by :func:`evaluate_models`.

    Writes ``eval/<which>/detections.json``, ``eval/<which>/<iou_type>/metrics.{json,md}``,
    ``eval/detections.json`` (the student's) and ``eval/metrics.json`` (:func:`side_by_side`).
    Returns one result dict per (model, iou type), with ``model`` added, read back from those files when
    the stage is done (:func:`ovis.stages.execute`). No model has a ``segm`` entry when
    ``model.mask`` is false.
    """
    run_dir = Path(run_dir)
    layout = RunLayout(run_dir)
    out = layout.stage("eval")
    models, iou_types = detectors(recipe), _iou_types(recipe)
    metrics = [f"{w}/{t}/metrics.json" for w in models for t in iou_types]  # the order evaluate_models gives

    def evaluate_all(afresh: bool) -> list[dict]:
        if len(iou_types) < len(recipe.eval.iou_types):
            stream("eval: model.mask is false (boxes only): segm skipped")
        results = evaluate_models(recipe, run_dir, models, out, stream)
        copy_atomic(layout.detections("student"), layout.detections())
        write_json_atomic(side_by_side(results, recipe), out / "metrics.json")
        stream(comparison_table(results, recipe))
        return results

    return execute(recipe, "eval", run_dir, evaluate_all, force=force,
                   outputs=[f"{w}/{DETECTIONS}" for w in models] + metrics + [DETECTIONS, "metrics.json"],
                   read=lambda record: [json.loads((out / m).read_text()) for m in metrics])


def _iou_types(recipe: Recipe) -> list[str]:
    return [t for t in recipe.eval.iou_types if t == "bbox" or recipe.model.mask]


def evaluate_models(recipe: Recipe, run_dir: str | Path, models: Sequence[str], out: str | Path,
                    stream: Callable[[str], None] = print) -> list[dict]:
    """Each trained detector of ``models`` (of ``MODELS``, not the teacher) on ``<run_dir>/splits/val.json``:
    ``<out>/<which>/detections.json`` and ``<out>/<which>/<iou_type>/metrics.{json,md}``.
    ``eval.max_images`` evaluates the first N val images (GT restricted to them). Returns one result
    dict per (model, iou type), with ``model`` added."""
    from ovis.eval import evaluate
    from ovis.eval.report import write_metrics

    run_dir, out = Path(run_dir), Path(out)
    val_path = split_file(run_dir, "val.json")
    partition = split_file(run_dir, "partition.json")
    val = load_coco(val_path)
    if not val["categories"]:
        raise ValueError(f"{val_path}: no categories; class-agnostic detections need a category id to carry")
    cat_id = val["categories"][0]["id"]
    ds = CocoDetection(val_path, recipe.data.path(recipe.data.val_images), class_agnostic=True, with_masks=False)
    ids = set(ds.ids[: recipe.eval.max_images or None])
    gt = val if recipe.eval.max_images is None else {
        **val, "images": [im for im in val["images"] if im["id"] in ids],
        "annotations": [a for a in val["annotations"] if a["image_id"] in ids]}
    if "teacher" in models:
        raise ValueError("evaluate_models: the teacher is the PA network, not a detector")
    device = resolve_device(recipe.launch.device)
    workers = min(recipe.eval.workers, len(models)) if device.type == "cpu" else 1
    jobs = [(recipe, run_dir, which, ds, out / which / "detections.json", cat_id, device, workers == 1)
            for which in models]  # no progress bars from worker processes
    if workers > 1:  # spawned with one thread each: the detections equal a one-thread run's, whatever the cores
        with (single_threaded_children(), ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool,
              explain_broken_pool("eval: an inference worker process died", "lower eval.workers")):
            done = list(pool.map(_infer, jobs))
    else:
        done = [_infer(job) for job in jobs]
    results = []
    for which, det_path, seconds in done:
        stream(f"eval: {which} inference on {len(ids)} images in {seconds:.1f} s")
        for iou in _iou_types(recipe):
            res = {**evaluate(recipe.eval.protocol, gt, det_path, iou, partition=partition), "model": which,
                   "method": recipe.method}
            write_metrics(res, out / which / iou)
            results.append(res)
    return results


def _infer(job: tuple) -> tuple[str, Path, float]:
    """One detector's inference over the val set (an ``evaluate_models`` job): ``(which, detections path,
    seconds)``."""
    from ovis.engine.infer import run_inference

    recipe, run_dir, which, ds, det_path, cat_id, device, progress = job
    model = load_model(recipe, run_dir, which)
    t0 = time.perf_counter()
    path = run_inference(model, ds, det_path, cat_id, device, max_images=recipe.eval.max_images, progress=progress)
    return which, path, time.perf_counter() - t0


def comparison_table(results: list[dict], recipe: Recipe) -> str:
    """Markdown table of ``run_eval`` results: metric rows, one column per model and IoU type (baseline,
    GGN or OLN, then the OLN variants without and with pseudo GT), in %."""
    name = {"ggn": "GGN", "oln": "OLN"}.get(recipe.method, recipe.method)
    label = {"baseline": "baseline", "student": name, "oln_baseline": "OLN baseline", "oln": "OLN"}
    by = {(r["model"], r["iou_type"]): r["metrics"] for r in results}
    iou_types = list(dict.fromkeys(r["iou_type"] for r in results))
    cols = [(m, t) for t in iou_types for m in label if (m, t) in by]
    header = "| metric | " + " | ".join(f"{label[m]} ({t})" for m, t in cols) + " |"
    keys = [k for k in by[cols[0]] if k != "stats"] if cols else []
    def pct(v: float | None) -> str:  # pycocotools' -1: no GT in that area range
        return "n/a" if v is None or v < 0 else f"{100 * v:.1f}"

    rows = [f"| {k} | " + " | ".join(pct(by[c].get(k)) for c in cols) + " |" for k in keys]
    return "\n".join([header, "|" + "---|" * (len(cols) + 1), *rows])
