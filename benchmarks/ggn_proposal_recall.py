"""Where do a GGN run's detectors lose unseen objects: the RPN's ranking or the RoI head's? (GGN/OLN diagnostic.)

For each trained detector of a finished GGN run, on the images of ``splits/val.json``: the share of the
unseen classes' non-crowd GT boxes (``partition.json``'s ``novel``) that some box hits at IoU ≥ 0.5 among

- ``rpn100`` / ``rpn1000``: the RPN's first 100 / 1000 proposals, in the order it ranks them (by objectness;
  OLN's RPN keeps every level's top-k without NMS, a Mask R-CNN RPN after NMS);
- ``det100``: the first 100 final detections;

and ``score_spread``: the median over images of the span (highest − lowest) of the final detections' scores,
how much the scores rank the boxes at all. Localisation, whatever the ranking: ``det100_r75`` (the first 100
detections at IoU ≥ 0.75), ``oracle_r75`` (any of the RPN's proposals after the RoI head's box regression, at IoU
≥ 0.75), and the mean over GT boxes of the best IoU of any proposal before (``rpn_best_iou``) and after the
regression (``regressed_best_iou``). For an OLN detector, whose proposals carry their objectness,
``objectness_hit`` / ``objectness_bg``: the median objectness of the proposals that hit any GT box (seen or
unseen) at IoU ≥ 0.5 and of those that overlap none above 0.1, how far the RPN tells objects from background.

A detector whose ``rpn1000`` is high but ``det100`` low loses objects in its RoI head or its scoring.

    python benchmarks/ggn_proposal_recall.py --run-dir runs/demo_ggn [--recipe demo_ggn] [--models baseline,oln_baseline]

Last line: ``<model>_rpn100=… <model>_rpn1000=… <model>_det100=… <model>_det100_r75=… <model>_oracle_r75=…
<model>_score_spread=… <model>_rpn_best_iou=… <model>_regressed_best_iou=…`` (%, score and IoU) for each model (OLN's also ``<model>_objectness_hit=… <model>_objectness_bg=…``), then ``unseen_gt=…``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from ovis.data.dataset import CocoDetection
from ovis.methods import load_recipe
from ovis.methods.ggn import MODELS, load_model

CUTS = (("rpn100", "rpn", 100, 0.5), ("rpn1000", "rpn", 1000, 0.5), ("det100", "det", 100, 0.5),
        ("det100_r75", "det", 100, 0.75), ("oracle_r75", "regressed", None, 0.75))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=Path("runs/demo_ggn"))
    ap.add_argument("--recipe", default="demo_ggn")
    ap.add_argument("--models", default="baseline,oln_baseline", help="comma-separated detectors of the run")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="the overrides the run was made with")
    args = ap.parse_args(argv)
    models = args.models.split(",")
    if bad := [m for m in models if m not in MODELS or m == "teacher"]:
        raise SystemExit(f"--models: {bad} are not detectors; use some of {[m for m in MODELS if m != 'teacher']}")
    recipe = load_recipe(args.recipe, args.overrides)
    partition = json.loads((args.run_dir / "splits" / "partition.json").read_text())
    unseen = {c["id"] if isinstance(c, dict) else int(c) for c in partition["novel"]}
    ds = CocoDetection(args.run_dir / "splits" / "val.json", recipe.data.path(recipe.data.val_images),
                       with_masks=False, drop_crowd=True)
    figures: list[str] = []
    n_gt = 0
    for which in models:
        model = load_model(recipe, args.run_dir, which)
        hits = {name: 0 for name, *_ in CUTS}
        best_iou: dict[str, list[float]] = {"rpn": [], "regressed": []}
        spreads: list[float] = []
        objectness: dict[str, list[float]] = {"hit": [], "bg": []}
        n_gt = 0
        for i in range(len(ds)):
            image, target = ds[i]
            keep = torch.tensor([ds.label_to_cat_id[int(label)] in unseen for label in target["labels"]], dtype=torch.bool)
            with torch.no_grad():  # the model's own forward, keeping its proposals; boxes back in the image's pixels
                images, _ = model.transform([image])
                features = model.backbone(images.tensors)
                proposals, _ = model.rpn(images, features)
                detections, _ = model.roi_heads(features, proposals, images.image_sizes)
                size = [tuple(image.shape[-2:])]
                det = model.transform.postprocess(detections, images.image_sizes, size)[0]
                rpn = model.transform.postprocess([{"boxes": proposals[0][:, :4]}], images.image_sizes, size)[0]["boxes"]
                # every proposal through the RoI head's (class-agnostic) box regression
                _, feats = model.roi_heads.box_features(features, [proposals[0][:, :4]], images.image_sizes)
                deltas = model.roi_heads.box_predictor(feats)[1]
                regressed = model.roi_heads.regress_boxes(deltas, [proposals[0][:, :4]])
                regressed = model.transform.postprocess([{"boxes": regressed}], images.image_sizes, size)[0]["boxes"]
            if proposals[0].shape[1] == 5 and len(target["boxes"]):  # OLN: (box, objectness)
                best = box_iou(rpn, target["boxes"]).max(1).values
                objectness["hit"] += proposals[0][best >= 0.5, 4].tolist()
                objectness["bg"] += proposals[0][best <= 0.1, 4].tolist()
            gt = target["boxes"][keep]
            if not len(gt):
                continue
            n_gt += len(gt)
            boxes = {"rpn": rpn, "det": det["boxes"], "regressed": regressed}
            if len(det["scores"]):
                spreads.append(float(det["scores"].max() - det["scores"].min()))
            for name, source, k, thresh in CUTS:
                if len(boxes[source]):
                    hits[name] += int((box_iou(gt, boxes[source][:k]).max(1).values >= thresh).sum())
            for source in best_iou:
                best_iou[source] += box_iou(gt, boxes[source]).max(1).values.tolist() if len(boxes[source]) else [0.0] * len(gt)
        spread = float(np.median(spreads)) if spreads else float("nan")
        mean_iou = {k: float(np.mean(v)) if v else float("nan") for k, v in best_iou.items()}
        print(f"{which}: unseen GT boxes hit (%): "
              + ", ".join(f"{k} {100 * v / max(n_gt, 1):.1f}" for k, v in hits.items())
              + f"; median score span {spread:.3f}; best IoU of a proposal {mean_iou['rpn']:.3f}, "
              f"regressed {mean_iou['regressed']:.3f}", flush=True)
        figures += [f"{which}_{k}={100 * v / max(n_gt, 1):.1f}" for k, v in hits.items()] + [f"{which}_score_spread={spread:.3f}"]
        figures += [f"{which}_rpn_best_iou={mean_iou['rpn']:.3f}", f"{which}_regressed_best_iou={mean_iou['regressed']:.3f}"]
        if objectness["hit"] and objectness["bg"]:
            figures += [f"{which}_objectness_{k}={float(np.median(v)):.3f}" for k, v in objectness.items()]
    print(" ".join(figures) + f" unseen_gt={n_gt}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
