"""Grouping with oracle affinity on real COCO val2017 images (GGN acceptance check, docs/ggn.md#32-grouping).

The oracle affinity of an image is the PA training target computed from all its non-crowd GT
instance masks (all classes) at original resolution: ``affinity_target(palette_from_masks(masks))``.
``group_affinity`` (upstream extraction parameters) then proposes top-20 masks; we report how well
they recover the GT instances that are non-crowd with area ≥ 32² (COCO ``area`` field):
pooled recall@0.5 (hits / instances over all images), per-image mean recall (images with ≥1 such
instance), mean best IoU per instance, and seconds per image for ``group_affinity``.

    python benchmarks/grouping_oracle.py [--ann FILE] [--n 20] [--min-area 1024]

Uses one BLAS thread (as the parallel CPU extraction workers would; set before numpy loads).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

from ovis.models.affinity import affinity_target, palette_from_masks  # noqa: E402
from ovis.pseudo.grouping import GroupingParams, group_affinity, gt_iou  # noqa: E402

DEFAULT_ANN = Path(__file__).resolve().parents[1] / "tests/data/real/coco_mini/annotations/instances_val2017.json"


def decode(ann: dict, h: int, w: int) -> np.ndarray:
    """Bool mask [H, W] of one COCO annotation (polygons or RLE)."""
    segm = ann["segmentation"]
    if isinstance(segm, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    elif isinstance(segm["counts"], list):
        rle = mask_utils.frPyObjects(segm, h, w)
    else:
        rle = segm
    return mask_utils.decode(rle).astype(bool)


def oracle_image(image: dict, anns: list[dict], min_area: float, params: GroupingParams) -> dict:
    """Group the oracle affinity of one image; best IoU per evaluated GT instance and timing."""
    h, w = image["height"], image["width"]
    non_crowd = [a for a in anns if not a.get("iscrowd", 0)]
    if not non_crowd:
        return {"best_iou": np.zeros(0), "seconds": 0.0, "n_candidates": 0}
    masks = np.stack([decode(a, h, w) for a in non_crowd])
    affinity = affinity_target(palette_from_masks(torch.from_numpy(masks)))[0].numpy()
    t0 = time.perf_counter()
    cands = group_affinity(affinity, params)
    seconds = time.perf_counter() - t0
    evaluated = [i for i, a in enumerate(non_crowd) if a["area"] >= min_area]
    if not evaluated or not cands:
        best = np.zeros(len(evaluated))
    else:
        best = gt_iou(masks[evaluated], np.stack([c.mask for c in cands]))
    return {"best_iou": best, "seconds": seconds, "n_candidates": len(cands)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="grouping_oracle", description=__doc__.splitlines()[0])
    ap.add_argument("--ann", type=Path, default=DEFAULT_ANN, help="COCO instances json (default: coco_mini val2017)")
    ap.add_argument("--n", type=int, default=20, help="first N images by id (default 20)")
    ap.add_argument("--min-area", type=float, default=32.0**2, help="evaluate GT with area ≥ this (default 1024)")
    ap.add_argument("--iou", type=float, default=0.5)
    args = ap.parse_args(argv)
    data = json.loads(args.ann.read_text())
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    images = sorted(data["images"], key=lambda im: im["id"])[: args.n]
    params = GroupingParams()
    hits = total = 0
    per_image, best_all, secs = [], [], []
    for im in images:
        r = oracle_image(im, by_image.get(im["id"], []), args.min_area, params)
        best = r["best_iou"]
        secs.append(r["seconds"])
        n_hit = int((best >= args.iou).sum())
        hits += n_hit
        total += len(best)
        best_all.extend(best.tolist())
        if len(best):
            per_image.append(n_hit / len(best))
        print(f"image {im['id']} {im['width']}x{im['height']}: {n_hit}/{len(best)} instances recalled, "
              f"best IoU {np.round(best, 2).tolist()}, {r['n_candidates']} candidates, {r['seconds']:.1f} s", flush=True)
    print(
        f"images={len(images)} instances={total} pooled_recall50={hits / max(total, 1):.3f} "
        f"per_image_recall50={np.mean(per_image) if per_image else 0.0:.3f} "
        f"mean_best_iou={np.mean(best_all) if best_all else 0.0:.3f} sec_per_image={np.mean(secs):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
