"""Real-ESRGAN's second-order degradation (`--degradation realesrgan`), batched in torch on
the batch's device: blur -> resize -> noise -> JPEG, twice, then the last resize with a
sinc filter and JPEG in a random order, rounded to 8 bits (Real-ESRGAN's
`realesrgan/models/realesrnet_model.py::feed_data`, BasicSR's noise functions).

Seeding: the loader gives each sample its kernels (drawn from the sample's own generator,
`blur_kernels.draw_kernels`) and a seed; everything else of a batch is drawn from the
first sample's seed: the batch-wide choices on a CPU generator (`draw_plan`), the noise on
a generator of the batch's device. A batch is therefore a pure function of its sample
indices, so a resume (which restarts at the same data position) gets the same batches.
Real-ESRGAN's training-pair pool (a 180-sample queue that shuffles samples across
batches) is not reproduced: it carries state from batch to batch."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mcir_cli.data.realesrgan.jpeg_sim import jpeg
from mcir_cli.data.realesrgan.kernels import choice, uniform, usm_kernel
from mcir_cli.data.realesrgan.settings import RealESRGANSettings

RESIZE_MODES = ("area", "bilinear", "bicubic")
DIRECTIONS = ("up", "down", "keep")


@dataclass(frozen=True)
class ResizeDraw:
    direction: str  # up | down | keep (resize_prob)
    factor: float  # up: [1, high], down: [low, 1], keep: 1
    mode: str  # area | bilinear | bicubic, uniformly


@dataclass(frozen=True)
class NoiseDraw:
    gaussian: bool  # else Poisson (one choice per batch, as Real-ESRGAN)
    level: Tensor  # per image: σ on the 0-255 scale, or the Poisson noise's scale
    grey: Tensor  # per image: the same noise in every channel


@dataclass(frozen=True)
class Plan:
    """Every random choice of one batch besides its kernels and noise fields."""

    resize1: ResizeDraw
    noise1: NoiseDraw
    quality1: Tensor  # JPEG quality per image
    blur2: bool
    resize2: ResizeDraw
    noise2: NoiseDraw
    quality2: Tensor
    sinc_first: bool  # [resize back + sinc] then JPEG, else JPEG then [resize back + sinc]
    final_mode: str
    crop: tuple[float, float]  # where the paired training crop sits, as fractions

    def describe(self) -> dict[str, Any]:
        """JSON-ready: what `mcir data degrade` records for each image."""
        def noise(n: NoiseDraw) -> dict[str, Any]:
            return {"kind": "gaussian" if n.gaussian else "poisson", "level": n.level.tolist(), "grey": n.grey.tolist()}

        return {"resize1": vars(self.resize1), "noise1": noise(self.noise1), "jpeg1": self.quality1.tolist(),
                "blur2": self.blur2, "resize2": vars(self.resize2), "noise2": noise(self.noise2),
                "jpeg2": self.quality2.tolist(), "order": "sinc, jpeg" if self.sinc_first else "jpeg, sinc",
                "final_mode": self.final_mode}


def _vector(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _resize(g: torch.Generator, probs: tuple[float, ...], lo_hi: tuple[float, float]) -> ResizeDraw:
    direction = DIRECTIONS[choice(g, probs)]
    factor = {"up": lambda: uniform(g, 1.0, lo_hi[1]), "down": lambda: uniform(g, lo_hi[0], 1.0),
              "keep": lambda: 1.0}[direction]()
    return ResizeDraw(direction, factor, RESIZE_MODES[int(torch.randint(3, (), generator=g))])


def _noise(s: RealESRGANSettings, g: torch.Generator, n: int, sfx: str) -> NoiseDraw:
    gaussian = uniform(g, 0.0, 1.0) < getattr(s, "gaussian_noise_prob" + sfx)
    lo_hi = getattr(s, ("noise_range" if gaussian else "poisson_scale_range") + sfx)
    level = _vector(g, n, *lo_hi)
    return NoiseDraw(gaussian, level, torch.rand(n, generator=g, dtype=torch.float64) < getattr(s, "gray_noise_prob" + sfx))


def draw_plan(s: RealESRGANSettings, n: int, g: torch.Generator) -> Plan:
    """A batch of n images' choices, in feed_data's order."""
    resize1, noise1, q1 = _resize(g, s.resize_prob, s.resize_range), _noise(s, g, n, ""), _vector(g, n, *s.jpeg_range)
    blur2 = uniform(g, 0.0, 1.0) < s.second_blur_prob
    resize2, noise2 = _resize(g, s.resize_prob2, s.resize_range2), _noise(s, g, n, "2")
    sinc_first = uniform(g, 0.0, 1.0) < 0.5
    final_mode = RESIZE_MODES[int(torch.randint(3, (), generator=g))]
    q2 = _vector(g, n, *s.jpeg_range2)
    crop = (uniform(g, 0.0, 1.0), uniform(g, 0.0, 1.0))
    return Plan(resize1, noise1, q1, blur2, resize2, noise2, q2, sinc_first, final_mode, crop)


# --------------------------------------------------------------------------- operations


def filter2d(images: Tensor, kernels: Tensor) -> Tensor:
    """Each image (B, C, H, W) convolved with its own kernel (B, k, k) or one shared (1, k, k),
    reflect-padded (BasicSR's filter2D); an image too small to reflect its kernel's
    half-width (only at sizes far below Real-ESRGAN's crops) is padded by replication."""
    b, c, h, w = images.shape
    k = kernels.shape[-1]
    mode = "reflect" if k // 2 < min(h, w) else "replicate"
    padded = F.pad(images, (k // 2,) * 4, mode=mode)
    weight = kernels.to(images).expand(b, k, k).repeat_interleave(c, 0)[:, None]
    out = F.conv2d(padded.reshape(1, b * c, h + k - 1, w + k - 1), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def usm_sharpen(images: Tensor, weight: float = 0.5, threshold: float = 10.0) -> Tensor:
    """BasicSR's USMSharp: sharpen by the residual from a σ = 8 Gaussian where it exceeds
    10/255, blended by the blurred mask."""
    kernel = usm_kernel()[None]
    residual = images - filter2d(images, kernel)
    mask = filter2d((residual.abs() * 255 > threshold).to(images), kernel)
    sharp = (images + weight * residual).clamp(0, 1)
    return mask * sharp + (1 - mask) * images


def add_noise(images: Tensor, draw: NoiseDraw, g: torch.Generator) -> Tensor:
    """Gaussian (σ/255) or Poisson noise per image, colour or grey per image, clipped to
    [0, 1] (BasicSR's random_add_{gaussian,poisson}_noise_pt with clip, no rounding)."""
    b = images.shape[0]
    level = draw.level.to(images)[:, None, None, None]
    grey = draw.grey.to(images.device)[:, None, None, None]
    if draw.gaussian:
        noise = torch.randn(images.shape, generator=g, device=images.device, dtype=images.dtype) * level / 255
        if draw.grey.any():
            mono = torch.randn((b, 1, *images.shape[-2:]), generator=g, device=images.device, dtype=images.dtype)
            noise = torch.where(grey, mono * level / 255, noise)
    else:
        noise = _poisson(images, g)
        if draw.grey.any():
            luma = (images * torch.tensor([0.2989, 0.587, 0.114]).to(images)[None, :, None, None]).sum(1, keepdim=True)
            noise = torch.where(grey, _poisson(luma, g).expand_as(images), noise)
        noise = noise * level
    return (images + noise).clamp(0, 1)


def _poisson(images: Tensor, g: torch.Generator) -> Tensor:
    """Poisson noise of the 8-bit image, its photon count the power of two at or above its
    number of distinct levels (scikit-image's and BasicSR's rule)."""
    q = (images * 255).round().clamp(0, 255) / 255
    levels = torch.tensor([float(torch.unique(q[i]).numel()) for i in range(q.shape[0])], dtype=torch.float64)
    vals = torch.exp2(torch.ceil(torch.log2(levels))).to(q)[:, None, None, None]
    return torch.poisson(q * vals, generator=g) / vals - q


def _resized(images: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    size = (max(1, size[0]), max(1, size[1]))
    return F.interpolate(images, size=size, mode=mode)


def apply_plan(gt: Tensor, kernels: dict[str, Tensor], plan: Plan, s: RealESRGANSettings, scale: int,
               noise: torch.Generator) -> Tensor:
    """The degraded input (B, C, H/scale, W/scale) of `gt` (B, C, H, W), 8-bit levels."""
    h, w = gt.shape[-2:]
    out = filter2d(gt, kernels["kernel1"])
    r = plan.resize1  # by the factor itself, as Real-ESRGAN (its coordinates map by the factor, not the sizes)
    out = F.interpolate(out, scale_factor=r.factor, mode=r.mode) if min(h, w) * r.factor >= 1 else \
        _resized(out, (int(h * r.factor), int(w * r.factor)), r.mode)
    out = add_noise(out, plan.noise1, noise)
    out = jpeg(out.clamp(0, 1), plan.quality1)
    if plan.blur2:
        out = filter2d(out, kernels["kernel2"])
    r = plan.resize2
    out = _resized(out, (int(h / scale * r.factor), int(w / scale * r.factor)), r.mode)
    out = add_noise(out, plan.noise2, noise)
    if plan.sinc_first:
        out = filter2d(_resized(out, (h // scale, w // scale), plan.final_mode), kernels["sinc_kernel"])
        out = jpeg(out.clamp(0, 1), plan.quality2)
    else:
        out = jpeg(out.clamp(0, 1), plan.quality2)
        out = filter2d(_resized(out, (h // scale, w // scale), plan.final_mode), kernels["sinc_kernel"])
    return (out * 255).round().clamp(0, 255) / 255


def batch_generators(seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """(choices on the CPU, noise on `device`) from one seed."""
    return torch.Generator().manual_seed(seed), torch.Generator(device=device).manual_seed(seed)


class Degrader:
    """Makes a training batch's inputs on `device`: (draws, HR crops) from the loader ->
    (LR patches, targets), the targets USM-sharpened when gt_usm, both cut to the
    training patch at one random place per batch (paired_random_crop)."""

    def __init__(self, settings: RealESRGANSettings, scale: int, patch: int, device: torch.device) -> None:
        self.settings, self.scale, self.patch, self.device = settings, scale, patch, device

    def __call__(self, draws: dict[str, Tensor], gt: Tensor) -> tuple[Tensor, Tensor]:
        s, p, k = self.settings, self.patch, self.scale
        cpu_g, noise_g = batch_generators(int(draws["seed"][0]), self.device)
        plan = draw_plan(s, gt.shape[0], cpu_g)
        gt = gt.to(self.device, non_blocking=True)
        kernels = {name: draws[name].to(self.device) for name in ("kernel1", "kernel2", "sinc_kernel")}
        with torch.no_grad():
            if s.gt_usm:
                gt = usm_sharpen(gt)
            lq = apply_plan(gt, kernels, plan, s, k, noise_g)
        top = int(plan.crop[0] * (lq.shape[-2] - p + 1))
        left = int(plan.crop[1] * (lq.shape[-1] - p + 1))
        lq = lq[..., top : top + p, left : left + p]
        gt = gt[..., top * k : (top + p) * k, left * k : (left + p) * k]
        return lq.contiguous(), gt.contiguous()

    def batches(self, loader: Iterable[tuple[dict[str, Tensor], Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
        for draws, gt in loader:
            yield self(draws, gt)
