"""Blur kernels of the Real-ESRGAN degradation, drawn per sample: isotropic and
anisotropic Gaussian, generalized Gaussian, plateau, and the 2-D sinc (circular low-pass)
filter; their formulas are BasicSR's `basicsr/data/degradations.py`, their draws
Real-ESRGAN's `realesrgan/data/realesrgan_dataset.py`.

Every draw comes from a `torch.Generator` on the CPU, in float64, so a kernel is a pure
function of (settings, seed) on every machine. A draw returns the kernel and the
parameters it was made with (`KernelDraw`), which the statistical tests check."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mcir_cli.data.realesrgan.settings import RealESRGANSettings

MIN_KERNEL = 7  # realesrgan_dataset.py: kernel sizes 7, 9, ..., 21


@dataclass(frozen=True)
class KernelDraw:
    """What one kernel was made of: kind is a kernel type, "sinc" or "pulse" (identity)."""

    kind: str
    size: int
    sigma_x: float = math.nan
    sigma_y: float = math.nan
    theta: float = math.nan
    beta: float = math.nan
    omega: float = math.nan


def uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def choice(g: torch.Generator, weights: tuple[float, ...]) -> int:
    """An index drawn with probability proportional to `weights` (random.choices)."""
    return int(torch.multinomial(torch.tensor(weights, dtype=torch.float64), 1, generator=g))


def _grid(size: int) -> Tensor:
    """(size, size, 2) coordinates (x, y) centred on 0: BasicSR's mesh_grid."""
    ax = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def _quadratic(size: int, sig_x: float, sig_y: float, theta: float) -> Tensor:
    """x^T Σ^-1 x over the grid, Σ = R diag(σx², σy²) R^T rotated by theta."""
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    sigma = rot @ torch.diag(torch.tensor([sig_x**2, sig_y**2], dtype=torch.float64)) @ rot.T
    grid = _grid(size)
    return ((grid @ torch.linalg.inv(sigma)) * grid).sum(-1)


def shaped_kernel(d: KernelDraw) -> Tensor:
    """The normalised kernel of a Gaussian-family draw: Gaussian exp(-q/2), generalized
    Gaussian exp(-q^β/2), plateau 1/(1 + q^β)."""
    q = _quadratic(d.size, d.sigma_x, d.sigma_y, d.theta)
    if d.kind.startswith("generalized"):
        k = torch.exp(-0.5 * q.pow(d.beta))
    elif d.kind.startswith("plateau"):
        k = 1.0 / (q.pow(d.beta) + 1.0)
    else:
        k = torch.exp(-0.5 * q)
    return k / k.sum()


def sinc_kernel(omega: float, size: int) -> Tensor:
    """The circularly symmetric low-pass filter ω·J1(ω r) / (2π r), its centre ω²/(4π),
    normalised (BasicSR's circular_lowpass_kernel)."""
    c = (size - 1) / 2
    ax = torch.arange(size, dtype=torch.float64) - c
    r = torch.sqrt(ax[:, None] ** 2 + ax[None, :] ** 2)
    k = omega * torch.special.bessel_j1(omega * r) / (2 * math.pi * r)
    k[size // 2, size // 2] = omega**2 / (4 * math.pi)
    return k / k.sum()


def padded(kernel: Tensor, size: int) -> Tensor:
    p = (size - kernel.shape[-1]) // 2
    return torch.nn.functional.pad(kernel, (p, p, p, p))


def _beta(g: torch.Generator, lo: float, hi: float) -> float:
    """Half the draws below 1 (lighter tails), half above (BasicSR)."""
    return uniform(g, lo, 1.0) if uniform(g, 0.0, 1.0) < 0.5 else uniform(g, 1.0, hi)


def _size(g: torch.Generator, largest: int) -> int:
    sizes = list(range(MIN_KERNEL, largest + 1, 2))
    return sizes[int(torch.randint(len(sizes), (), generator=g))]


def draw_blur(s: RealESRGANSettings, g: torch.Generator, second: bool = False) -> tuple[Tensor, KernelDraw]:
    """The blur kernel of the first (or second) degradation, padded to blur_kernel_size:
    a sinc filter with sinc_prob (cut-off in [π/3, π] below size 13, else [π/5, π]),
    otherwise a kernel type by kernel_prob, σ from blur_sigma, θ in [-π, π]."""
    sfx = "2" if second else ""
    largest = getattr(s, "blur_kernel_size" + sfx)
    size = _size(g, largest)
    if uniform(g, 0.0, 1.0) < getattr(s, "sinc_prob" + sfx):
        omega = uniform(g, math.pi / 3 if size < 13 else math.pi / 5, math.pi)
        return padded(sinc_kernel(omega, size), largest), KernelDraw("sinc", size, omega=omega)
    kinds = getattr(s, "kernel_list" + sfx)
    kind = kinds[choice(g, getattr(s, "kernel_prob" + sfx))]
    lo, hi = getattr(s, "blur_sigma" + sfx)
    sig_x = uniform(g, lo, hi)
    sig_y, theta = sig_x, 0.0
    if "aniso" in kind:
        sig_y, theta = uniform(g, lo, hi), uniform(g, -math.pi, math.pi)
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _beta(g, *getattr(s, "betag_range" + sfx))
    elif kind.startswith("plateau"):
        beta = _beta(g, *getattr(s, "betap_range" + sfx))
    draw = KernelDraw(kind, size, sig_x, sig_y, theta, beta)
    return padded(shaped_kernel(draw), largest), draw


def draw_final_sinc(s: RealESRGANSettings, g: torch.Generator) -> tuple[Tensor, KernelDraw]:
    """The last filter: a sinc with final_sinc_prob (cut-off in [π/3, π]), else a pulse."""
    largest = s.blur_kernel_size2
    if uniform(g, 0.0, 1.0) < s.final_sinc_prob:
        size = _size(g, largest)
        omega = uniform(g, math.pi / 3, math.pi)
        return padded(sinc_kernel(omega, size), largest), KernelDraw("sinc", size, omega=omega)
    pulse = torch.zeros(largest, largest, dtype=torch.float64)
    pulse[largest // 2, largest // 2] = 1.0
    return pulse, KernelDraw("pulse", 1)


def draw_kernels(s: RealESRGANSettings, g: torch.Generator) -> tuple[dict[str, Tensor], dict[str, KernelDraw]]:
    """The three kernels of one sample as float32 tensors (what the loader collates), and
    what each was made of."""
    made = {"kernel1": draw_blur(s, g), "kernel2": draw_blur(s, g, second=True), "sinc_kernel": draw_final_sinc(s, g)}
    return {k: v[0].float() for k, v in made.items()}, {k: v[1] for k, v in made.items()}


def usm_kernel(radius: int = 50) -> Tensor:
    """The Gaussian of BasicSR's USMSharp: OpenCV's getGaussianKernel(51, 0), whose σ is
    0.3·((51 − 1)/2 − 1) + 0.8 = 8.0, as an outer product."""
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)
