"""`mcir restore`: a model run on the user's own images (no ground truth), written beside
nothing they own.

Order: the outputs are planned and checked (`restore_plan`), existing ones refused,
skipped or replaced as asked; the model is loaded and its channels checked; every image
to do is decoded once up front (a truncated file or a colour image for a grey model stops
the run before anything is written); then each image is restored and written atomically.

Channels, as chaiNNer's `convenient_upscale` (chaiNNer-org/chaiNNer,
backend/src/nodes/impl/upscale/convenient_upscale.py @ 874b878) handles them:
- a grey image given to a colour model runs as three equal channels and comes back grey
  (BT.601 luma, chaiNNer's BGR2GRAY); a colour image is refused by a grey model (chaiNNer
  would silently drop its colour);
- alpha follows chaiNNer's "Separate Alpha" path: a constant alpha is copied at the new
  size; any other alpha runs through the same model as its own image (as three equal
  channels for a colour model) and is flattened by chaiNNer's `denoise_and_flatten_alpha`,
  max·mean + min·(1 − mean) over the channels, clipped to [0, 1]; outputs are clipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mcir_cli.data.photos import Photo, read_photo, write_photo
from mcir_cli.errors import McirError
from mcir_cli.models.inference import auto_tile, resolve_device, restore
from mcir_cli.models.loading import LoadedModel, load_model
from mcir_cli.workflows.restore_plan import Job, plan_jobs

_LUMA = (0.299, 0.587, 0.114)  # BT.601, as OpenCV's BGR2GRAY that chaiNNer uses
Progress = Callable[[str, int, int], None]  # (stage: "checking" or "restoring", images done, total)


@dataclass(frozen=True)
class RestoreSettings:
    """How the model runs: device, tiles (None: whole images), overlap, tiles per
    forward pass, autocast."""

    device: torch.device
    tile: int | None
    overlap: int = 32
    tile_batch: int = 1
    amp: str | None = None


@dataclass
class RestoreResult:
    """What a restore did: files written and skipped, how the model ran, and notes."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    settings: RestoreSettings | None = None
    tile_reason: str = ""
    notes: list[str] = field(default_factory=list)


def _model_channels(model: LoadedModel) -> int:
    if model.in_channels != model.out_channels:
        raise McirError(f"the model ({model.architecture}) takes {model.in_channels} channels and gives "
                        f"{model.out_channels}: mcir restore runs models that give back the channels they take")
    if model.in_channels not in (1, 3):
        raise McirError(f"the model ({model.architecture}) takes {model.in_channels}-channel input; "
                        "mcir restore feeds grey (1) or RGB (3) images")
    return model.in_channels


def check_photo(model: LoadedModel, photo: Photo, job: Job) -> list[str]:
    """Refuse what the model cannot take; notes on what the output format loses."""
    if model.in_channels == 1 and not photo.grey:
        raise McirError(f"RGB image, but the model ({model.architecture}) takes grey input only; "
                        "convert the image to grey first", job.source)
    notes = []
    if photo.alpha is not None and job.format == "JPEG":
        notes.append(f"{job.source}: alpha channel dropped (JPEG has none)")
    if photo.meta.bits == 16 and job.format not in ("PNG", "TIFF"):
        notes.append(f"{job.source}: 16-bit image written as 8-bit {job.format}")
    return notes


def _as_model_input(x: Tensor, channels: int) -> Tensor:
    return x.expand(3, -1, -1) if x.shape[0] == 1 and channels == 3 else x


def _as_grey(y: Tensor) -> Tensor:
    weights = torch.tensor(_LUMA, dtype=y.dtype, device=y.device).view(3, 1, 1)
    return (y * weights).sum(0, keepdim=True)


def _flatten_alpha(y: Tensor) -> Tensor:
    """chaiNNer's denoise_and_flatten_alpha: one alpha from the model's channels."""
    lo, hi, mean = y.amin(0, keepdim=True), y.amax(0, keepdim=True), y.mean(0, keepdim=True)
    return (hi * mean + lo * (1 - mean)).clamp(0, 1)


def restore_photo(model: LoadedModel, photo: Photo, settings: RestoreSettings) -> Photo:
    """One photo restored: colour or grey as it came, alpha restored separately."""
    channels = model.in_channels

    def run(x: Tensor) -> Tensor:
        y = restore(model.restorer, _as_model_input(x, channels).to(settings.device), model.scale,
                    min_size=model.min_size, multiple_of=model.multiple_of, square=model.square,
                    tile=settings.tile, overlap=settings.overlap, amp=settings.amp,
                    tile_batch=settings.tile_batch).cpu().clamp(0, 1)
        expected = (channels, x.shape[1] * model.scale, x.shape[2] * model.scale)
        if tuple(y.shape) != expected:
            raise McirError(f"the model gave {tuple(y.shape)} for a {tuple(x.shape)} image, not {expected}")
        return y

    pixels = run(photo.pixels)
    if photo.grey and channels == 3:
        pixels = _as_grey(pixels)
    alpha = photo.alpha
    if alpha is not None:
        value = alpha.flatten()[0]
        if bool((alpha == value).all()):  # chaiNNer: a single-valued alpha is not run
            alpha = torch.full((1, *pixels.shape[1:]), float(value))
        else:
            alpha = _flatten_alpha(run(alpha))
    return Photo(pixels, alpha, photo.meta)


def _settings(model: LoadedModel, dev: torch.device, tile: int | str | None, overlap: int,
              tile_batch: int | None, amp: bool, largest: tuple[int, int]) -> tuple[RestoreSettings, str, list[str]]:
    """Autocast and tile size resolved, with the reason for the tile and notes."""
    notes: list[str] = []
    mode = None
    if amp and dev.type != "cuda":
        notes.append("--amp has no effect on CPU: it runs in fp32")
    elif amp and not model.supports_bf16:
        notes.append(f"--amp: {model.architecture} does not support bf16 (spandrel says so); it runs in fp32")
    elif amp:
        mode = "bf16"
    batch = tile_batch or (4 if dev.type == "cuda" else 1)
    if tile in (None, "none", 0):
        return RestoreSettings(dev, None, overlap, batch, mode), "none (whole images)", notes
    if tile == "auto":
        model.restorer.to(dev)
        size, reason = auto_tile(model.restorer, dev, channels=model.in_channels, scale=model.scale, batch=batch,
                                 largest_image=largest, amp=mode,
                                 requirements=(model.min_size, model.multiple_of, model.square))
        return RestoreSettings(dev, size, overlap, batch, mode), reason, notes
    return RestoreSettings(dev, int(tile), overlap, batch, mode), f"{tile} px (--tile)", notes


def check_tiling(tile: int | str | None, overlap: int, tile_batch: int | None) -> None:
    """Tile flags refused in one line before any work."""
    if isinstance(tile, str) and tile not in ("auto", "none"):
        raise McirError(f"--tile must be auto, none or a size in pixels (got {tile!r})")
    if isinstance(tile, int) and tile != 0 and tile < 16:
        raise McirError(f"--tile must be at least 16 pixels (got {tile})")
    if overlap < 0 or (isinstance(tile, int) and tile and overlap >= tile):
        raise McirError(f"--tile-overlap must be >= 0 and smaller than the tile (got {overlap})")
    if tile_batch is not None and tile_batch < 1:
        raise McirError(f"--tile-batch must be at least 1 (got {tile_batch})")


def _existing(jobs: list[Job], overwrite: bool, skip_existing: bool) -> tuple[list[Job], list[Path]]:
    """Jobs to do and targets kept; existing outputs refused unless asked."""
    if overwrite and skip_existing:
        raise McirError("--overwrite and --skip-existing contradict each other; give one")
    there = [job.target for job in jobs if job.target.exists()]
    if there and not (overwrite or skip_existing):
        more = f" and {len(there) - 1} more" if len(there) > 1 else ""
        raise McirError(f"output exists{more}; --skip-existing keeps them (continues a stopped run), "
                        "--overwrite replaces them", there[0])
    for target in there:
        if target.is_dir():
            raise McirError("the output is a folder, not an image file", target)
    if skip_existing:
        return [job for job in jobs if not job.target.exists()], there
    return jobs, []


def restore_images(
    inputs: list[str | Path],
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    model: str | None = None,
    res_scale: float | None = None,
    loaded: LoadedModel | None = None,
    fmt: str | None = None,
    quality: int | None = None,
    tile: int | str | None = "auto",
    overlap: int = 32,
    tile_batch: int | None = None,
    amp: bool = False,
    device: str = "auto",
    overwrite: bool = False,
    skip_existing: bool = False,
    progress: Progress | None = None,
) -> RestoreResult:
    """Restore image files and folders into `output` (see the module docstring): the
    Python function behind `mcir restore`. `loaded` passes a model already loaded;
    `res_scale`: EDSR's (`--res-scale`, models.settle_res_scale)."""
    check_tiling(tile, overlap, tile_batch)
    dev = resolve_device(device)
    if quality is not None and not 1 <= quality <= 100:
        raise McirError(f"--quality must be between 1 and 100 (got {quality})")
    jobs, skipped = _existing(plan_jobs(inputs, output, fmt), overwrite, skip_existing)
    if quality is not None and jobs and all(job.format not in ("JPEG", "WEBP") for job in jobs):
        raise McirError("--quality is for JPEG and WebP outputs (PNG, TIFF and BMP are lossless)")
    net = loaded or load_model(checkpoint, model, res_scale=res_scale)
    _model_channels(net)
    net.restorer.eval()  # before --tile auto's probe too (BatchNorm statistics stay)
    notes, largest = _check_all(net, jobs, progress)
    settings, reason, more = _settings(net, dev, tile, overlap, tile_batch, amp, largest)
    result = RestoreResult(skipped=skipped, settings=settings, tile_reason=reason, notes=notes + more,
                           model={"label": net.label, "architecture": net.architecture, "scale": net.scale})
    net.restorer.to(settings.device)
    for i, job in enumerate(jobs):
        photo = restore_photo(net, read_photo(job.source), settings)
        result.written.append(write_photo(job.target, photo, job.format, quality, net.scale))
        if progress is not None:
            progress("restoring", i + 1, len(jobs))
    return result


def _check_all(model: LoadedModel, jobs: list[Job], progress: Progress | None) -> tuple[list[str], tuple[int, int]]:
    """Every image decoded once before any work: notes, and the largest (H, W) seen."""
    notes: list[str] = []
    largest = (0, 0)
    for i, job in enumerate(jobs):
        photo = read_photo(job.source)
        notes += check_photo(model, photo, job)
        h, w = photo.pixels.shape[1:]
        largest = max(largest, (h, w), key=lambda s: s[0] * s[1])
        if progress is not None:
            progress("checking", i + 1, len(jobs))
    return notes, largest
