"""Forward+backward and inference time of the detector variants at a recipe's model size.

Usage: python benchmarks/detector_speed.py [--recipe demo_cpl] [--batch 4] [--iters 5] [--threads 2] [--nchw]
Synthetic images (recipe image size) with 3 boxes/masks each; random backbone weights (timing only).
Last line: key=value pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from ovis.methods import load_recipe
from ovis.models.detector import build_detector


def synthetic_batch(n: int, size: int, gen: torch.Generator) -> tuple[list[torch.Tensor], list[dict]]:
    images, targets = [], []
    for _ in range(n):
        xy = torch.randint(0, size // 2, (3, 2), generator=gen).float()
        wh = torch.randint(size // 8, size // 2, (3, 2), generator=gen).float()
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(3, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        images.append(torch.rand(3, size, size, generator=gen))
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2, 1]), "masks": masks})
    return images, targets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--recipe", default="demo_cpl")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nchw", action="store_true", help="weights in contiguous (NCHW) format instead of channels-last")
    ap.add_argument("--set", nargs="*", default=[], help="recipe overrides, e.g. model.box_batch_size_per_image=64")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_recipe(args.recipe, args.set).model
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(8, cfg.embedding_dim or 384, generator=gen)
    model = build_detector(dataclasses.replace(cfg, backbone_weights=None), class_embeddings=emb)
    if args.nchw:
        model = model.to(memory_format=torch.contiguous_format)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    images, targets = synthetic_batch(args.batch, cfg.min_size, gen)
    model.train()
    times = []
    for i in range(args.iters + 1):
        t0 = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # first iteration warms up allocators
            times.append(time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(images)
        t0 = time.perf_counter()
        model(images)
        infer = (time.perf_counter() - t0) / args.batch
    train = sorted(times)[len(times) // 2]
    print(f"recipe={args.recipe} arch={cfg.arch} heads={cfg.heads} batch={args.batch} size={cfg.min_size} "
          f"threads={args.threads} format={'nchw' if args.nchw else 'as_built'} train_s_per_iter={train:.3f} infer_ms_per_img={infer * 1000:.1f}")


if __name__ == "__main__":
    main()
