"""The learning rate as a pure function of the step: warm-up, then constant, multistep or
cosine, times the collapse guard's lr scale; written into the optimizer's groups before
each step, so nothing but the step and the scale needs saving."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from mcir_cli.train.config import TrainConfig


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """Learning-rate multiplier per step. The cosine's horizon is `schedule_iters`, fixed
    when the run began, so a resume that extends --iters continues the same curve (at its
    floor past the horizon)."""
    horizon = cfg.schedule_iters or cfg.iters

    def factor(step: int) -> float:
        if cfg.warmup and step < cfg.warmup:
            return (step + 1) / cfg.warmup
        if cfg.schedule == "multistep":
            return cfg.gamma ** sum(step >= m for m in cfg.milestones)
        if cfg.schedule == "cosine":
            span = max(1, horizon - cfg.warmup)
            t = min(1.0, (step - cfg.warmup) / span)
            floor = cfg.eta_min / cfg.lr if cfg.lr else 0.0
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return factor


def learning_rate(cfg: TrainConfig, step: int, lr_scale: float = 1.0) -> float:
    """The lr of the step after `step` finished steps: (lr · scale) · factor, in that
    order, the product torch's LambdaLR formed (base_lr · λ(epoch)), so runs saved while
    mcir used it resume bit-exactly."""
    return cfg.lr * lr_scale * lr_factor(cfg)(step)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
