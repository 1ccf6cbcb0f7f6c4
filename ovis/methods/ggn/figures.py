"""What the stages' notebooks show: the PA network's affinities, the pseudo masks (figures and a browser)
and the detectors' top detections."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from ovis.config import Recipe
from ovis.data.coco import load_coco
from ovis.data.dataset import CocoDetection
from ovis.methods.ggn.datasets import pseudo_dataset, split_file, train_images, unseen_gt
from ovis.methods.ggn.extract import sharding
from ovis.methods.ggn.models import load_model
from ovis.models.affinity import affinity_target, palette_from_masks
from ovis.runs import RunLayout


def teacher_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """Val image | affinity target from its GT (all classes, unseen included) | predicted affinity, n rows."""
    model = load_model(recipe, run_dir, "teacher")
    ds = CocoDetection(split_file(run_dir, "val.json"), recipe.data.path(recipe.data.val_images),
                       class_agnostic=True, skip_empty=True)
    rows = min(n, len(ds))
    fig = Figure(figsize=(9, 3 * max(rows, 1)), layout="constrained")
    axes = fig.subplots(max(rows, 1), 3, squeeze=False)
    for r in range(rows):
        image, target = ds[r]
        with torch.inference_mode():
            pred = model([image])[0][0].numpy()
        tgt, _ = affinity_target(palette_from_masks(target["masks"]))
        panels = [(image.permute(1, 2, 0).numpy(), f"val image {target['image_id']}"),
                  (tgt.numpy(), "target from GT (all classes)"), (pred, "predicted affinity")]
        for ax, (img, title) in zip(axes[r], panels):
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
    return [fig]


def _pseudo_view(recipe: Recipe, run_dir: Path) -> tuple[dict, list[dict], list[dict], list[int]]:
    """(base GT with the original file's categories, kept pseudo annotations, unseen GT, processed image ids)."""
    coco = load_coco(RunLayout(run_dir).pseudo_gt)
    pseudo = [a for a in coco["annotations"] if a.get("pseudo")]
    stats = json.loads(RunLayout(run_dir).pseudo_stats.read_text())
    _, ids = pseudo_dataset(recipe, run_dir)
    ids = ids[: stats["images"]]
    unseen, cats = unseen_gt(recipe, run_dir, set(ids))
    gt = {**coco, "annotations": [a for a in coco["annotations"] if not a.get("pseudo")],
          "categories": list(cats.values())}
    # drawn as "object": the pseudo category id is only a carrier for the class-agnostic student
    pseudo = [{**a, "category_id": None} for a in pseudo]
    return gt, pseudo, [a for i in ids for a in unseen[i]], ids


def pseudo_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """[base GT | pseudo masks (ranked, dashed) | held-out unseen GT for n images,
    candidate/kept score histogram and what the kept pseudo masks land on]."""
    from ovis.viz.draw import image_grid

    run_dir = Path(run_dir)
    gt, pseudo, unseen, ids = _pseudo_view(recipe, run_dir)
    grid = image_grid(gt, train_images(recipe), image_ids=ids[:n], cols=3,
                      extra={"pseudo (top-k)": pseudo, "unseen GT (held out)": unseen})
    stats = json.loads(RunLayout(run_dir).pseudo_stats.read_text())
    records = sharding(recipe, run_dir, stats["shards"]).records() or {}
    cand_scores = [c["score"] for r in records.values() for c in r["candidates"]]
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    bins = np.linspace(min(cand_scores + [0.0]), max(cand_scores + [1.0]), 30)
    ax1.hist(cand_scores, bins=bins, alpha=0.6, label=f"candidates (top-{stats['top_n']})")
    ax1.hist([a["score"] for a in pseudo], bins=bins, alpha=0.8, label=f"kept (top-{stats['top_k']})")
    ax1.set_xlabel("score = PA score / 2 + r + r · c (OLN ranker)" if stats.get("oln_ranker")
                   else "score = 1 − (mean A on contour − mean A inside)")
    ax1.set_ylabel("masks")
    ax1.legend(fontsize=8)
    on = stats["kept_on_unseen@0.5"]
    ax2.bar(["on an unseen object\n(IoU ≥ 0.5)", "elsewhere"], [on, stats["kept"] - on],
            color=["tab:green", "tab:gray"])
    recall = stats["unseen_recall@0.5"]
    ax2.set_title(f"{stats['kept']} kept pseudo masks; unseen recall@0.5 "
                  + ("n/a" if recall is None else f"{100 * recall:.1f}%"), fontsize=9)
    return [grid, fig]


def pseudo_browser(recipe: Recipe, run_dir: str | Path):
    """ovis.viz.widgets.MaskBrowser over the processed training images: base GT, pseudo masks, unseen GT."""
    from ovis.viz.widgets import MaskBrowser

    gt, pseudo, unseen, ids = _pseudo_view(recipe, Path(run_dir))
    keep = set(ids)
    gt = {**gt, "images": [im for im in gt["images"] if im["id"] in keep],
          "annotations": [a for a in gt["annotations"] if a["image_id"] in keep]}
    return MaskBrowser(gt, train_images(recipe), panels={"pseudo (top-k)": pseudo, "unseen GT (held out)": unseen})


def student_figures(recipe: Recipe, run_dir: str | Path, n: int = 4, top: int = 10) -> list[Figure]:
    """Val GT | baseline | GGN/OLN: the ``top`` highest-scoring detections on the first n val images."""
    from ovis.engine.infer import to_results
    from ovis.viz.draw import image_grid

    val_path = split_file(run_dir, "val.json")
    val = load_coco(val_path)
    ds = CocoDetection(val_path, recipe.data.path(recipe.data.val_images), class_agnostic=True, with_masks=False)
    ids = ds.ids[:n]
    name = {"ggn": "GGN", "oln": "OLN"}.get(recipe.method, recipe.method)
    cat_id = val["categories"][0]["id"]
    extra = {}
    for which, label in (("baseline", "baseline"), ("student", name)):
        model = load_model(recipe, run_dir, which)
        dets = []
        with torch.inference_mode():
            for image_id in ids:
                out = model([ds.load_image(image_id)])[0]
                keep = out["scores"].argsort(descending=True)[:top]
                dets += [{**d, "category_id": None} for d in
                         to_results({k: v[keep] for k, v in out.items()}, image_id, cat_id)]
        extra[f"{label} (top {top})"] = dets
    return [image_grid(val, recipe.data.path(recipe.data.val_images), image_ids=ids, cols=3, extra=extra)]
