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

from mcir_cli.errors import McirError


def resolve_device(device: str = "auto") -> torch.device:
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
    tile_batch: int = 1,
) -> Tensor:
    """Restore a batch NCHW (or one CHW image) in [0, 1]; returns float32 on x's device.
    Tiles run `tile_batch` at a time (one forward pass over tiles x images)."""
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
                raise McirError(f"--tile-overlap {overlap} must be smaller than --tile {tile}")
            # pad the whole image once, as the untiled run does, and use tiles that need
            # no padding of their own: image edges then see the same reflection
            h, w = x.shape[-2:]
            step = max(multiple_of, 1)
            tile = max(int(math.ceil(tile / step) * step), _padded_size(min_size, 0, step))
            xp = pad_to(x, min_size, multiple_of, square)
            y = _tiled(model, xp, scale, tile, overlap, (min_size, multiple_of, square), tile_batch)
            y = y[..., : h * scale, : w * scale]
    y = y.float()
    return y[0] if single else y


def _tiled(
    model: nn.Module,
    x: Tensor,
    scale: int,
    tile: int,
    overlap: int,
    requirements: tuple[int, int, bool],
    tile_batch: int = 1,
) -> Tensor:
    """Every tile has the same size (the last ones end at the image's edge), so tiles
    are stacked along the batch axis and run `tile_batch` at a time."""
    n, _, h, w = x.shape
    margin = overlap // 2
    out = None
    weight = torch.zeros(1, 1, h * scale, w * scale, device=x.device)
    th, tw = min(tile, h), min(tile, w)
    corners = [(top, left) for top in _starts(h, tile, tile - overlap) for left in _starts(w, tile, tile - overlap)]
    for first in range(0, len(corners), max(tile_batch, 1)):
        chunk = corners[first : first + max(tile_batch, 1)]
        patches = torch.cat([x[..., top : top + th, left : left + tw] for top, left in chunk])
        ys = run_padded(model, patches, scale, *requirements).float().split(n)
        if out is None:
            out = torch.zeros(n, ys[0].shape[1], h * scale, w * scale, device=x.device)
        for (top, left), y in zip(chunk, ys):
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


# ------------------------------------------------------------------ tile size from memory

CPU_TILE = 512  # mcir's default on CPU, where free memory is not measured; 32 px overlap costs ~13 %
_PROBE = 128  # input side of the measuring run on CUDA
_BUDGET = 0.8  # of the free memory, as chaiNNer's estimate (auto_split_tiles), to leave room


def tile_for_budget(budget_bytes: float, bytes_per_pixel: float, batch: int = 1, multiple: int = 8,
                    smallest: int = 64, largest: int = 4096) -> int:
    """The largest square tile side (a multiple of `multiple`, within [smallest, largest])
    whose `batch` tiles need at most `budget_bytes`, at `bytes_per_pixel` per input pixel."""
    side = int(math.sqrt(max(budget_bytes, 0.0) / (max(bytes_per_pixel, 1e-9) * max(batch, 1))))
    side = side // multiple * multiple
    return max(min(side, largest // multiple * multiple), smallest)


def _peak_bytes_per_pixel(model: nn.Module, device: torch.device, channels: int, scale: int, batch: int,
                          amp: str | None, requirements: tuple[int, int, bool]) -> float:
    """CUDA memory one input pixel costs in a forward pass, measured on a small batch."""
    min_size, multiple_of, square = requirements
    side = _padded_size(_PROBE, min_size, max(multiple_of, 1))
    x = torch.rand(batch, channels, side, side, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    restore(model, x, scale, min_size=min_size, multiple_of=multiple_of, square=square, amp=amp)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / (batch * side * side)


def auto_tile(model: nn.Module, device: torch.device, *, channels: int, scale: int, batch: int,
              largest_image: tuple[int, int], amp: str | None = None,
              requirements: tuple[int, int, bool] = (0, 1, False)) -> tuple[int, str]:
    """`--tile auto`: (tile side, why). On CUDA, from the free memory (plus what PyTorch
    holds cached) less the whole-image buffers of the largest image, and the memory per
    pixel measured on a probe; on CPU, `CPU_TILE`."""
    if device.type != "cuda":
        return CPU_TILE, f"{CPU_TILE} px, the CPU default (free CPU memory is not measured)"
    per_pixel = _peak_bytes_per_pixel(model, device, channels, scale, batch, amp, requirements)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    h, w = largest_image
    buffers = 4 * (h * w * channels + (channels + 1) * h * w * scale * scale)  # input, output sum, weights
    tile = tile_for_budget(_BUDGET * free - buffers, per_pixel, batch)  # `restore` rounds it to the model's multiple
    return tile, (f"{tile} px from {free / 2**30:.1f} GiB free on {device} ({_BUDGET:.0%} used; "
                  f"{per_pixel / 1024:.1f} KiB per input pixel measured on a {_PROBE} px batch of {batch})")
