"""How good must GGN's pseudo GT be for the student to beat the base-only baseline? (GGN acceptance diagnostic.)

From a GGN run whose splits, teacher and pseudo stages are done, trains per seed (``student.seed``) the
baseline (base GT only) and the GGN student on variants of the pseudo GT, each in
``<out>/seed<k>/<variant>/`` (the run's ``splits`` and ``teacher`` linked in, nothing of the run
changed), and evaluates them on the unseen classes (mask AR@100). The variants add to base GT:

- ``kept``: the run's pseudo masks (top-k candidates per image by the PA network's score);
- ``kept_correct``: only those of them that cover an unseen object at mask IoU >= 0.5 (same
  coverage, no wrong masks: what the wrong ones cost);
- ``candidates_correct``: for each unseen object, the stored candidate (of the top-n) that covers it
  best at IoU >= 0.5 (what a perfect ranking of today's candidates would give);
- ``unseen_gt``: the unseen objects' GT masks (every unseen object, exact masks).

A model already trained there is not retrained, only evaluated.

    python benchmarks/ggn_pseudo_ceiling.py --run-dir runs/demo_ggn --seeds 0,1,2 [--out DIR] [--set KEY=VALUE ...]

Last line (unseen mask AR@100, %; margin = student on the variant − baseline, per seed):
``seeds=… baseline_mean=… <variant>_masks=… <variant>_coverage=… <variant>_precision=…
<variant>_margin_mean=… <variant>_margin_min=…`` for each variant.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from seed_study import parse_args, seed_runs

from ovis.data.coco import ann_to_rle, load_coco, save_coco
from ovis.data.masks import mask_iou, match_counts
from ovis.methods import ggn
from ovis.methods.ggn.datasets import unseen_gt
from ovis.methods.ggn.extract import sharding
from ovis.methods.train import run_stage
from ovis.runs import RunLayout, link_stages

VARIANTS = ("kept", "kept_correct", "candidates_correct", "unseen_gt")
IOU = 0.5


def pseudo_variants(recipe, run_dir: Path) -> dict[str, tuple[list[dict], dict[str, float]]]:
    """variant → (its pseudo annotations, {"masks", "coverage", "precision"} in %) from the run's pseudo stage."""
    layout = RunLayout(run_dir)
    stats = json.loads(layout.pseudo_stats.read_text())
    records = sharding(recipe, run_dir, stats["shards"]).records()
    if records is None:
        raise SystemExit(f"{run_dir}: the pseudo stage's candidate shards are missing or stale")
    kept: dict[int, list[dict]] = {}
    for a in load_coco(layout.pseudo_gt)["annotations"]:
        if a.get("pseudo"):
            kept.setdefault(a["image_id"], []).append(a)
    unseen, _ = unseen_gt(recipe, run_dir, set(records))
    anns: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    covered = dict.fromkeys(VARIANTS, 0)
    right = dict.fromkeys(VARIANTS, 0)
    for image_id, rec in records.items():
        h, w = rec["height"], rec["width"]
        gts = unseen.get(image_id, [])
        gt_rles = [ann_to_rle(a, h, w) for a in gts]
        mine = kept.get(image_id, [])
        hits = mask_iou([ann_to_rle(a, h, w) for a in mine], gt_rles)
        cand = mask_iou([c["segmentation"] for c in rec["candidates"]], gt_rles)
        best = [rec["candidates"][int(np.argmax(cand[:, j]))] for j in range(len(gts))
                if cand.size and cand[:, j].max() >= IOU]
        per_image = {
            "kept": mine,
            "kept_correct": [a for a, hit in zip(mine, (hits >= IOU).any(axis=1)) if hit] if hits.size else [],
            "candidates_correct": [{"segmentation": c["segmentation"], "area": float(c["area"]), "bbox": c["bbox"]}
                                   for c in {id(c): c for c in best}.values()],
            "unseen_gt": [{"segmentation": a["segmentation"], "area": float(a["area"]), "bbox": a["bbox"]} for a in gts],
        }
        for v, these in per_image.items():
            c, r = match_counts(mask_iou([ann_to_rle(a, h, w) for a in these], gt_rles), IOU)
            covered[v] += c
            right[v] += r
            anns[v] += [{"image_id": image_id, "segmentation": a["segmentation"], "area": a["area"],
                         "bbox": a["bbox"], "category_id": stats["pseudo_category_id"], "iscrowd": 0, "pseudo": True}
                        for a in these]
    n_gt = sum(len(unseen.get(i, [])) for i in records)
    return {v: (anns[v], {"masks": len(anns[v]), "coverage": 100 * covered[v] / max(1, n_gt),
                          "precision": 100 * right[v] / max(1, len(anns[v]))}) for v in VARIANTS}


def write_pseudo_gt(run_dir: Path, folder: Path, pseudo: list[dict]) -> None:
    """``<folder>/pseudo/train_pseudo.json``: the run's base GT (train_base.json) + ``pseudo``."""
    base = load_coco(RunLayout(run_dir).split("train_base.json"))
    next_id = max((a["id"] for a in base["annotations"]), default=0) + 1
    anns = [{**a, "id": next_id + i} for i, a in enumerate(pseudo)]
    save_coco({**base, "annotations": base["annotations"] + anns}, RunLayout(folder).pseudo_gt)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], "demo_ggn", argv)
    out = args.out or args.run_dir / "pseudo_ceiling"
    variants = None
    ar: list[dict[str, float]] = []  # per seed: {baseline | variant: unseen mask AR@100 %}
    for seed, recipe, d in seed_runs(args, ("splits", "teacher", "pseudo")):
        if variants is None:
            variants = pseudo_variants(recipe, args.run_dir)
            for v, (_, s) in variants.items():
                print(f"{v}: {s['masks']} pseudo masks, coverage {s['coverage']:.1f} %, precision {s['precision']:.1f} %")
        row: dict[str, float] = {}
        for v, (pseudo, _) in variants.items():
            folder = link_stages(args.run_dir, out / f"seed{seed}" / v, ("splits", "teacher"))
            if not RunLayout(folder).pseudo_gt.is_file():
                write_pseudo_gt(args.run_dir, folder, pseudo)
            models = ("baseline", "student") if v == "kept" else ("student",)
            for stage in models:
                run_stage(recipe, stage, folder, device=recipe.launch.device, progress=False)
            res = ggn.evaluate_models(recipe, folder, models, folder / "eval", stream=lambda _: None)
            mask = {r["model"]: 100 * r["metrics"]["AR@100"] for r in res if r["iou_type"] == "segm"}
            if v == "kept":
                row["baseline"] = mask["baseline"]
            row[v] = mask["student"]
        ar.append(row)
        print(f"seed {seed}: unseen mask AR@100: " + ", ".join(f"{k} {x:.1f}" for k, x in row.items()), flush=True)
    assert variants is not None
    parts = [f"seeds={','.join(map(str, args.seeds))}",
             f"baseline_mean={np.mean([r['baseline'] for r in ar]):.1f}"]
    for v, (_, s) in variants.items():
        margins = [r[v] - r["baseline"] for r in ar]
        parts += [f"{v}_masks={s['masks']}", f"{v}_coverage={s['coverage']:.1f}", f"{v}_precision={s['precision']:.1f}",
                  f"{v}_margin_mean={np.mean(margins):.1f}", f"{v}_margin_min={min(margins):.1f}"]
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
