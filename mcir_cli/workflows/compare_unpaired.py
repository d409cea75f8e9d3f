"""`mcir compare --no-gt`: models side by side on images that have no ground truth (real
photos, or the inputs of a real-world SR benchmark alone). Without a reference no PSNR
or SSIM exists, so there is no table and no statistics: every image becomes one strip,
LQ | each model's output, with zoomed crops where the models differ most."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mcir_cli._helpers.fsutil import confined
from mcir_cli.data.datasets import folder_name
from mcir_cli.data.imageio import read_image
from mcir_cli.data.layouts import list_images
from mcir_cli.errors import McirError
from mcir_cli.evaluate.checkpoints import checkpoint_label, load_comparable
from mcir_cli.models.inference import resolve_device
from mcir_cli.render.visuals import outputs_strip, save_image
from mcir_cli.workflows.compare import _check_label_count, check_visuals_folder
from mcir_cli.workflows.visual_sources import _run

NO_GT = "no ground truth: PSNR and SSIM do not exist for these images (a score needs a reference image)"


@dataclass
class UnpairedCompare:
    """What `compare_without_gt` drew."""

    labels: list[str]
    images: dict[str, int]  # folder name -> images shown
    strips: list[Path] = field(default_factory=list)
    note: str = NO_GT


def _folders(data: Sequence[Path]) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for folder in data:
        if not Path(folder).is_dir():
            raise McirError("--no-gt takes folders of input images", folder)
        images = list_images(Path(folder))
        if not images:
            raise McirError("no images in this folder (--no-gt shows every image of a folder)", folder)
        name = folder_name(Path(folder))
        found[name if name not in found else f"{name}-{len(found)}"] = images
    return found


def compare_without_gt(checkpoints: Sequence[Path], data: Sequence[Path], visuals: Path | None, *,
                       scale: int | None = None, res_scale: float | None = None, device: str = "auto",
                       tile: int | None = None, labels: Sequence[str] | None = None,
                       progress: Callable[[int, int], None] | None = None) -> UnpairedCompare:
    """Every image of the `data` folders through every checkpoint, one strip each in
    `visuals/<folder>/<image>.png`; checked before any work."""
    if visuals is None:
        raise McirError(f"--no-gt: {NO_GT}, so there is no table: give --visuals FOLDER for the side-by-side images")
    check_visuals_folder(visuals, data)
    _check_label_count(labels, len(checkpoints))
    folders = _folders(data)
    models = load_comparable(list(checkpoints), scale, res_scale)
    names = list(labels) if labels else [checkpoint_label(p) for p in checkpoints]
    dev = resolve_device(device)
    run = UnpairedCompare(names, {k: len(v) for k, v in folders.items()})
    total = sum(run.images.values())
    for folder, images in folders.items():
        for image in images:
            lq = read_image(image)
            lq = lq.expand(3, -1, -1) if lq.shape[0] == 1 and models[0].in_channels == 3 else lq
            outputs = [_run(m, lq, dev, tile, 32) for m in models]
            path = confined(visuals, folder, f"{image.stem}.png")
            run.strips.append(save_image(outputs_strip(lq, outputs, names), path))
            if progress:
                progress(len(run.strips), total)
    return run
