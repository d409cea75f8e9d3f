"""The EMA of the target's weights (KAIR's E_decay, BasicSR's ema_decay): what is validated
and written when a recipe keeps one. The negatives follow the raw weights, as in the paper."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn


def ema_init(model: nn.Module) -> dict[str, Tensor]:
    """A copy of the floating parameters, the EMA's starting point."""
    return {k: p.detach().clone() for k, p in model.named_parameters() if p.is_floating_point()}


@torch.no_grad()
def ema_update(ema: dict[str, Tensor], model: nn.Module, decay: float) -> None:
    """ema <- decay·ema + (1 − decay)·θ, one fused op for all parameters."""
    params = dict(model.named_parameters())
    keys = list(ema)
    torch._foreach_lerp_([ema[k] for k in keys], [params[k].detach() for k in keys], 1.0 - decay)


def start_share(decay: float, iters: int) -> float:
    """How much of the starting weights an EMA still holds after `iters` updates (decay^iters):
    0.999 over 1000 steps keeps 37 %, so the written weights barely moved."""
    return decay**iters


@contextlib.contextmanager
def swapped_in(model: nn.Module, ema: dict[str, Tensor] | None) -> Iterator[None]:
    """The weights that are validated and written: the EMA when there is one, put in
    place for the duration (the raw weights restored after)."""
    if ema is None:
        yield
        return
    params = dict(model.named_parameters())
    raw = {k: params[k].detach().clone() for k in ema}
    with torch.no_grad():
        for k, v in ema.items():
            params[k].copy_(v)
    try:
        yield
    finally:
        with torch.no_grad():
            for k, v in raw.items():
                params[k].copy_(v)
