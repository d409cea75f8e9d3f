"""Reconstruction losses (L_rec) of a run, by name: L1, MSE, Charbonnier, NAFNet's PSNR loss
and 1 - SSIM (a differentiable SSIM on float images, not the BasicSR-exact score of
`metrics.basicsr`); `error_magnitude`, the positive error the collapse guard compares.

All images are float tensors in [0, 1], NCHW.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mcir_cli.choices import LOSSES
from mcir_cli.errors import McirError


def l1(pred: Tensor, target: Tensor) -> Tensor:
    return F.l1_loss(pred, target)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred, target)


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """mean(sqrt((pred - target)^2 + eps^2)) (MPRNet / Restormer form, eps = 1e-3)."""
    return torch.sqrt((pred - target) ** 2 + eps * eps).mean()


_PSNR_SCALE = 10.0 / math.log(10.0)


def psnr_loss(pred: Tensor, target: Tensor, loss_weight: float = 1.0) -> Tensor:
    """NAFNet's PSNRLoss: loss_weight * 10/ln(10) * mean_b log(mse_b + 1e-8).

    Equals -PSNR (dB) averaged over the batch for images in [0, 1]; minimise it.
    """
    if pred.dim() != 4:
        raise ValueError(f"psnr_loss expects NCHW tensors, got shape {tuple(pred.shape)}")
    per_image = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    return loss_weight * _PSNR_SCALE * torch.log(per_image + 1e-8).mean()


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma * sigma))
    g = g / g.sum()
    w2 = torch.outer(g, g).to(device=like.device, dtype=like.dtype)
    return w2.expand(channels, 1, size, size).contiguous()


def differentiable_ssim(pred: Tensor, target: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Differentiable SSIM on [0, 1] images: Gaussian window, valid region, per channel,
    averaged over batch, channels and positions."""
    c = pred.shape[1]
    w = _gaussian_window(window, sigma, c, pred)
    c1, c2 = 0.01**2, 0.03**2

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = filt(pred), filt(target)
    sxx = filt(pred * pred) - mu_x * mu_x
    syy = filt(target * target) - mu_y * mu_y
    sxy = filt(pred * target) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2)
    return (num / den).mean()


def ssim_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - SSIM (11x11 Gaussian, sigma 1.5, valid region)."""
    return 1.0 - differentiable_ssim(pred, target)


REC_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l1": l1,
    "mse": mse,
    "charbonnier": charbonnier,
    "psnr": psnr_loss,
    "ssim": ssim_loss,
}
assert tuple(sorted(REC_LOSSES)) == tuple(sorted(LOSSES)), "choices.LOSSES names every loss"


def make_rec_loss(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Reconstruction loss by name: l1, mse, charbonnier, psnr, ssim."""
    key = str(name).lower()
    if key not in REC_LOSSES:
        raise McirError(
            f"unknown reconstruction loss {name!r}; choose one of {', '.join(REC_LOSSES)}"
        )
    return REC_LOSSES[key]


def error_magnitude(name: str, l_rec: float) -> float:
    """A positive reconstruction error that compares by ratio, whatever the loss's sign:
    the loss itself for l1, charbonnier, mse and ssim (1 − SSIM); for the PSNR loss
    (−PSNR in dB, always negative) the MSE behind it, 10^(l/10). The collapse guard's
    "F x its running median" test needs this: on the signed PSNR loss it fired every step."""
    if str(name).lower() == "psnr":
        return 10.0 ** (l_rec / 10.0) if math.isfinite(l_rec) else float("inf")
    return l_rec
