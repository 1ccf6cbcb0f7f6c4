"""SGD with bias-specific groups, and the recipes' learning-rate schedule: linear warm-up × multistep."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import torch
from torch import nn

from ovis.config import TrainConfig


def lr_factor(cfg: TrainConfig, iteration: int) -> float:
    """Multiplier of the base lr for 0-based ``iteration``.

    Warm-up ramps linearly from ``warmup_factor`` at iteration 0 to 1 at ``warmup_iters``
    (detectron2's WarmupMultiStepLR); the step part multiplies by ``gamma`` once for every
    milestone in ``steps`` that is ≤ ``iteration``.
    """
    warm = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    return warm * cfg.gamma ** bisect_right(sorted(cfg.steps), iteration)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over :func:`lr_factor`; step it once per iteration, after ``optimizer.step()``."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it))


def default_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters split into weights and biases (``*.bias``), each with its lr and weight decay.

    Biases get ``lr * bias_lr_factor`` and ``weight_decay_bias`` (None = ``weight_decay``), as in
    the Mask R-CNN recipes.
    """
    weights: list[nn.Parameter] = []
    biases: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (biases if name.endswith("bias") else weights).append(p)
    wd_bias = cfg.weight_decay if cfg.weight_decay_bias is None else cfg.weight_decay_bias
    groups = [
        {"params": weights, "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": biases, "lr": cfg.lr * cfg.bias_lr_factor, "weight_decay": wd_bias},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig, param_groups: list[dict[str, Any]] | None = None) -> torch.optim.SGD:
    """SGD with momentum over ``param_groups`` (default :func:`default_param_groups`).

    Frozen parameters (``requires_grad`` False) are dropped from custom groups; a group without an
    ``lr`` or ``weight_decay`` gets the recipe's.
    """
    if param_groups is None:
        groups = default_param_groups(model, cfg)
    else:
        groups = []
        for g in param_groups:
            params = [p for p in g["params"] if p.requires_grad]
            if params:
                groups.append({**g, "params": params})
    if not groups:
        raise ValueError("no trainable parameters: every parameter is frozen (check train.freeze and the task's param_groups)")
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
