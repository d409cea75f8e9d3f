"""`mcir data degrade`: a benchmark copy degraded once, with a fixed seed, by Real-ESRGAN's
second-order degradation, so that evaluations and studies of real-world SR models score
every model on the same inputs.

The copy is an SR benchmark folder that every command reads as it reads Set5:
`HR/<name>.png` (the ground truth, mod-cropped to the scale; grey images as three equal
channels) and `LR_realesrgan/X{s}/<name>x{s}.png`, plus `degradation.json` (the settings,
the seed and every image's draws: kernels, resize, noise, JPEG qualities, order). Each image
has its own seed (the run's seed and its index in name order), so one image's draws do
not depend on the others. No USM sharpening: that is a training target's, not a
benchmark's."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mcir_cli._helpers.fsutil import confined, is_inside, writable_target, write_json
from mcir_cli.data.datasets import discover, mod_crop
from mcir_cli.data.imageio import read_image, write_image
from mcir_cli.data.realesrgan.kernels import KernelDraw, draw_kernels
from mcir_cli.data.realesrgan.pipeline import apply_plan, batch_generators, draw_plan
from mcir_cli.data.realesrgan.settings import settings_from_dict
from mcir_cli.errors import McirError
from mcir_cli.evaluate.benchmarks import _staged
from mcir_cli.models.inference import resolve_device

LR_FOLDER = "LR_realesrgan"


@dataclass(frozen=True)
class DegradedCopy:
    """What `degrade_dataset` wrote."""

    output: Path
    source: Path
    layout: str  # the source's layout, as discovery named it
    scale: int
    seed: int
    images: int
    record: Path  # degradation.json


def image_seed(seed: int, index: int) -> int:
    """The seed of image `index` of a copy made with `seed` (the training sampler's rule)."""
    return (seed * 0x9E3779B1 + index) % (2**63)


def _draw_json(draw: KernelDraw) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(draw).items() if not (isinstance(v, float) and math.isnan(v))}


def degrade_image(hr: torch.Tensor, settings: Any, scale: int, seed: int,
                  device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
    """One image (C, H, W), H and W multiples of `scale`, degraded as a batch of one:
    (LR on 8-bit levels, on the CPU; its draws, JSON-ready)."""
    g = torch.Generator().manual_seed(seed)
    kernels, draws = draw_kernels(settings, g)
    plan = draw_plan(settings, 1, g)
    _, noise = batch_generators(int(torch.randint(2**62, (), generator=g)), device)
    batch = {k: v[None].to(device) for k, v in kernels.items()}
    with torch.no_grad():
        lq = apply_plan(hr[None].to(device), batch, plan, settings, scale, noise)[0].cpu()
    return lq, {"kernels": {k: _draw_json(d) for k, d in draws.items()}, **plan.describe()}


def _check_output(out: Path, source: Path) -> None:
    if is_inside(out, source):
        raise McirError(f"the output folder is inside the source folder {source}: the copy would become part "
                        "of the benchmark it was made from; choose a folder outside it", out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise McirError("output folder exists and is not empty; choose a new --output", out)
    writable_target(out, "degraded copy")


def degrade_dataset(source: str | Path, output: str | Path, scale: int, *, seed: int = 0,
                    settings: dict[str, Any] | None = None, device: str = "cpu") -> DegradedCopy:
    """Write `output`: the ground truths of the SR folder `source` and their inputs made by
    the Real-ESRGAN degradation (`settings` over the published defaults) with `seed`.
    Checked before any work; written into a staging folder published when complete."""
    source, out = Path(source), Path(output)
    if scale < 2:
        raise McirError(f"--scale must be 2 or more for a super-resolution copy (got {scale})")
    resolved = settings_from_dict(settings)
    dev = resolve_device(device)
    _check_output(out, Path(source))
    dataset = discover(source, scale, "sr")
    images = []
    with _staged(out) as staging:
        assert staging is not None
        for i, pair in enumerate(dataset.pairs):
            hr = mod_crop(read_image(pair.gt), scale)
            if min(hr.shape[-2:]) < scale:
                raise McirError(f"image smaller than x{scale}", pair.gt)
            hr = hr.expand(3, -1, -1) if hr.shape[0] == 1 else hr
            lq, draws = degrade_image(hr, resolved, scale, image_seed(seed, i), dev)
            write_image(confined(staging, "HR", f"{pair.name}.png"), hr)
            write_image(confined(staging, LR_FOLDER, f"X{scale}", f"{pair.name}x{scale}.png"), lq)
            images.append({"name": pair.name, "source": str(pair.gt), "seed": image_seed(seed, i), **draws})
        record = {"degradation": "realesrgan", "seed": seed, "scale": scale, "source": str(source.absolute()),
                  "source_layout": dataset.layout, "device": dev.type, "settings": resolved.to_json(),
                  "images": images}
        write_json(staging / "degradation.json", record, indent=1)
    return DegradedCopy(out, source, dataset.layout, scale, seed, len(images), out / "degradation.json")
