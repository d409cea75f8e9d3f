"""JPEG compression of a batch in torch, on whatever device the batch is on: the JPEG of
Real-ESRGAN's training degradations, which uses BasicSR's DiffJPEG (`basicsr/utils/diffjpeg.py`,
non-differentiable mode). As DiffJPEG: full-range YCbCr (JFIF), 4:2:0 chroma by 2x2 means,
orthonormal 8x8 DCT, quantisation by the standard luma/chroma tables scaled by libjpeg's
quality factor (5000/q below 50, 200 − 2q above) *without* libjpeg's integer rounding,
rounding, dequantisation, inverse DCT, nearest-neighbour chroma upsampling, RGB clamped to
[0, 1], in float32 (as DiffJPEG: fast on any GPU). No entropy coding (it is lossless). A
quality may be fractional (Real-ESRGAN draws it uniformly); it is per image.

Where it departs from DiffJPEG, towards libjpeg: the tables are in the JPEG standard's
orientation (DiffJPEG stores them transposed: its DCT indexes blocks (x, y) but reads the
tables (v, u)); images are padded to a multiple of 16 by repeating the edge pixels (DiffJPEG
pads zeros, which darkens the last blocks' edges); a step below 1 (quality above 95) is
raised to 1 (DiffJPEG divides by zero at q = 100). Measured against Pillow's libjpeg on a
Set5 crop: docs/datasets.md."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = [[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
         [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
         [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]]  # ITU T.81 Table K.1
_CHROMA_CORNER = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]  # Table K.2 (rest 99)
_TO_YCC = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]  # JFIF
_TO_RGB = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]


def quality_factor(quality: Tensor) -> Tensor:
    """libjpeg's scaling of the standard tables at quality q (as a fraction of 1)."""
    q = quality.double()
    return torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q) / 100.0


def _dct_matrix(device: torch.device) -> Tensor:
    """D[u, x] = c(u)·cos((2x + 1)uπ/16): the orthonormal DCT-II that JPEG's FDCT is."""
    x = torch.arange(8, dtype=torch.float64, device=device)
    d = torch.cos((2 * x[None, :] + 1) * x[:, None] * torch.pi / 16)
    d[0] *= 2**-0.5
    return (d * 0.5).float()


def _tables(device: torch.device) -> tuple[Tensor, Tensor]:
    luma = torch.tensor(_LUMA, dtype=torch.float32, device=device)
    chroma = torch.full((8, 8), 99.0, dtype=torch.float32, device=device)
    chroma[:4, :4] = torch.tensor(_CHROMA_CORNER, dtype=torch.float32, device=device)
    return luma, chroma


def _code_plane(plane: Tensor, table: Tensor, dct: Tensor) -> Tensor:
    """One component (B, H, W), H and W multiples of 8, through DCT, quantisation by
    `table` (B, 8, 8), rounding, and back."""
    b, h, w = plane.shape
    blocks = (plane - 128.0).reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)
    coef = dct @ blocks @ dct.T
    t = table[:, None, None]
    coef = torch.round(coef / t) * t
    blocks = dct.T @ coef @ dct
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, h, w) + 128.0


def jpeg(images: Tensor, quality: Tensor) -> Tensor:
    """JPEG-compress and decode a batch (B, 3, H, W) in [0, 1] at per-image `quality` (B,)."""
    b, c, h, w = images.shape
    if c != 3:
        raise ValueError(f"JPEG compression takes RGB images (got {c} channels)")
    dtype, dev = images.dtype, images.device
    x = F.pad(images.float() * 255.0, (0, (-w) % 16, 0, (-h) % 16), mode="replicate")
    ycc = torch.einsum("ij,bjhw->bihw", torch.tensor(_TO_YCC, device=dev), x)
    ycc[:, 1:] += 128.0
    chroma = F.avg_pool2d(ycc[:, 1:], 2)
    factor = quality_factor(quality.to(dev)).float()[:, None, None]
    luma_t, chroma_t = _tables(dev)
    dct = _dct_matrix(dev)
    # steps below 1 (quality above 95) clamped to 1 as libjpeg does; DiffJPEG divides by 0 at q = 100
    luma_t, chroma_t = (luma_t * factor).clamp_min(1.0), (chroma_t * factor).clamp_min(1.0)
    y = _code_plane(ycc[:, 0], luma_t, dct)
    cb = _code_plane(chroma[:, 0], chroma_t, dct)
    cr = _code_plane(chroma[:, 1], chroma_t, dct)
    up = torch.stack([cb, cr], 1).repeat_interleave(2, -2).repeat_interleave(2, -1) - 128.0
    ycc = torch.cat([y[:, None], up], 1)
    rgb = torch.einsum("ij,bjhw->bihw", torch.tensor(_TO_RGB, device=dev), ycc)
    return (rgb.clamp(0, 255) / 255.0)[..., :h, :w].to(dtype)
