"""The teacher and student notebooks' figures: predictions with base and novel names beside the GT, σ and λ
over the student's iterations."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ovis.config import Recipe
from ovis.models.detector import set_class_embeddings
from ovis.pseudo.detectors import class_embeddings, load_model, need_file, read_partition
from ovis.runs import RunLayout

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _val_images(run_dir: Path, n: int) -> tuple[dict, list[int]]:
    val = json.loads(need_file(RunLayout(run_dir).split("val.json"), "run the splits stage first").read_text())
    novel = {c["id"] for c in read_partition(run_dir)["novel"]}
    with_novel = list(dict.fromkeys(a["image_id"] for a in val["annotations"] if a["category_id"] in novel))
    rest = [im["id"] for im in val["images"] if im["id"] not in set(with_novel)]
    return val, (with_novel + rest)[:n]


def _predict(model: nn.Module, recipe: Recipe, val: dict, ids: Sequence[int], label_to_cat: dict[int, int]) -> list[dict]:
    from ovis.engine.infer import to_results
    from ovis.viz.draw import load_image

    infos = {im["id"]: im for im in val["images"]}
    out = []
    model.eval()
    with torch.no_grad():
        for i in ids:
            img = load_image(recipe.data.path(recipe.data.val_images), infos[i])
            out += to_results(model([torch.from_numpy(img.transpose(2, 0, 1).copy()).float().div_(255)])[0], i, label_to_cat)
    return out


def _vocab_figure(recipe: Recipe, run_dir: str | Path, which: str, n: int, normalize: bool) -> Figure:
    from ovis.viz.draw import image_grid

    run_dir = Path(run_dir)
    model = load_model(recipe, run_dir, which)
    part = read_partition(run_dir)
    val, ids = _val_images(run_dir, n)
    panels = {}
    for split in ("base", "novel"):
        cats = part[split]
        set_class_embeddings(model, class_embeddings(recipe, [c["name"] for c in cats], normalize))
        dets = _predict(model, recipe, val, ids, {k + 1: c["id"] for k, c in enumerate(cats)})
        panels[f"{which} · {split} names"] = [d for d in dets if d["score"] >= 0.3]
    return image_grid(val, recipe.data.path(recipe.data.val_images), ids, cols=3, extra=panels)


def teacher_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """Teacher predictions (score ≥ 0.3) on ``n`` val images (novel objects first), once with the
    base class names and once with the novel names swapped in, beside the GT."""
    return [_vocab_figure(recipe, run_dir, "teacher", n, normalize=False)]


def student_figures(recipe: Recipe, run_dir: str | Path, n: int = 4) -> list[Figure]:
    """[student predictions with base / novel names beside the GT; σ and λ over iterations]."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    figs = [_vocab_figure(recipe, run_dir, "student", n, normalize=True)]
    log = run_dir / "student" / "robust.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    fig = Figure(figsize=(9, 3), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    if rows:
        it = [r["iteration"] for r in rows]
        ax1.plot(it, [r.get("sigma_mean") for r in rows])
        ax2.plot(it, [r.get("lambda_pl") for r in rows], color="tab:orange")
        ax1.axvline(recipe.student.uncertainty_train_iter, color="gray", ls="--", lw=0.8)
    ax1.set(title="mean σ of pseudo masks (σ-head frozen at dashed line)", xlabel="iteration")
    ax2.set(title="λ = 0.01 / mean σ (pseudo cls/box weight)", xlabel="iteration")
    figs.append(fig)
    return figs
