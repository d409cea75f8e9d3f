"""Running a model on whole images: padding to its size requirements, tiling, AMP.

A network that takes one input size only (`fixed_size`, IDT's 128 x 128) always runs
on tiles of exactly that size, whatever `tile` says.

Tiling keeps, from each tile, only the pixels at least `overlap // 2` away from an edge
shared with a neighbour, and averages where kept regions meet. For a network whose
receptive field fits inside that margin the result equals the untiled output exactly.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def resolve_device(device: str = "auto") -> torch.device:
    from mcir_cli.errors import McirError

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise McirError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})") from None
    if dev.type not in ("cpu", "cuda"):
        raise McirError(f"--device must be auto, cpu, cuda or cuda:N (got {device!r})")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise McirError("--device cuda was asked for, but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise McirError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def autocast(device: torch.device, amp: str | None):
    """bf16 autocast on CUDA when asked; a no-op elsewhere (CPU runs fp32)."""
    if amp in (None, "none", "fp32") or device.type != "cuda":
        return contextlib.nullcontext()
    if amp != "bf16":
        raise ValueError(f"unknown amp mode {amp!r}")
    return torch.autocast("cuda", dtype=torch.bfloat16)


def _padded_size(n: int, minimum: int, multiple: int) -> int:
    n = max(n, minimum)
    return int(math.ceil(n / multiple) * multiple) if multiple > 1 else n


def pad_to(x: Tensor, min_size: int = 0, multiple_of: int = 1, square: bool = False) -> Tensor:
    """Pad the bottom/right edges (reflect where possible, else replicate)."""
    h, w = x.shape[-2:]
    th, tw = _padded_size(h, min_size, multiple_of), _padded_size(w, min_size, multiple_of)
    if square:
        th = tw = max(th, tw)
    if (th, tw) == (h, w):
        return x
    ph, pw = th - h, tw - w
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def run_padded(
    model: nn.Module,
    x: Tensor,
    scale: int,
    min_size: int = 0,
    multiple_of: int = 1,
    square: bool = False,
) -> Tensor:
    h, w = x.shape[-2:]
    y = model(pad_to(x, min_size, multiple_of, square))
    return y[..., : h * scale, : w * scale]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def fixed_input_size(model: nn.Module) -> int | None:
    """The only input size a network takes (IDT: 128 x 128), read from its `fixed_size`
    attribute, on the module itself or on the network a `models.Restorer` wraps."""
    for m in (model, getattr(model, "net", None)):
        size = getattr(m, "fixed_size", None)
        if size:
            return int(size)
    return None


@torch.no_grad()
def restore(
    model: nn.Module,
    x: Tensor,
    scale: int = 1,
    *,
    min_size: int = 0,
    multiple_of: int = 1,
    square: bool = False,
    tile: int | None = None,
    overlap: int = 32,
    amp: str | None = None,
) -> Tensor:
    """Restore a batch NCHW (or one CHW image) in [0, 1]; returns float32 on x's device."""
    single = x.dim() == 3
    if single:
        x = x.unsqueeze(0)
    fixed = fixed_input_size(model)
    if fixed:  # exactly fixed x fixed: pad smaller images to it, tile larger ones at it
        tile, min_size, multiple_of, square = fixed, max(min_size, fixed), 1, False
    with autocast(x.device, amp):
        if tile is None or (x.shape[-2] <= tile and x.shape[-1] <= tile):
            y = run_padded(model, x, scale, min_size, multiple_of, square)
        else:
            if overlap >= tile:
                from mcir_cli.errors import McirError

                raise McirError(f"--tile-overlap {overlap} must be smaller than --tile {tile}")
            # pad the whole image once, as the untiled run does, and use tiles that need
            # no padding of their own: image edges then see the same reflection
            h, w = x.shape[-2:]
            step = max(multiple_of, 1)
            tile = max(int(math.ceil(tile / step) * step), _padded_size(min_size, 0, step))
            xp = pad_to(x, min_size, multiple_of, square)
            y = _tiled(model, xp, scale, tile, overlap, min_size, multiple_of, square)[..., : h * scale, : w * scale]
    y = y.float()
    return y[0] if single else y


def _tiled(
    model: nn.Module,
    x: Tensor,
    scale: int,
    tile: int,
    overlap: int,
    min_size: int,
    multiple_of: int,
    square: bool,
) -> Tensor:
    n, _, h, w = x.shape
    margin = overlap // 2
    out = None
    weight = torch.zeros(1, 1, h * scale, w * scale, device=x.device)
    ys, xs = _starts(h, tile, tile - overlap), _starts(w, tile, tile - overlap)
    for top in ys:
        for left in xs:
            th, tw = min(tile, h - top), min(tile, w - left)
            patch = x[..., top : top + th, left : left + tw]
            y = run_padded(model, patch, scale, min_size, multiple_of, square).float()
            if out is None:
                out = torch.zeros(n, y.shape[1], h * scale, w * scale, device=x.device)
            # keep only pixels away from edges shared with a neighbouring tile
            t0 = 0 if top == 0 else margin
            l0 = 0 if left == 0 else margin
            t1 = th if top + th == h else th - margin
            l1 = tw if left + tw == w else tw - margin
            s = scale
            out[..., (top + t0) * s : (top + t1) * s, (left + l0) * s : (left + l1) * s] += y[
                ..., t0 * s : t1 * s, l0 * s : l1 * s
            ]
            weight[..., (top + t0) * s : (top + t1) * s, (left + l0) * s : (left + l1) * s] += 1
    assert out is not None
    return out / weight.clamp_min(1)
