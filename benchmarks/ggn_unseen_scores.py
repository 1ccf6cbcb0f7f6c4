"""Does a base-trained detector suppress the unseen classes? The premise of GGN and OLN, measured. (GGN diagnostic.)

GGN and OLN start from one observation: a class-agnostic Mask R-CNN trained on the seen classes' masks learns
to call every unannotated object background, so it scores unseen objects low (docs/ggn.md). This script scores
the ground-truth boxes of a finished GGN run's images as RoIs with each Mask R-CNN detector's box head (its
foreground probability, 1 − softmax background) and reports the median per group:

- ``seen_val`` / ``unseen_val``: the validation images' objects of the seen / unseen classes;
- ``seen_train``: the training images' annotated (seen) objects, the detector's positives;
- ``unseen_train``: the training images' unseen objects, unannotated in ``splits/train_base.json``, which the
  baseline was trained to call background (the objects GGN's pseudo masks are for).

A detector that suppresses the unseen classes scores ``unseen_val`` far below ``seen_val``; with the
``_pos`` figures (the share scored above 0.5) it shows how many unseen objects it would keep at all.

    python benchmarks/ggn_unseen_scores.py --run-dir OUT/seed0 [--recipe demo_ggn] [--models baseline,student]
        [--set KEY=VALUE ...]

Last line: ``<model>_<group>=…`` (median foreground probability) and ``<model>_<group>_pos=…`` (% above 0.5)
for each model and group, then ``<group>_n=…`` (objects per group).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from gt_box_scores import gt_box_logits

from ovis.data.dataset import CocoDetection
from ovis.methods import load_recipe
from ovis.methods.ggn import load_model

MASK_RCNN = ("baseline", "student")
GROUPS = ("seen_val", "unseen_val", "seen_train", "unseen_train")


def foreground_scores(model: torch.nn.Module, ds: CocoDetection, unseen: set[int], image_ids: set[int] | None,
                      split: str) -> dict[str, list[float]]:
    """``{"seen_<split>": [...], "unseen_<split>": [...]}``: the foreground probability of each non-crowd GT box
    of the images of ``ds`` (those in ``image_ids`` when given) scored as an RoI."""
    out: dict[str, list[float]] = {f"seen_{split}": [], f"unseen_{split}": []}
    for i in range(len(ds)):
        image, target = ds[i]
        if (image_ids is not None and int(target["image_id"]) not in image_ids) or not len(target["boxes"]):
            continue
        with torch.no_grad():
            fg = 1 - gt_box_logits(model, image, target["boxes"]).softmax(1)[:, 0]
        for label, p in zip(target["labels"].tolist(), fg.tolist()):
            out[f"{'unseen' if ds.label_to_cat_id[label] in unseen else 'seen'}_{split}"].append(p)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo_ggn"))
    ap.add_argument("--recipe", default="demo_ggn")
    ap.add_argument("--models", default="baseline,student", help=f"comma-separated, some of {list(MASK_RCNN)}")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="the overrides the run was made with")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    if bad := [m for m in models if m not in MASK_RCNN]:
        raise SystemExit(f"--models: {bad} are not Mask R-CNN detectors of a GGN run; use some of {list(MASK_RCNN)}")
    recipe = load_recipe(args.recipe, args.overrides)
    splits = args.run_dir / "splits"
    partition = json.loads((splits / "partition.json").read_text())
    unseen = {c["id"] if isinstance(c, dict) else int(c) for c in partition["novel"]}
    train_ids = {int(im["id"]) for im in json.loads((splits / "train_base.json").read_text())["images"]}
    val = CocoDetection(splits / "val.json", recipe.data.path(recipe.data.val_images), with_masks=False)
    # the full training annotations: the unseen objects train_base.json leaves unannotated are in them
    train = CocoDetection(recipe.data.path(recipe.data.train_instances), recipe.data.path(recipe.data.train_images),
                          with_masks=False)
    figures: list[str] = []
    counts: dict[str, int] = {}
    for which in models:
        model = load_model(recipe, args.run_dir, which)
        scores = {**foreground_scores(model, val, unseen, None, "val"),
                  **foreground_scores(model, train, unseen, train_ids, "train")}
        counts = {g: len(scores[g]) for g in GROUPS}
        median = {g: float(np.median(scores[g])) if scores[g] else float("nan") for g in GROUPS}
        pos = {g: 100 * float(np.mean(np.array(scores[g]) > 0.5)) if scores[g] else float("nan") for g in GROUPS}
        print(f"{which}: median foreground probability (% above 0.5): "
              + ", ".join(f"{g} {median[g]:.3f} ({pos[g]:.1f})" for g in GROUPS), flush=True)
        figures += [f"{which}_{g}={median[g]:.3f} {which}_{g}_pos={pos[g]:.1f}" for g in GROUPS]
    print(" ".join(figures + [f"{g}_n={counts[g]}" for g in GROUPS]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
