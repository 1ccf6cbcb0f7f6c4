"""How good must CPL's pseudo masks be for the student to beat its teacher on novel classes? (CPL acceptance diagnostic.)

From a CPL run whose splits, grounding, teacher and pseudo stages are done, trains the robust student per
seed (``student.seed``) on variants of ``pseudo/train_pseudo.json``, each in ``<out>/seed<k>/<variant>/``
(the run's finished stages linked in, nothing of the run changed), and runs the eval stage there
(generalized mask AP50, teacher and student). Base GT and the pseudo masks of base words stay as they
are; the variants differ in the pseudo masks of novel words:

- ``kept``: the run's own (the student of ``cpl_seed_margin.py``);
- ``kept_correct``: only those of them that hit a held-out GT object of the word's class at mask
  IoU >= 0.5 (as ``pseudo/stats.json`` scores them): what the wrong ones cost;
- ``novel_gt``: instead of them, the held-out GT masks of every object of each novel class the
  image's captions name (exact masks, nothing missed): what perfect pseudo-labelling would give.

A student already trained there is not retrained, only evaluated.

    python benchmarks/cpl_pseudo_ceiling.py --run-dir runs/demo_cpl --seeds 0,1,2 [--variants kept,novel_gt]
        [--out DIR] [--set KEY=VALUE ...]

Last line (generalized mask AP50, %; margin = student on the variant − teacher, novel classes, per seed):
``seeds=… teacher_base=… teacher_novel=… <variant>_masks=… <variant>_precision=… <variant>_student_base_mean=…
<variant>_student_novel_mean=… <variant>_margin_mean=… <variant>_margin_min=…`` for each variant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from seed_study import cpl_student_ap50, parse_args, seed_runs

from ovis.data.coco import ann_to_rle, load_coco, save_coco
from ovis.pseudo.cross_modal import gt_by_image_and_class, hits_gt, novel_category_map, pseudo_vocabulary
from ovis.runs import RunLayout, link_stages

VARIANTS = ("kept", "kept_correct", "novel_gt")


def pseudo_variants(recipe, run_dir: Path) -> dict[str, tuple[dict, dict[str, float]]]:
    """variant → (its pseudo file, {"masks": novel pseudo masks, "precision": % of them right})."""
    pseudo = load_coco(RunLayout(run_dir).pseudo_gt)
    novel_of = novel_category_map(recipe, run_dir, pseudo_vocabulary(recipe, run_dir))
    infos = {im["id"]: im for im in pseudo["images"]}
    novel = [a for a in pseudo["annotations"] if a.get("pseudo") and a["category_id"] in novel_of]
    gt = gt_by_image_and_class(load_coco(recipe.data.path(recipe.data.train_instances)), set(novel_of.values()),
                               {a["image_id"] for a in novel})
    right = []
    named: dict[tuple[int, int], int] = {}  # (image, novel class) → the first pseudo category id naming it
    for a in novel:
        im = infos[a["image_id"]]
        key = (a["image_id"], novel_of[a["category_id"]])
        named.setdefault(key, a["category_id"])
        right.append(bool(hits_gt([ann_to_rle(a, im["height"], im["width"])], gt.get(key, []),
                                  im["height"], im["width"])[0]))
    exact = [{"image_id": image_id, "category_id": cid, "segmentation": g["segmentation"], "area": float(g["area"]),
              "bbox": g["bbox"], "iscrowd": 0, "pseudo": True}
             for (image_id, cls), cid in named.items() for g in gt.get((image_id, cls), [])]
    others = [a for a in pseudo["annotations"] if not (a.get("pseudo") and a["category_id"] in novel_of)]
    novel_sets = {"kept": novel, "kept_correct": [a for a, r in zip(novel, right) if r], "novel_gt": exact}
    out = {}
    next_id = max((a["id"] for a in pseudo["annotations"]), default=0) + 1
    for v, these in novel_sets.items():
        anns = others + [{**a, "id": next_id + i} for i, a in enumerate(these)]
        precision = 100 * sum(right) / max(1, len(novel)) if v == "kept" else 100.0
        out[v] = ({**pseudo, "annotations": anns}, {"masks": len(these), "precision": precision})
    return out


def main(argv: list[str] | None = None) -> int:
    pick = argparse.ArgumentParser(add_help=False)
    pick.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    args = parse_args(__doc__.splitlines()[0], "demo_cpl", argv, parents=[pick])
    wanted = args.variants.split(",")
    if unknown := set(wanted) - set(VARIANTS):
        raise SystemExit(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")
    out = args.out or args.run_dir / "pseudo_ceiling"
    variants = None
    ap50: list[dict[str, dict[str, float]]] = []  # per seed: {"teacher" | variant: {"base", "novel"}}
    for seed, recipe, _ in seed_runs(args, ()):
        if variants is None:
            variants = {v: x for v, x in pseudo_variants(recipe, args.run_dir).items() if v in wanted}
            for v, (_, s) in variants.items():
                print(f"{v}: {s['masks']} novel pseudo masks, {s['precision']:.1f} % right", flush=True)
        row: dict[str, dict[str, float]] = {}
        for v, (pseudo, _) in variants.items():
            folder = link_stages(args.run_dir, out / f"seed{seed}" / v, ("splits", "grounding", "teacher"))
            if not RunLayout(folder).pseudo_gt.is_file():
                save_coco(pseudo, RunLayout(folder).pseudo_gt)
            got = cpl_student_ap50(recipe, folder)
            row["teacher"], row[v] = got["teacher"], got["student"]
        ap50.append(row)
        print(f"seed {seed}: generalized mask AP50 base / novel: "
              + ", ".join(f"{k} {x['base']:.1f} / {x['novel']:.1f}" for k, x in row.items()), flush=True)
    assert variants is not None
    teacher = ap50[0]["teacher"]
    parts = [f"seeds={','.join(map(str, args.seeds))}", f"teacher_base={teacher['base']:.1f}",
             f"teacher_novel={teacher['novel']:.1f}"]
    for v, (_, s) in variants.items():
        margins = [r[v]["novel"] - r["teacher"]["novel"] for r in ap50]
        parts += [f"{v}_masks={s['masks']}", f"{v}_precision={s['precision']:.1f}",
                  f"{v}_student_base_mean={np.mean([r[v]['base'] for r in ap50]):.1f}",
                  f"{v}_student_novel_mean={np.mean([r[v]['novel'] for r in ap50]):.1f}",
                  f"{v}_margin_mean={np.mean(margins):.1f}", f"{v}_margin_min={min(margins):.1f}"]
    print(" ".join(parts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
