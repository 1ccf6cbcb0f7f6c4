"""Can a recipe's RPN anchors reach the objects of its data? Anchor IoU with the training GT boxes.

For every non-crowd box of a COCO instances file, resized as the recipe's detector resizes its input,
this takes the anchors that the recipe's detector generates (its own backbone strides, anchor sizes
and ratios) and reports the best anchor IoU and how many anchors pass the RPN's foreground threshold
(IoU ≥ 0.7). An object without such an anchor gets one positive only through the low-quality match,
so the RPN learns it slowly. It also reports what OLN's objectness loss samples in each image
(docs/ggn.md#35-oln): anchors at IoU ≥ 0.3 with some GT box are its positives, and the 256 samples are
filled up with negatives (IoU < 0.1), so ``oln_pos_share`` is the positives' share of that sample.
Nothing is trained; the backbone runs once on a blank image.

    python benchmarks/anchor_coverage.py --recipe demo_cpl [--instances F.json] [--set model.min_size=320 ...]

Last line: ``boxes=… median_best_iou=… any_anchor_iou70=… best_iou50=… anchors_iou70_mean=…
oln_pos_per_image_median=… oln_pos_share_median=… oln_pos_share_mean=…``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from ovis.methods import load_recipe
from ovis.models.detector import build_detector
from ovis.models.heads import OLN_OBJECTNESS_POS_IOU

OLN_OBJECTNESS_SAMPLES = 256  # oln_box.py: objectness_sampler num=256, pos_fraction=1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="demo_cpl")
    ap.add_argument("--instances", type=Path, help="COCO instances file (default: the recipe's train_instances)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    cfg = recipe.model
    path = args.instances or recipe.data.path(recipe.data.train_instances)
    if recipe.data.demo and not path.exists():
        from ovis.data.synthetic import generate_demo_dataset
        generate_demo_dataset(recipe.data.root)
    coco = json.loads(Path(path).read_text())
    model = build_detector(cfg, torch.zeros(1, cfg.embedding_dim or 8)).eval()
    model.backbone.requires_grad_(False)
    best: list[float] = []
    hits: list[int] = []
    oln_pos: list[int] = []  # per image
    boxes_by_image: dict[int, list[list[float]]] = {}
    for a in coco["annotations"]:
        if not a.get("iscrowd", 0):
            x, y, w, h = a["bbox"]
            boxes_by_image.setdefault(a["image_id"], []).append([x, y, x + w, y + h])
    cache: dict[tuple[int, int], torch.Tensor] = {}
    for im in coco["images"]:
        if im["id"] not in boxes_by_image:
            continue
        h, w = im["height"], im["width"]
        scale = min(cfg.min_size / min(h, w), cfg.max_size / max(h, w))
        size = (round(h * scale), round(w * scale))
        if size not in cache:  # anchors depend only on the resized image size
            blank = torch.zeros(1, 3, *size)
            with torch.no_grad():
                feats = list(model.backbone(blank).values())
            cache[size] = model.rpn.anchor_generator(ImageList(blank, [size]), feats)[0]
        iou = box_iou(torch.tensor(boxes_by_image[im["id"]]) * scale, cache[size])
        best += iou.max(1).values.tolist()
        hits += (iou >= 0.7).sum(1).tolist()
        oln_pos.append(int((iou.max(0).values >= OLN_OBJECTNESS_POS_IOU).sum()))
    b, n = torch.tensor(best), torch.tensor(hits, dtype=torch.float)
    p = torch.tensor(oln_pos, dtype=torch.float)
    share = p.clamp(max=OLN_OBJECTNESS_SAMPLES) / OLN_OBJECTNESS_SAMPLES
    print(json.dumps({"recipe": recipe.name, "instances": str(path), "arch": cfg.arch, "min_size": cfg.min_size,
                      "anchor_sizes": cfg.anchor_sizes, "aspect_ratios": cfg.aspect_ratios}))
    print(f"boxes={len(b)} median_best_iou={b.median():.3f} any_anchor_iou70={(n > 0).float().mean():.3f} "
          f"best_iou50={(b >= 0.5).float().mean():.3f} anchors_iou70_mean={n.mean():.2f} "
          f"oln_pos_per_image_median={p.median():.0f} oln_pos_share_median={share.median():.3f} "
          f"oln_pos_share_mean={share.mean():.3f}")


if __name__ == "__main__":
    main()
