"""Limits checked before any work: what a run's memory and an image's size must allow.

A batch that cannot fit, or a benchmark image too small for the scale, the border crop or
SSIM's window, is a one-line `McirError` up front, not a failure in the allocator or an
IndexError deep inside the resize after half a benchmark was scored.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mcir_cli.data.imageio import image_size
from mcir_cli.errors import McirError

if TYPE_CHECKING:
    from mcir_cli.data.datasets import Dataset
    from mcir_cli.metrics.conventions import Conventions

FLOAT32_BYTES = 4
SSIM_WINDOW = 11  # BasicSR's 11x11 Gaussian, valid region (metrics.ssim)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _cgroup_room() -> int | None:
    """Bytes this process's cgroup (v2, else v1) still lets it allocate, if limited."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # "max" or a huge v1 number: unlimited
            return max(int(limit) - usage, 0)
        return None
    return None


def available_memory(device: str | torch.device) -> int | None:
    """Bytes free for new tensors on `device` now (CUDA: the driver's free memory; CPU:
    MemAvailable, capped by a cgroup limit), or None where it cannot be told."""
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free)
    if dev.type != "cpu":
        return None
    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if room is None and hasattr(os, "sysconf"):
        try:
            room = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            room = None
    cgroup = _cgroup_room()
    if cgroup is not None:
        room = cgroup if room is None else min(room, cgroup)
    return room


def batch_image_bytes(batch: int, patch: int, scale: int, channels: int) -> int:
    """Bytes a training step needs for its images alone, float32: the input patches
    (patch x patch), their targets and the model's outputs (patch·scale square each).
    Activations, gradients, negatives and the embedding all come on top: a lower bound."""
    out = patch * scale
    return batch * channels * (patch * patch + 2 * out * out) * FLOAT32_BYTES


def check_batch_memory(
    batch: int, patch: int, scale: int, channels: int, device: str | torch.device,
    *, available: int | None = None,
) -> int:
    """Refuse up front a batch whose images alone cannot fit in `device`'s free memory
    (`available` bytes, measured when not given). Returns the lower bound it checked."""
    if batch < 1 or patch < 1 or scale < 1 or channels < 1:
        raise McirError("--batch and --patch must be positive")
    need = batch_image_bytes(batch, patch, scale, channels)
    room = available if available is not None else available_memory(device)
    if room is not None and need > room:
        dev = torch.device(device)
        raise McirError(
            f"--batch {batch} x --patch {patch} (x{scale}, {channels} channels) needs at least {_gib(need)} "
            f"for its images alone (inputs, targets and outputs in float32), but {dev} has {_gib(room)} "
            "free: use a smaller --batch or --patch"
        )
    return need


def scored_size(width: int, height: int, scale: int, lq_size: tuple[int, int] | None) -> tuple[int, int]:
    """The size a ground truth is scored at: LR x scale when the LR file is given, the
    mod-crop to a multiple of the scale when the LR is made from it."""
    if scale <= 1:
        return width, height
    if lq_size is not None:
        return lq_size[0] * scale, lq_size[1] * scale
    return width - width % scale, height - height % scale


def check_image_size(path: Path, width: int, height: int, scale: int, conventions: Conventions,
                     lq_size: tuple[int, int] | None = None) -> None:
    """One image against what scoring needs: its LR image can be made (at least `scale`
    pixels each way), and once the border crop is taken from every edge SSIM's 11x11
    window still fits. `lq_size` is the LR file's size when the dataset has one."""
    if scale > 1 and lq_size is None and (width < scale or height < scale):
        raise McirError(
            f"image {width}x{height} is too small for x{scale}: making its LR image needs at least "
            f"{scale}x{scale} pixels", path)
    w, h = scored_size(width, height, scale, lq_size)
    crop = conventions.crop_border
    least = SSIM_WINDOW + 2 * crop
    if w < least or h < least:
        after = f" after the {crop}-pixel border crop" if crop else ""
        raise McirError(
            f"cannot score with {conventions.describe()}: image {w}x{h} is too small, SSIM's "
            f"{SSIM_WINDOW}x{SSIM_WINDOW} window{after} needs at least {least}x{least}", path)


def check_image_sizes(datasets: Iterable[Dataset], conventions: Conventions) -> None:
    """Every ground truth of every dataset checked by `check_image_size`, from the file
    headers alone, before any image is restored or scored."""
    for d in datasets:
        for pair in d.pairs:
            w, h = image_size(pair.gt)
            lq = image_size(pair.lq) if pair.lq is not None and d.scale > 1 else None
            # the LR file, when there is one, decides the scored size
            check_image_size(pair.lq if lq is not None else pair.gt, w, h, d.scale, conventions, lq)
