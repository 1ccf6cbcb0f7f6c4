"""Would upstream's OLN ranker keep better pseudo masks than the PA score? (GGN acceptance diagnostic.)

GGN keeps, per training image, the first ``pseudo.top_k`` grouping candidates in the PA network's ranking
that do not duplicate a seen GT object (docs/ggn.md#33-pseudo-gt). Upstream's optional learned ranker
(docs/ggn.md#32-grouping, "Optional learned ranker") ranks them instead by ``pa_score / 2 + r + r · c``
with a trained OLN-Box model: ``r`` the RoI head's IoU score of the candidate's box, ``c`` the RPN
objectness of the anchor with the highest IoU to it. This re-ranks the candidates a GGN run's pseudo
stage stored (its top ``pseudo.top_n`` by PA score, after the PA ranking's NMS; upstream ranks every
candidate before NMS) with the ``oln_baseline`` detector of ``--oln-dir`` (OLN heads on base GT), keeps
the first ``top_k`` with GT IoU below ``pseudo.gt_iou_thresh``, and reports how many unseen objects they
cover at mask IoU ≥ 0.5 and how many of them are right, for the PA ranking, the OLN ranker, and ``r`` or
``c`` alone. Nothing is trained.

    python benchmarks/ggn_oln_ranker.py --run-dir runs/demo_ggn [--oln-dir DIR] [--set KEY=VALUE ...]

``--oln-dir``: a folder with ``oln_baseline/model_final.pth`` (default: the run's); ``--set``: the
overrides that detector was trained with.

Last line (%): ``unseen_gt=… pa_coverage=… pa_precision=… oln_coverage=… oln_precision=… r_coverage=…
r_precision=… c_coverage=… c_precision=…``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou

from ovis.data.coco import ann_to_rle, load_coco
from ovis.data.dataset import load_rgb
from ovis.data.masks import mask_iou, match_counts
from ovis.methods import load_recipe
from ovis.methods.ggn import load_model
from ovis.methods.ggn.datasets import unseen_gt
from ovis.methods.ggn.extract import sharding
from ovis.runs import RunLayout

IOU = 0.5
RANKINGS = ("pa", "oln", "r", "c")


@torch.no_grad()
def oln_scores(model: torch.nn.Module, image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(r, c) of each box ``[n, 4]`` (xyxy, image pixels): the RoI IoU score and the RPN objectness of the
    box's best-IoU anchor, both after their sigmoid."""
    images, _ = model.transform([image])
    boxes = resize_boxes(boxes, list(image.shape[-2:]), list(images.image_sizes[0]))
    features = model.backbone(images.tensors)
    levels = list(features.values())
    objectness, _ = model.rpn.head(levels)
    anchors = model.rpn.anchor_generator(images, levels)[0]
    flat = torch.cat([o.permute(0, 2, 3, 1).reshape(-1) for o in objectness])  # the anchors' order: level, y, x
    c = flat[box_iou(boxes, anchors).argmax(1)].sigmoid()
    _, feats = model.roi_heads.box_features(features, [boxes], images.image_sizes)
    iou_logits, _ = model.roi_heads.box_predictor(feats)
    return iou_logits.flatten().sigmoid(), c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo_ggn"))
    ap.add_argument("--oln-dir", type=Path, default=None, help="folder with oln_baseline/ (default: --run-dir)")
    ap.add_argument("--recipe", default="demo_ggn")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="the overrides the OLN detector was trained with")
    args = ap.parse_args(argv)
    recipe = load_recipe(args.recipe, args.overrides)
    stats = json.loads(RunLayout(args.run_dir).pseudo_stats.read_text())
    records = sharding(recipe, args.run_dir, stats["shards"]).records()
    if records is None:
        raise SystemExit(f"{args.run_dir}: the pseudo stage's candidate shards are missing or stale")
    model = load_model(recipe, args.oln_dir or args.run_dir, "oln_baseline")
    unseen, _ = unseen_gt(recipe, args.run_dir, set(records))
    infos = {im["id"]: im for im in load_coco(recipe.data.path(recipe.data.train_instances))["images"]}
    root = recipe.data.path(recipe.data.train_images)
    covered, right, kept = (dict.fromkeys(RANKINGS, 0) for _ in range(3))
    n_gt = 0
    for image_id, rec in records.items():
        gts = unseen.get(image_id, [])
        n_gt += len(gts)
        cands = [c for c in rec["candidates"] if c["gt_iou"] < stats["gt_iou_thresh"]]  # in the PA ranking
        if not cands:
            continue
        xywh = torch.tensor([c["bbox"] for c in cands], dtype=torch.float)
        info = infos[image_id]
        image = load_rgb(root / info["file_name"], (info["width"], info["height"]), f"image {image_id}")
        r, c = oln_scores(model, image, torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
        pa = torch.tensor([x["score"] for x in cands])
        order = {"pa": torch.arange(len(cands)), "oln": torch.argsort(-(pa / 2 + r + r * c), stable=True),
                 "r": torch.argsort(-r, stable=True), "c": torch.argsort(-c, stable=True)}
        gt_rles = [ann_to_rle(a, rec["height"], rec["width"]) for a in gts]
        for name, o in order.items():
            first = [cands[int(i)]["segmentation"] for i in o[: recipe.pseudo.top_k]]
            hit, ok = match_counts(mask_iou(first, gt_rles), IOU)
            covered[name] += hit
            right[name] += ok
            kept[name] += len(first)
    print(f"{len(records)} images, top_k {recipe.pseudo.top_k}: unseen objects covered / masks right (%): " + ", ".join(
        f"{k} {100 * covered[k] / max(1, n_gt):.1f} / {100 * right[k] / max(1, kept[k]):.1f}" for k in RANKINGS))
    print(f"unseen_gt={n_gt} " + " ".join(f"{k}_coverage={100 * covered[k] / max(1, n_gt):.1f} "
                                           f"{k}_precision={100 * right[k] / max(1, kept[k]):.1f}" for k in RANKINGS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
