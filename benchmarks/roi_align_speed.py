"""RoIAlign backward on CPU: torchvision's kernel against ovis' dense separable backward, by map size.

Usage: python benchmarks/roi_align_speed.py [--rois 512] [--channels 64] [--sides 20,40,64,80,96,128] [--threads 2]
Random features and RoIs (one image, 7x7 bins, sampling ratio 2, as the FPN box head pools). Times the
feature gradient only (torchvision's through autograd, minus its forward). The side where the two
cross sets ``ovis.models.roi_align.DENSE_MAX_CELLS``.
Last line: key=value pairs, ``ratio_<side>`` = torchvision time / dense time.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.ops import roi_align as tv_roi_align

from ovis.models.roi_align import roi_align_features_grad


def best_of(fn, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rois", type=int, default=512)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--sides", default="20,40,64,80,96,128")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    figures = []
    for side in [int(s) for s in args.sides.split(",")]:
        feats = torch.randn(1, args.channels, side, side, generator=gen, requires_grad=True)
        xy = torch.rand(args.rois, 2, generator=gen) * side * 0.9
        wh = torch.rand(args.rois, 2, generator=gen) * side * 0.3 + 1
        rois = torch.cat([torch.zeros(args.rois, 1), xy, xy + wh], 1)
        grad = torch.randn(args.rois, args.channels, 7, 7, generator=gen)
        forward = best_of(lambda: tv_roi_align(feats.detach(), rois, (7, 7), 1.0, 2))
        tv = best_of(lambda: torch.autograd.grad(tv_roi_align(feats, rois, (7, 7), 1.0, 2), feats, grad)) - forward
        dense = best_of(lambda: roi_align_features_grad(grad, rois, feats.shape, 1.0, 2, False))
        print(f"side {side}: torchvision backward {tv * 1000:.1f} ms, dense {dense * 1000:.1f} ms")
        figures.append(f"ratio_{side}={tv / dense:.2f}")
    print(f"rois={args.rois} channels={args.channels} threads={args.threads} " + " ".join(figures))


if __name__ == "__main__":
    main()
