"""Speed of GGN grouping on real 640×480 COCO images, one CPU core (GGN acceptance check, docs/ggn.md#32-grouping).

For each image (the first ``--n`` of coco_mini val2017 by id whose size is 640×480) two affinity maps:
oracle = ``affinity_target(palette_from_masks(all non-crowd GT masks))``, and noisy =
``clip(gaussian_filter(oracle + N(0, σ), sigma=--blur), 0, 1)`` with a fixed seed (the kind of map a
learned network gives: hundreds of superpixels). ``group_affinity`` runs with globalisation
(``GroupingParams()``) and without (``globalization=0``) on both. Reported per setting: median and
mean seconds per image, mean number of superpixels, pooled recall@0.5 of non-crowd GT with
``area`` ≥ 32² among the top-20 candidates.

    python benchmarks/grouping_speed.py [--ann FILE] [--n 10] [--sigma 0.1] [--blur 1.0] [--seed 0]
                                        [--spectral-downsample 2]

Last line: ``s_per_img_glob=… s_per_img_noglob=…`` (medians, noisy affinity) plus recalls.
Uses one BLAS/OpenMP thread (set before numpy loads).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grouping_oracle import DEFAULT_ANN, decode  # noqa: E402

from ovis.models.affinity import affinity_target, palette_from_masks  # noqa: E402
from ovis.pseudo.grouping import GroupingParams, group_affinity, gt_iou, superpixels  # noqa: E402

torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="grouping_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--ann", type=Path, default=DEFAULT_ANN, help="COCO instances json (default: coco_mini val2017)")
    ap.add_argument("--n", type=int, default=10, help="first N 640×480 images by id (default 10)")
    ap.add_argument("--sigma", type=float, default=0.1, help="Gaussian noise σ added to the oracle (default 0.1)")
    ap.add_argument("--blur", type=float, default=1.0, help="gaussian_filter sigma in pixels (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-area", type=float, default=32.0**2)
    ap.add_argument("--spectral-downsample", type=int, default=GroupingParams().spectral_downsample,
                    help="GroupingParams.spectral_downsample (1: eigen-solve on the full pixel grid, as upstream)")
    args = ap.parse_args(argv)
    data = json.loads(args.ann.read_text())
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd", 0):
            by_image.setdefault(a["image_id"], []).append(a)
    images = [im for im in sorted(data["images"], key=lambda im: im["id"])
              if {im["width"], im["height"]} == {640, 480} and im["id"] in by_image][: args.n]
    rng = np.random.default_rng(args.seed)
    base = GroupingParams(spectral_downsample=args.spectral_downsample)
    settings = {"glob": base, "noglob": dataclasses.replace(base, globalization=0.0)}
    res = {(k, s): {"sec": [], "hits": 0, "total": 0, "sp": []} for k in ("oracle", "noisy") for s in settings}
    for im in images:
        h, w = im["height"], im["width"]
        anns = by_image[im["id"]]
        masks = np.stack([decode(a, h, w) for a in anns])
        oracle = affinity_target(palette_from_masks(torch.from_numpy(masks)))[0].numpy().astype(np.float64)
        noisy = np.clip(ndi.gaussian_filter(oracle + rng.normal(0.0, args.sigma, oracle.shape), args.blur), 0.0, 1.0)
        evaluated = masks[[i for i, a in enumerate(anns) if a["area"] >= args.min_area]]
        line = [f"image {im['id']} {w}x{h}:"]
        for kind, aff in (("oracle", oracle), ("noisy", noisy)):
            n_sp = int(superpixels(aff).max())
            for s, params in settings.items():
                t0 = time.perf_counter()
                cands = group_affinity(aff, params)
                sec = time.perf_counter() - t0
                best = np.zeros(len(evaluated))
                if cands and len(evaluated):
                    best = gt_iou(evaluated, np.stack([c.mask for c in cands]))
                r = res[kind, s]
                r["sec"].append(sec)
                r["sp"].append(n_sp)
                r["hits"] += int((best >= 0.5).sum())
                r["total"] += len(evaluated)
                line.append(f"{kind}/{s} {sec:.2f}s {int((best >= 0.5).sum())}/{len(evaluated)} sp={n_sp}")
        print(" ".join(line), flush=True)
    for (kind, s), r in res.items():
        print(f"{kind}/{s}: median {np.median(r['sec']):.2f} s/img, mean {np.mean(r['sec']):.2f} s/img, "
              f"superpixels {np.mean(r['sp']):.0f}, pooled recall@0.5 {r['hits'] / max(r['total'], 1):.3f} "
              f"({r['hits']}/{r['total']})")
    rec = {k: res[k]["hits"] / max(res[k]["total"], 1) for k in res}
    print(
        f"images={len(images)} s_per_img_oracle_glob={np.median(res['oracle', 'glob']['sec']):.2f} "
        f"s_per_img_oracle_noglob={np.median(res['oracle', 'noglob']['sec']):.2f} "
        f"recall_oracle_glob={rec['oracle', 'glob']:.3f} recall_oracle_noglob={rec['oracle', 'noglob']:.3f} "
        f"recall_noisy_glob={rec['noisy', 'glob']:.3f} recall_noisy_noglob={rec['noisy', 'noglob']:.3f} "
        f"s_per_img_glob={np.median(res['noisy', 'glob']['sec']):.2f} "
        f"s_per_img_noglob={np.median(res['noisy', 'noglob']['sec']):.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
