"""Scoring models (or folders of already-restored images) on benchmark folders.

The result is a plain dict, written as JSON by the CLI, in the form `compare` reads:
`{"conventions": {...}, "model": {...}, "datasets": {name: {"psnr", "ssim", "images"}}}`.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mcir_cli import __version__
from mcir_cli._helpers.fsutil import confined, refuse_inside_inputs, safe_name, sha256_file, write_json
from mcir_cli.data.datasets import Dataset, discover_all, iter_pairs, list_images, load_gt, load_pair
from mcir_cli.data.imageio import is_grey, read_image, to_uint8, write_image
from mcir_cli.data.jpeg import check_task, record_inputs, with_qualities
from mcir_cli.data.limits import check_image_sizes
from mcir_cli.data.resize import imresize
from mcir_cli.errors import McirError
from mcir_cli.metrics.basicsr import psnr, psnrb, ssim
from mcir_cli.metrics.conventions import Conventions
from mcir_cli.models.inference import resolve_device, restore
from mcir_cli.models.loading import LoadedModel
from mcir_cli.models.paper import paper_rows

Progress = Callable[[str, int, int], None]  # (dataset name, images done, total)

log = logging.getLogger("mcir")


@dataclass(frozen=True)
class Scoring:
    """How a model is scored (None: the task's and the model's defaults,
    `Conventions.for_task`): `evaluate_model`'s settings, and the same for every
    checkpoint `compare --checkpoint` scores (`device` and `tile` also run the models for
    its pictures). `scale` and `res_scale` say how checkpoints are loaded
    (`load_model`); `evaluate_model` scores the model it is given as it was loaded."""

    scale: int | None = None
    res_scale: float | None = None  # EDSR's, which no checkpoint stores (models.settle_res_scale)
    task: str | None = None
    y_channel: bool | None = None
    crop_border: int | None = None
    device: str = "auto"
    tile: int | None = None
    jpeg_quality: tuple[int, ...] | None = None  # JPEG: clean images compressed at each
    overlap: int = 32  # between tiles (input pixels)
    amp: str | None = None  # "bf16": autocast on CUDA
    noise_sigma: float | None = None  # denoising: Gaussian noise (0-255 scale) added to clean images
    noise_seed: int = 0


def _score(out: Tensor, gt: Tensor, conv: Conventions, path: Path) -> dict[str, float]:
    """PSNR and SSIM of one image; a convention the image cannot take (a border crop
    larger than the image) is a one-line error naming the file."""
    try:
        scores = {"psnr": float(psnr(out, gt, conv)), "ssim": float(ssim(out, gt, conv))}
        return {**scores, "psnrb": float(psnrb(out, gt, conv))} if conv.psnrb else scores
    except ValueError as exc:
        raise McirError(f"cannot score with {conv.describe()}: {exc}", path) from None


# The field's defaults for a task (SR: Y, crop = scale; others RGB, 0), overridable: the
# name evaluate and train use for `Conventions.for_task`, where the defaults live.
conventions_for = Conventions.for_task


def has_colour_images(dataset: Dataset) -> bool:
    """Whether any ground-truth image of the dataset has colour (read lazily, no decode)."""
    return any(not is_grey(pair.gt) for pair in dataset.pairs)


def grey_as_rgb(img: Tensor) -> Tensor:
    """A grey CHW image as 3 equal channels, a colour one as it is: how BasicSR (OpenCV)
    reads a grey image among colour ones (Set14's bridge), so the published numbers score
    it on the Y of 3 equal channels, not on the raw grey."""
    return img.expand(3, -1, -1) if img.shape[0] == 1 else img


def _summary(images: list[dict[str, Any]]) -> dict[str, Any]:
    n = len(images)
    keys = ("psnr", "ssim", "psnrb") if images and "psnrb" in images[0] else ("psnr", "ssim")
    return {**{k: sum(i[k] for i in images) / n if n else math.nan for k in keys}, "images": images}


def _check_channels(model: LoadedModel, dataset: Dataset, channels: int, path: Path) -> None:
    if channels != model.in_channels:
        kind = {1: "grey", 3: "RGB"}.get(channels, f"{channels}-channel")
        want = {1: "grey", 3: "RGB"}.get(model.in_channels, f"{model.in_channels}-channel")
        raise McirError(f"{kind} image, but the model ({model.architecture}) takes {want} input", path)


@torch.no_grad()
def score_dataset(
    model: LoadedModel,
    dataset: Dataset,
    conventions: Conventions,
    *,
    device: torch.device,
    tile: int | None = None,
    overlap: int = 32,
    amp: str | None = None,
    save_dir: Path | None = None,
    noise_sigma: float | None = None,
    noise_seed: int = 0,
    progress: Progress | None = None,
    restorer: nn.Module | None = None,
) -> dict[str, Any]:
    """PSNR/SSIM of `model` on one dataset, per image and averaged."""
    net = restorer if restorer is not None else model.restorer
    if model.scale != dataset.scale:
        raise McirError(
            f"the model is x{model.scale}, but the dataset is x{dataset.scale}", dataset.root
        )
    was_training = net.training
    net.eval()
    images = []
    try:
        mixed = model.in_channels == 3 and has_colour_images(dataset)
        for i, (pair, lq, gt) in enumerate(iter_pairs(dataset, noise_sigma, noise_seed)):
            if mixed and lq.shape[0] == 1:
                # a grey image among colour ones (Set14's bridge): BasicSR reads it with
                # OpenCV as 3 equal channels, and the published numbers are made so
                lq, gt = grey_as_rgb(lq), grey_as_rgb(gt)
            _check_channels(model, dataset, lq.shape[0], pair.lq or pair.gt)
            out = restore(
                net,
                lq.to(device),
                model.scale,
                min_size=model.min_size,
                multiple_of=model.multiple_of,
                square=model.square,
                tile=tile,
                overlap=overlap,
                amp=amp,
            ).cpu()
            if out.shape != gt.shape:
                raise McirError(
                    f"model output {tuple(out.shape)} differs from the ground truth {tuple(gt.shape)}",
                    pair.gt,
                )
            images.append({"name": pair.name, **_score(out, gt, conventions, pair.gt)})
            if save_dir is not None:
                _save_output(save_dir, dataset, pair, out)
            if progress:
                progress(dataset.name, i + 1, len(dataset))
    finally:
        net.train(was_training)
    return _summary(images)


def _save_output(save_dir: Path, dataset: Dataset, pair: Any, out: Tensor) -> Path:
    """Write one output as `<dataset>/<name>.png` in a run's fresh staging folder; the
    names come from the user's files, so they are confined to it (`fsutil.confined`)."""
    target = confined(save_dir, *dataset.name.split("/"), f"{pair.name}.png")
    if target.exists():
        raise McirError(f"would overwrite the image saved as {target.name} (names that differ only "
                        "in characters unsafe in file names)", pair.gt)
    return write_image(target, out)


def model_info(model: LoadedModel) -> dict[str, Any]:
    ckpt = model.checkpoint
    path = ckpt.path if ckpt is not None else None
    return {
        "checkpoint": str(path.absolute()) if path else None,  # found again from any folder
        "sha256": sha256_file(path) if path else None,
        "architecture": model.architecture,
        "scale": model.scale,
        "label": model.label,
        "preset": model.preset.name if model.preset else None,
        "params": model.num_params,
    }


def result_header(conventions: Conventions, task: str) -> dict[str, Any]:
    return {
        "conventions": {**conventions.as_dict(), "description": conventions.describe()},
        "task": task,
        "mcir_version": __version__,
    }


def evaluate_model(
    model: LoadedModel,
    data: Sequence[str | Path],
    scoring: Scoring = Scoring(),
    *,
    save_images: str | Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score a model on benchmark folders with the field's conventions (`scoring`: the
    task, Y/RGB, border, device, tiles, precision, added noise, JPEG qualities); JPEG: one
    row per (folder, quality)."""
    sc, task = scoring, scoring.task
    model.check_task(task)
    task = model.implied_task(task, sc.noise_sigma, sc.jpeg_quality)
    datasets = _discover(data, model.scale if model.scale > 1 else None, task, sc.jpeg_quality)
    task = task or datasets[0].task
    if sc.noise_sigma is None and task == "denoise" and any(d.pairs[0].lq is None for d in datasets):
        raise McirError("denoising clean images needs --noise-sigma (e.g. 25)")
    conv = conventions_for(task, model.scale, sc.y_channel, sc.crop_border, grey=model.in_channels == 1)
    check_image_sizes(datasets, conv)  # a too-small image stops the run before any work
    dev = resolve_device(sc.device)
    if sc.amp == "bf16" and dev.type != "cuda":
        log.warning("--amp bf16 is a CUDA autocast: on %s the model runs in fp32 (recorded as amp fp32)", dev.type)
    model.restorer.to(dev)
    result = result_header(conv, task)
    result["model"] = model_info(model)
    if sc.noise_sigma is not None:
        result["noise"] = {"sigma": sc.noise_sigma, "seed": sc.noise_seed}
    record_inputs(result, datasets)
    # tiling and precision change the numbers slightly: recorded, and compare checks them
    result["inference"] = {"tile": sc.tile, "tile_overlap": sc.overlap if sc.tile else None,
                           "amp": "bf16" if sc.amp == "bf16" and dev.type == "cuda" else "fp32"}
    result["data"] = {d.name: str(d.root.resolve()) for d in datasets}  # compare's visuals reload these
    degraded = {d.name: d.degradation for d in datasets if d.degradation not in ("", "bicubic")}
    if degraded:  # SR inputs that are not bicubic downscales: not the paper's test sets
        result["lr_degradation"] = degraded
    with _staged(Path(save_images) if save_images else None, data) as staging:
        result["datasets"] = {
            d.name: score_dataset(model, d, conv, device=dev, tile=sc.tile, overlap=sc.overlap, amp=sc.amp,
                                  save_dir=staging, noise_sigma=sc.noise_sigma, noise_seed=sc.noise_seed,
                                  progress=progress)
            for d in datasets
        }
    rows = paper_rows(result)  # the paper's figures, beside the measured ones, never mixed in
    if rows:
        result["paper"] = rows
    return result


def evaluate_labelled(model: LoadedModel, data: Sequence[str | Path], scoring: Scoring, label: str, *,
                      out: Path | None = None, extra: dict[str, Any] | None = None,
                      progress: Progress | None = None) -> dict[str, Any]:
    """`evaluate_model`'s result with the model's display label (the name every table
    shows) and the `extra` keys after it (a study unit's `training` record), written as
    JSON to `out` when given: the results `compare --checkpoint`, the study and the demo
    compare."""
    result = evaluate_model(model, data, scoring, progress=progress)
    result["model"]["label"] = label
    result.update(extra or {})
    if out is not None:
        write_json(out, result)
    return result


def _discover(data: Sequence[str | Path], scale: int | None, task: str | None,
              jpeg_quality: Sequence[int] | None) -> list[Dataset]:
    """The benchmark datasets, a JPEG folder of clean images once per quality."""
    if jpeg_quality:
        check_task(task)
    datasets = discover_all(data, scale, task)
    return with_qualities(datasets, tuple(jpeg_quality) if jpeg_quality else None)


@contextmanager
def _staged(target: Path | None, data: Sequence[str | Path] = ()) -> Iterator[Path | None]:
    """The folder the images for `target` are saved in (None: no images): a staging folder
    published as `target` when the block ends, removed when it fails (a failed run leaves
    nothing behind). Never inside a `data` folder."""
    if target is None:
        yield None
        return
    refuse_inside_inputs(target, data, "--save-images folder")
    staging = _staging_dir(target)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish(staging, target)


def _staging_dir(target: Path) -> Path:
    """A hidden temporary folder on the same file system as `target` (for a rename)."""
    base = next(p for p in (target.absolute().parent, *target.absolute().parents) if p.is_dir())
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=base))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the published folder is a normal one
    return staging


def _publish(staging: Path, target: Path) -> None:
    """Move the images of a finished run from `staging` into `target`."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(target)
        return
    for src in sorted(staging.rglob("*")):
        if src.is_file():
            dst = target / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)


def _find_restored(folder: Path, dataset: Dataset, name: str) -> Path:
    saved = safe_name(f"{name}.png")  # the names --save-images gives (score_dataset)
    for base in (folder.joinpath(*map(safe_name, dataset.name.split("/"))), folder):
        if base.is_dir():
            for p in list_images(base):
                if p.name == saved or p.stem == name or p.stem.startswith(name + "_"):
                    return p
    raise McirError(f"no restored image for {name!r} of {dataset.name}", folder)


def evaluate_restored(
    restored: str | Path,
    data: Sequence[str | Path],
    *,
    scale: int | None = None,
    task: str | None = None,
    y_channel: bool | None = None,
    crop_border: int | None = None,
    progress: Progress | None = None,
    jpeg_quality: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Score images already restored by any method (`restored/<dataset>/<name>.png` or flat;
    JPEG rows: `restored/<dataset>/q<q>/<name>.png`)."""
    restored = Path(restored)
    if not restored.is_dir():
        raise McirError("restored-images folder not found", restored)

    def output(d: Dataset, pair: Any) -> tuple[Tensor, Path]:
        path = _find_restored(restored, d, pair.name)
        return read_image(path), path

    return _score_outputs(data, scale, task, y_channel, crop_border, progress, output,
                          {"architecture": "restored images", "label": restored.name}, jpeg_quality)


def evaluate_compressed(
    data: Sequence[str | Path],
    jpeg_quality: Sequence[int],
    *,
    y_channel: bool | None = None,
    crop_border: int | None = None,
    progress: Progress | None = None,
    save_images: str | Path | None = None,
) -> dict[str, Any]:
    """The "JPEG" row of every artifact-removal table: the decoded JPEG itself scored
    against the clean image (as `evaluate_bicubic` is SR's baseline). With `save_images`,
    the decoded images are written (lossless PNG) as `<dataset>/q<q>/<name>.png`."""
    with _staged(Path(save_images) if save_images is not None else None, data) as staging:

        def output(d: Dataset, pair: Any) -> tuple[Tensor, Path]:
            lq, _ = load_pair(d, pair)
            if staging is not None:
                _save_output(staging, d, pair, lq)
            return lq, pair.lq or pair.gt

        return _score_outputs(data, None, "jpeg", y_channel, crop_border, progress, output,
                              {"architecture": "JPEG (no restoration)", "label": "JPEG"}, jpeg_quality)


def evaluate_bicubic(
    data: Sequence[str | Path],
    *,
    scale: int | None = None,
    y_channel: bool | None = None,
    crop_border: int | None = None,
    progress: Progress | None = None,
    save_images: str | Path | None = None,
) -> dict[str, Any]:
    """The bicubic baseline row of every SR table: the LR images upscaled by MATLAB's
    bicubic imresize (the LR the folder holds, or the one made from HR the same way),
    quantised to uint8 as a saved image would be, and scored like any model (a grey image
    among colour ones as 3 equal channels, as `score_dataset` and BasicSR do). With
    `save_images`, the upscaled images are written as `<dataset>/<name>.png`."""
    colour: dict[str, bool] = {}
    with _staged(Path(save_images) if save_images is not None else None, data) as staging:

        def output(d: Dataset, pair: Any) -> tuple[Tensor, Path]:
            if d.scale < 2:
                raise McirError("--bicubic is the SR baseline: this folder has no LR scale", d.root)
            lq, _ = load_pair(d, pair)
            if lq.shape[0] == 1 and colour.setdefault(d.name, has_colour_images(d)):
                lq = grey_as_rgb(lq)  # Set14's bridge
            out = to_uint8(imresize(lq, float(d.scale))).float() / 255
            if staging is not None:
                _save_output(staging, d, pair, out)
            return out, pair.lq or pair.gt

        return _score_outputs(data, scale, "sr", y_channel, crop_border, progress, output,
                              {"architecture": "MATLAB imresize", "label": "bicubic"})


def _score_outputs(
    data: Sequence[str | Path], scale: int | None, task: str | None, y_channel: bool | None,
    crop_border: int | None, progress: Progress | None,
    output: Callable[[Dataset, Any], tuple[Tensor, Path]], model: dict[str, Any],
    jpeg_quality: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Score `output(dataset, pair) -> (image, its file)` against every ground truth: the
    shared path of methods that are not a model (restored folders, bicubic, JPEG)."""
    datasets = _discover(data, scale, task, jpeg_quality)
    task = task or datasets[0].task
    s = datasets[0].scale
    conv = conventions_for(task, s, y_channel, crop_border)
    check_image_sizes(datasets, conv)
    result = result_header(conv, task)
    result["model"] = {"checkpoint": None, "sha256": None, "scale": s, **model}
    result["data"] = {d.name: str(d.root.resolve()) for d in datasets}
    record_inputs(result, datasets)
    if scale is None and s > 1:  # images do not say their scale; the folder did
        result["notes"] = [f"scale x{s} taken from the LR images of {datasets[0].root.name} (no --scale "
                           f"given); it sets the border crop of the SR convention"]
    result["datasets"] = {}
    for d in datasets:
        images = []
        for i, pair in enumerate(d.pairs):
            out, path = output(d, pair)
            gt = load_gt(d, pair, out.shape[-2:])  # aligned as load_pair aligns it (crops, halves)
            if out.shape[0] == 3:  # a grey ground truth, scored as score_dataset does
                gt = grey_as_rgb(gt)
            if out.shape != gt.shape:
                raise McirError(f"size {tuple(out.shape)} differs from the ground truth {tuple(gt.shape)}", path)
            images.append({"name": pair.name, **_score(out, gt, conv, path)})
            if progress:
                progress(d.name, i + 1, len(d))
        result["datasets"][d.name] = _summary(images)
    return result

