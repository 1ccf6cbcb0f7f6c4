"""How much of the base-class GT can the CPL teacher localise? RPN and detection box recall.

Reads a finished CPL run (``ovis reproduce demo_cpl --stages splits,teacher``) and, on the images
of its ``splits/val_base.json`` (or, with ``--split train_base``, the images it trained on), counts the GT boxes that the teacher's top RPN proposals
(``model.rpn_post_nms_top_n_test`` of them) and its final detections cover at IoU ≥ 0.5. It separates
"the teacher cannot find the objects" from "it finds them but names them wrongly".

    python benchmarks/cpl_teacher_recall.py --run-dir runs/demo_cpl [--recipe demo_cpl] [--images 30] [--split val_base]

It also scores the GT boxes themselves through the teacher's RoI head: ``gt_box_accuracy`` is the share
whose best class (background left out) is right, ``gt_box_background`` the share it calls background.

Last line: ``images=… gt=… proposals_per_image=… rpn_recall=… det_recall=… det_recall_right_class=…
gt_box_accuracy=… gt_box_background=…``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from gt_box_scores import best_class, gt_box_logits
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

from ovis.data.dataset import CocoDetection
from ovis.methods import load_recipe
from ovis.methods.cpl import class_embeddings, load_model
from ovis.models.detector import set_class_embeddings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo_cpl"))
    ap.add_argument("--recipe", default="demo_cpl")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--split", choices=("val_base", "train_base"), default="val_base",
                    help="train_base: how well the teacher fits its own training images")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe)
    model = load_model(recipe, args.run_dir, "teacher")
    images = recipe.data.train_images if args.split == "train_base" else recipe.data.val_images
    ds = CocoDetection(args.run_dir / "splits" / f"{args.split}.json", recipe.data.path(images),
                       with_masks=False, drop_crowd=True)
    names = [c["name"] for c in ds.coco["categories"] if c["id"] in ds.category_ids]
    set_class_embeddings(model, class_embeddings(recipe, names, normalize=False))
    proposals: list[torch.Tensor] = []
    model.rpn.register_forward_hook(lambda _m, _i, out: proposals.append(out[0][0]))
    gt_total = rpn_hits = det_hits = det_right = n_props = gt_named = gt_background = 0
    n = min(args.images, len(ds))
    for i in range(n):
        image, target = ds[i]
        if not len(target["boxes"]):
            continue
        proposals.clear()
        with torch.no_grad():
            out = model([image])[0]
        # proposals live in the resized image; back to the original pixels as torchvision's postprocess does
        props = resize_boxes(proposals[0], list(model.transform([image])[0].image_sizes[0]), list(image.shape[-2:]))
        n_props += len(props)
        gt = target["boxes"]
        gt_total += len(gt)
        rpn_hits += int((box_iou(gt, props).max(1).values >= 0.5).sum()) if len(props) else 0
        logits = gt_box_logits(model, image, gt)
        gt_named += int((best_class(logits) == target["labels"]).sum())
        gt_background += int((logits.argmax(1) == 0).sum())
        if len(out["boxes"]):
            iou = box_iou(gt, out["boxes"])
            det_hits += int((iou.max(1).values >= 0.5).sum())
            same = target["labels"][:, None] == out["labels"][None, :]
            det_right += int(((iou >= 0.5) & same).any(1).sum())
    print(json.dumps({"run_dir": str(args.run_dir), "backbone": recipe.model.backbone, "split": args.split}))
    print(f"images={n} gt={gt_total} proposals_per_image={n_props / max(n, 1):.1f} "
          f"rpn_recall={rpn_hits / max(gt_total, 1):.3f} det_recall={det_hits / max(gt_total, 1):.3f} "
          f"det_recall_right_class={det_right / max(gt_total, 1):.3f} "
          f"gt_box_accuracy={gt_named / max(gt_total, 1):.3f} gt_box_background={gt_background / max(gt_total, 1):.3f}")


if __name__ == "__main__":
    main()
