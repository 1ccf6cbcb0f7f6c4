"""Can caption grounding name objects before the teacher trains? Zero-shot GT-box accuracy, base and novel.

Reads a CPL run whose grounding is trained (``ovis reproduce demo_cpl --stages splits,teacher``) and builds the
teacher as it starts (backbone, res5 and projection from ``grounding/model_final.pth``, heads untrained),
with the names of every base and novel class as its vocabulary. On the images of ``splits/val.json`` it
scores each GT box as an RoI and counts the boxes whose best class (background left out) is right:
``base_acc`` / ``novel_acc`` among all the classes (generalized), ``novel_constrained_acc`` among the novel
classes only. Chance is 1 / classes and 1 / novel classes. The novel figures bound what the teacher's
pseudo masks can name: its projection stays frozen.

    python benchmarks/cpl_grounding_zero_shot.py --run-dir runs/demo_cpl [--recipe demo_cpl] [--set KEY=VALUE ...]

Last line: ``classes=… base_n=… base_acc=… novel_n=… novel_acc=… novel_constrained_acc=… chance=… novel_chance=…``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from gt_box_scores import best_class, gt_box_logits

from ovis.data.dataset import CocoDetection
from ovis.engine.train import load_checkpoint
from ovis.methods import load_recipe
from ovis.methods.cpl import GROUNDING_CHECKPOINT, grounding_to_detector
from ovis.models.detector import build_detector
from ovis.pseudo.detectors import class_embeddings, read_partition


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo_cpl"))
    ap.add_argument("--recipe", default="demo_cpl")
    ap.add_argument("--model", choices=("grounding", "teacher"), default="grounding",
                    help="teacher: the trained teacher instead (how much of grounding's naming survives its training)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the overrides the run was made with")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.set)
    part = read_partition(args.run_dir)
    classes = part["base"] + part["novel"]
    label = {c["id"]: i + 1 for i, c in enumerate(classes)}
    novel = {c["id"] for c in part["novel"]}
    first_novel = len(part["base"]) + 1
    torch.manual_seed(0)  # the untrained heads (their background logit does not enter the accuracies)
    model = build_detector(recipe.model, class_embeddings=class_embeddings(recipe, [c["name"] for c in classes], False))
    if args.model == "grounding":
        state = load_checkpoint(args.run_dir / GROUNDING_CHECKPOINT, keys=("model",))["model"]
        model.load_state_dict(grounding_to_detector(state, model), strict=False)
    else:
        model.load_state_dict(load_checkpoint(args.run_dir / "teacher" / "model_final.pth", keys=("model",))["model"])
    model.eval()
    ds = CocoDetection(args.run_dir / "splits" / "val.json", recipe.data.path(recipe.data.val_images),
                       with_masks=False, drop_crowd=True)
    counts = {"base": [0, 0], "novel": [0, 0], "novel_constrained": [0, 0]}
    for i in range(len(ds)):
        image, target = ds[i]
        cats = [ds.label_to_cat_id[int(t)] for t in target["labels"]]
        keep = torch.tensor([c in label for c in cats], dtype=torch.bool)
        if not keep.any():
            continue
        logits = gt_box_logits(model, image, target["boxes"][keep])
        best = best_class(logits).tolist()
        best_novel = best_class(logits, first_novel).tolist()
        for cat, b, bn in zip([c for c in cats if c in label], best, best_novel):
            side = "novel" if cat in novel else "base"
            counts[side][0] += int(b == label[cat])
            counts[side][1] += 1
            if side == "novel":
                counts["novel_constrained"][0] += int(bn == label[cat])
                counts["novel_constrained"][1] += 1
    acc = {k: v[0] / max(v[1], 1) for k, v in counts.items()}
    print(json.dumps({"run_dir": str(args.run_dir), "recipe": recipe.name, "model": args.model, "overrides": args.set}))
    print(f"classes={len(classes)} base_n={counts['base'][1]} base_acc={acc['base']:.3f} novel_n={counts['novel'][1]} "
          f"novel_acc={acc['novel']:.3f} novel_constrained_acc={acc['novel_constrained']:.3f} "
          f"chance={1 / len(classes):.3f} novel_chance={1 / max(len(novel), 1):.3f}")


if __name__ == "__main__":
    main()
