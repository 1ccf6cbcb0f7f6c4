"""Seconds per training iteration: ovis's engine (`ovis.engine.train.train`) against a plain
DataLoader + SGD loop, on the same model (demo_ggn's class-agnostic R18-FPN Mask R-CNN, same initial
weights), the same synthetic images in the same order, the same batch size and iteration count.

Both sides are timed end to end (loader start-up to the last optimizer step; for ovis also its
metrics lines every ``log_period`` and its checkpoints, ``last.pth`` + ``model_final.pth``, until
both are on disk). Runs alternate ovis / bare ``--repeats`` times after one untimed warm-up pair;
medians are compared.

    .venv/bin/python benchmarks/train_step.py [--iters 16] [--repeats 3] [--batch-size 2] [--threads 2]

Last line: ``ovis_s_per_iter=… bare_s_per_iter=… overhead_pct=…``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ovis.config import TrainConfig
from ovis.data.dataset import CocoDetection, collate_fn
from ovis.data.synthetic import generate_demo_dataset
from ovis.engine.train import TrainTask, train
from ovis.methods import load_recipe
from ovis.models.detector import build_detector


def bare_loop(model: nn.Module, ds: Dataset, cfg: TrainConfig, order: list[int]) -> float:
    """torchvision-reference style loop over ``order`` (dataset indices); returns wall seconds."""
    t0 = time.perf_counter()
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=order, collate_fn=collate_fn, num_workers=cfg.num_workers)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_iters
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: cfg.warmup_factor + (1 - cfg.warmup_factor) * it / warm if it < warm else 1.0)
    model.train()
    for images, targets in loader:
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        opt.step()
        sched.step()
    return time.perf_counter() - t0


def ovis_loop(model: nn.Module, ds: Dataset, cfg: TrainConfig, out_dir: Path) -> float:
    t0 = time.perf_counter()
    train(TrainTask(model, ds, cfg), out_dir, device="cpu", resume=False, progress=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=16)
    ap.add_argument("--warmup-iters", type=int, default=3, help="iterations of the untimed warm-up pair")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-period", type=int, default=20, help="ovis metrics line every N iterations (TrainConfig default)")
    ap.add_argument("--checkpoint-period", type=int, default=100,
                    help="ovis last.pth every N iterations (demo_ggn's students: 60, its teacher: 400)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)  # keeps the engine's INFO lines off stderr

    recipe = load_recipe("demo_ggn")
    tmp = Path(tempfile.mkdtemp(prefix="ovis-bench-"))
    paths = generate_demo_dataset(tmp / "data", seed=0, num_train=max(64, args.iters * args.batch_size // 2),
                                  num_val=1, image_size=recipe.data.demo_image_size)
    ds = CocoDetection(paths.root / recipe.data.train_instances, paths.root / recipe.data.train_images,
                       class_agnostic=True, skip_empty=True)
    torch.manual_seed(0)
    init = build_detector(recipe.model)
    # demo_ggn's student solver (warm-up 50 it from 0.001, gradient clipping at 10) without the lr steps
    base = dataclasses.replace(recipe.student, batch_size=args.batch_size, num_workers=0, steps=[],
                               clip_grad_norm=recipe.student.clip_grad_norm or 10.0, log_period=args.log_period,
                               checkpoint_period=args.checkpoint_period, seed=0)

    def run(kind: str, iters: int, tag: str) -> float:
        cfg = dataclasses.replace(base, max_iter=iters)
        # the engine's first epoch order (InfiniteSampler, epoch 0), so both see the same batches
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
        order = (order * (-(-iters * cfg.batch_size // len(order))))[: iters * cfg.batch_size]
        model = copy.deepcopy(init)
        if kind == "ovis":
            return ovis_loop(model, ds, cfg, tmp / f"run-{tag}") / iters
        return bare_loop(model, ds, cfg, order) / iters

    run("ovis", args.warmup_iters, "warm")
    run("bare", args.warmup_iters, "warm")
    ovis_t, bare_t = [], []
    for r in range(args.repeats):
        ovis_t.append(run("ovis", args.iters, str(r)))
        bare_t.append(run("bare", args.iters, str(r)))
        print(f"repeat {r}: ovis {ovis_t[-1]:.4f} s/it  bare {bare_t[-1]:.4f} s/it", flush=True)
    o, b = statistics.median(ovis_t), statistics.median(bare_t)
    print(f"images={len(ds)} batch_size={args.batch_size} iters={args.iters} repeats={args.repeats} "
          f"threads={args.threads} checkpoint_period={args.checkpoint_period} log_period={args.log_period}")
    print(f"ovis_s_per_iter={o:.4f} bare_s_per_iter={b:.4f} overhead_pct={100 * (o - b) / b:.2f}")


if __name__ == "__main__":
    main()
