"""One SPN step: losses in, gradients out, L = L_rec − λ·L_neg."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mcir_cli.models.inference import autocast
from mcir_cli.train.ema import ema_update
from mcir_cli.train.parts import Parts


@dataclass
class StepLosses:
    loss: float
    l_rec: float
    l_neg: float
    grad_norm: float
    # PSNR (dB) of each negative's output against the target's on this batch: how far the
    # history is from the model (a negative at ~20 dB is close to a random one)
    neg_psnr: tuple[float, ...] = ()

    @property
    def finite(self) -> bool:
        return math.isfinite(self.loss) and math.isfinite(self.grad_norm)


def _distance_db(out: Tensor, neg: Tensor) -> Tensor:
    """PSNR of each negative's output against the target's, in [0, 1] units."""
    mse = (neg.float() - out.detach().float().unsqueeze(0)).pow(2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def _reconstruction(parts: Parts, lq: Tensor, gt: Tensor, quality: Tensor | None) -> tuple[Tensor, Tensor]:
    """The target's output and L_rec; with FBCNN's recipe, L_rec also holds its
    quality-factor term, qf_loss · L1(predicted, (100 − q)/100), over the samples whose q
    is known (FBCNN `model_fbcnn.py`; pairs given as files have none)."""
    if quality is None or not parts.qf_loss:
        out = parts.wrapped(lq)
        return out, parts.rec_loss(out.float(), gt)
    out, predicted = parts.wrapped(lq, side=True)
    l_rec = parts.rec_loss(out.float(), gt)
    quality = quality.to(parts.device).float()
    known = ~torch.isnan(quality)
    if known.any():
        l_rec = l_rec + parts.qf_loss * (predicted.float().reshape(-1)[known] - quality[known]).abs().mean()
    return out, l_rec


def spn_step(parts: Parts, lq: Tensor, gt: Tensor, lam: float, grad_clip: float | None, ema_decay: float,
             quality: Tensor | None = None) -> StepLosses:
    """Forward the target and the negatives, backward L, clip, and step the optimizer
    (at the lr the loop set) and the EMA of the weights -- unless the loss or gradient is not finite
    (then nothing is applied and the collapse guard decides)."""
    lq = lq.to(parts.device, non_blocking=True)
    gt = gt.to(parts.device, non_blocking=True)
    if parts.channels_last:
        lq = lq.contiguous(memory_format=torch.channels_last)
    parts.optimizer.zero_grad(set_to_none=True)
    with autocast(parts.device, "bf16" if parts.amp_dtype is not None else None):
        out, l_rec = _reconstruction(parts, lq, gt, quality)
    dist = torch.zeros(0, device=parts.device)
    if parts.bank is not None and parts.spn is not None:
        neg = parts.bank(lq, parts.spn_dtype)
        l_neg = parts.spn(out.float(), neg.float(), parts.spn_dtype)
        loss = l_rec - lam * l_neg
        dist = _distance_db(out, neg)
    else:
        l_neg = torch.zeros((), device=parts.device)
        loss = l_rec
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.model.parameters(), grad_clip or float("inf"))
    values = torch.cat([torch.stack([loss.detach(), l_rec.detach(), l_neg.detach().float(),
                                     grad_norm.detach().float()]), dist.detach()]).tolist()
    result = StepLosses(*values[:4], neg_psnr=tuple(values[4:]))
    if result.finite:
        parts.optimizer.step()
        if parts.ema is not None:
            ema_update(parts.ema, parts.model, ema_decay)
    return result
