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


def kinds(masks: np.ndarray, objects: np.ndarray, unseen: np.ndarray) -> list[str]:
    """The class of each kept pseudo mask ``masks`` [P, H, W] of one image against its object masks ``objects``
    [G, H, W] (``unseen[g]``: object g is of an unseen class, not crowd), each mask decoded once."""
    flat_m = masks.reshape(len(masks), -1).astype(np.float64)
    flat_o = objects.reshape(len(objects), -1).astype(np.float64)
    inter = flat_m @ flat_o.T  # [P, G] pixel counts
    area_m, area_o = flat_m.sum(1), flat_o.sum(1)
    iou = inter / np.maximum(area_m[:, None] + area_o[None] - inter, 1)
    off_objects = flat_m @ (1 - flat_o.max(0, initial=0))  # pixels on no object
    out = []
    for p in range(len(masks)):
        if (iou[p] >= 0.5)[unseen].any():
            out.append("right")
        elif (iou[p] >= 0.5).any():
            out.append("seen")
        elif off_objects[p] > 0.5 * area_m[p]:
            out.append("background")
        elif (inter[p] >= 0.5 * area_o).sum() >= 2:
            out.append("merge")
        elif inter[p].max(initial=0) >= 0.8 * area_m[p]:
            out.append("part")
        else:
            out.append("mixed")
    return out


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
    kept: dict[int, list[dict]] = {}
    for a in pseudo["annotations"]:
        if a.get("pseudo"):
            kept.setdefault(a["image_id"], []).append(a)
    counts = dict.fromkeys(KINDS, 0)
    for image_id, anns in kept.items():
        h, w = sizes[image_id]
        gt = by_image.get(image_id, [])
        objects = np.array([ann_to_mask(g, h, w) for g in gt], dtype=bool).reshape(len(gt), h, w)
        unseen = np.array([g["category_id"] in unseen_ids and not g.get("iscrowd", 0) for g in gt], dtype=bool)
        for k in kinds(np.array([ann_to_mask(a, h, w) for a in anns]), objects, unseen):
            counts[k] += 1
    total = sum(counts.values())
    share = {k: 100 * v / max(1, total) for k, v in counts.items()}
    print(", ".join(f"{k} {counts[k]} ({share[k]:.1f} %)" for k in KINDS))
    print(f"kept={total} " + " ".join(f"{k}={share[k]:.1f}" for k in KINDS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
