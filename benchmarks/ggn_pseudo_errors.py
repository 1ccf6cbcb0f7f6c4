"""What are GGN's wrong pseudo masks? (GGN acceptance diagnostic.)

Sorts each pseudo mask a GGN run kept (``pseudo/train_pseudo.json``) by what it covers in the training
image's full GT (every class, the held-out unseen ones included; crowd regions count as objects):

- ``right``: mask IoU >= 0.5 with an unseen object (what the stage's ``kept_on_unseen@0.5`` counts);
- ``seen``: IoU >= 0.5 with a seen object (the stage drops those against the base GT's non-crowd masks,
  so only seen-class crowd regions land here);
- ``background``: more than half of its pixels on no object;
- ``merge``: holds at least half of each of two or more objects;
- ``part``: at least 80 % of its pixels inside one object;
- ``mixed``: the rest (objects and background in other proportions).

Nothing is trained.

    python benchmarks/ggn_pseudo_errors.py --run-dir runs/demo_ggn [--recipe demo_ggn] [--set KEY=VALUE ...]

Last line (% of the kept masks): ``kept=… right=… seen=… background=… merge=… part=… mixed=…``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ovis.data.coco import load_coco
from ovis.data.masks import ann_to_mask
from ovis.methods import load_recipe
from ovis.runs import RunLayout

KINDS = ("right", "seen", "background", "merge", "part", "mixed")


def kind(mask: np.ndarray, objects: list[np.ndarray], unseen: list[bool]) -> str:
    """The class of one kept pseudo ``mask`` against the image's object masks (``unseen[i]``: object i is of an
    unseen class, not crowd)."""
    inter = np.array([(mask & o).sum() for o in objects], dtype=np.float64)
    union = np.array([(mask | o).sum() for o in objects], dtype=np.float64)
    iou = inter / np.maximum(union, 1)
    if any(i >= 0.5 and u for i, u in zip(iou, unseen)):
        return "right"
    if (iou >= 0.5).any():
        return "seen"
    on_objects = np.logical_or.reduce(objects) if objects else np.zeros_like(mask)
    if (mask & ~on_objects).sum() > 0.5 * mask.sum():
        return "background"
    sizes = np.array([o.sum() for o in objects], dtype=np.float64)
    if (inter >= 0.5 * sizes).sum() >= 2:
        return "merge"
    if inter.max() >= 0.8 * mask.sum():
        return "part"
    return "mixed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo_ggn"))
    ap.add_argument("--recipe", default="demo_ggn")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    layout = RunLayout(args.run_dir)
    if not layout.pseudo_gt.is_file():
        raise SystemExit(f"{layout.pseudo_gt} not found: run the pseudo stage of {args.run_dir} first")
    pseudo = load_coco(layout.pseudo_gt)
    unseen_ids = {c["id"] if isinstance(c, dict) else int(c)
                  for c in json.loads(layout.split("partition.json").read_text())["novel"]}
    full = load_coco(recipe.data.path(recipe.data.train_instances))
    by_image: dict[int, list[dict]] = {}
    for a in full["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    sizes = {im["id"]: (im["height"], im["width"]) for im in pseudo["images"]}
    counts = dict.fromkeys(KINDS, 0)
    kept = [a for a in pseudo["annotations"] if a.get("pseudo")]
    for a in kept:
        h, w = sizes[a["image_id"]]
        gt = by_image.get(a["image_id"], [])
        objects = [ann_to_mask(g, h, w).astype(bool) for g in gt]
        unseen = [g["category_id"] in unseen_ids and not g.get("iscrowd", 0) for g in gt]
        counts[kind(ann_to_mask(a, h, w).astype(bool), objects, unseen)] += 1
    share = {k: 100 * v / max(1, len(kept)) for k, v in counts.items()}
    print(", ".join(f"{k} {counts[k]} ({share[k]:.1f} %)" for k in KINDS))
    print(f"kept={len(kept)} " + " ".join(f"{k}={share[k]:.1f}" for k in KINDS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
