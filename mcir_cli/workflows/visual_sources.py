"""What the comparison pictures are made from: models and benchmark images, re-run.

`visuals.py` only draws; this module finds again what a set of `evaluate` results was
made from (`load_visual_sources`), re-runs the models on the images that differ most and
hands the outputs to the drawing code (`write_comparison_visuals`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mcir_cli._helpers.fsutil import sha256_file
from mcir_cli.compare.results import Comparison
from mcir_cli.data.datasets import Dataset, discover, load_pair
from mcir_cli.errors import McirError
from mcir_cli.models.inference import resolve_device, restore
from mcir_cli.models.loading import LoadedModel, load_checkpoint_model
from mcir_cli.models.presets import get_preset
from mcir_cli.render.visuals import (
    auto_heat_scale,
    comparison_strip,
    divergence_map,
    largest_delta_images,
    save_image,
    slug,
    write_delta_charts,
)

StripProgress = Callable[[int, int], None]  # (strips restored, total)


class VisualsUnavailable(Exception):
    """Why the strips cannot be drawn (a checkpoint or a data folder is missing); the
    caller reports it as a note, not an error."""


# --------------------------------------------------------------------------- sources


def _locate(value: str, source: str | Path | None) -> Path | None:
    """A path from a result file: as given (from the working folder), else relative to
    the folder of the JSON it came from; None when neither exists."""
    path = Path(value).expanduser()
    if path.exists():
        return path
    if not path.is_absolute() and source is not None:
        alt = Path(source).parent / path
        if alt.exists():
            return alt
    return None


def _load_model(info: dict, source: str | Path | None) -> LoadedModel:
    """The model a result's `model` dict names, checked against its sha256."""
    label = info.get("label") or "model"
    ckpt = info.get("checkpoint")
    if not ckpt:
        raise VisualsUnavailable(f"{label}: the result names no checkpoint "
                                 "(scored from restored images?)")
    path = _locate(str(ckpt), source)
    if path is None:
        raise VisualsUnavailable(f"{label}: checkpoint {ckpt} not found")
    want = info.get("sha256")
    if want and sha256_file(path) != want:
        raise VisualsUnavailable(f"{label}: {path} changed since it was evaluated "
                                 "(sha256 differs)")
    preset = None
    if info.get("preset"):
        try:
            preset = get_preset(str(info["preset"]))
        except McirError:
            preset = None
    try:
        return load_checkpoint_model(path, preset)
    except McirError as exc:
        raise VisualsUnavailable(f"{label}: {exc}") from None


def _load_datasets(first: dict, source: str | Path | None) -> dict[str, Dataset]:
    """The benchmark folders of the top-level `"data"` map of the baseline result."""
    roots = first.get("data")
    if not isinstance(roots, dict) or not roots:
        raise VisualsUnavailable("the results do not record their data folders (a `data` "
                                 "map, written by mcir evaluate since this version); "
                                 "re-evaluate, or compare with --checkpoint ... --data ...")
    scale = int(first.get("model", {}).get("scale") or 1)
    task = first.get("task")
    datasets = {}
    for name, root in roots.items():
        path = _locate(str(root), source)
        if path is None:
            raise VisualsUnavailable(f"data folder {root} ({name}) not found")
        quality = (first.get("jpeg") or {}).get("datasets", {}).get(name)  # a JPEG row: its quality
        try:
            ds = discover(path, scale if scale > 1 else None, task if task in ("sr", "denoise", "jpeg") else None)
            datasets[name] = replace(ds, name=name, jpeg_quality=int(quality)) if quality is not None else ds
        except McirError as exc:
            raise VisualsUnavailable(f"data folder {root} ({name}): {exc}") from None
    return datasets


def load_visual_sources(results: Sequence[dict],
                        sources: Sequence[str | Path | None] = ()) -> tuple[list[LoadedModel], dict[str, Dataset]]:
    """Reload what a set of `evaluate` results were made from: the models (from
    `model.checkpoint`, checked against `model.sha256`) and the benchmark folders (from
    the top-level `"data"` map). `sources[i]` is the JSON file result i came from;
    relative paths are tried against the working folder, then against that file's
    folder. Returns (models, {dataset name: Dataset}); raises VisualsUnavailable with a
    reason when something is missing or changed."""
    sources = list(sources) + [None] * (len(results) - len(sources))
    models = [_load_model(res.get("model", {}), src) for res, src in zip(results, sources)]
    return models, _load_datasets(results[0], sources[0])


# --------------------------------------------------------------------------- re-running


@dataclass
class _Strip:
    """One strip to draw: where, the four images and the two model labels."""

    path: Path
    lq: torch.Tensor
    base: torch.Tensor
    new: torch.Tensor
    gt: torch.Tensor
    labels: tuple[str, str]


def _run(model: LoadedModel, lq: torch.Tensor, dev: torch.device, tile: int | None,
         overlap: int) -> torch.Tensor:
    """One image through one model, in eval mode (its mode restored after)."""
    net = model.restorer.to(dev)
    was = net.training
    net.eval()
    try:
        return restore(net, lq.to(dev), model.scale, min_size=model.min_size,
                       multiple_of=model.multiple_of, square=model.square, tile=tile,
                       overlap=overlap).cpu().clamp(0, 1)
    finally:
        net.train(was)


def _pair_tensors(ds: Dataset, name: str, noise: dict | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(lq, gt) of image `name`, with the noise evaluate drew for it; None if absent."""
    sigma = (noise or {}).get("sigma")
    index = {p.name: i for i, p in enumerate(ds.pairs)}
    if name not in index:
        return None
    if sigma is not None and ds.pairs[index[name]].lq is None:
        # reproduce the noise draw of `iter_pairs` (one seeded stream in name order)
        g = torch.Generator().manual_seed(int((noise or {}).get("seed", 0)))
        for i, p in enumerate(ds.pairs):
            lq, gt = load_pair(ds, p, sigma, g)
            if i == index[name]:
                return lq, gt
    return load_pair(ds, ds.pairs[index[name]], sigma)


def _restore_strips(comparison: Comparison, models: Sequence[LoadedModel],
                    datasets: dict[str, Dataset], out_dir: Path, top_k: int,
                    run: Callable[[LoadedModel, torch.Tensor], torch.Tensor],
                    noise: dict | None, progress: StripProgress | None) -> tuple[list[_Strip], list[str]]:
    """Re-run the baseline (once per image) and each later model on the `top_k` images
    per dataset with the largest |Δ PSNR|; returns the strips to draw and what was
    skipped."""
    many = len(comparison.models) > 2
    jobs: list[_Strip] = []
    skipped: list[str] = []
    cache: dict[tuple[str, str], torch.Tensor] = {}
    todo = [(lab, m, ds) for lab, m in zip(comparison.models[1:], models[1:])
            for ds in comparison.datasets]
    total = sum(min(top_k, len(comparison.images[ds])) for _, _, ds in todo)
    done = 0
    for lab, model, ds_name in todo:
        ds = datasets.get(ds_name)
        if ds is None:
            skipped.append(f"{ds_name}: no data folder given, strips skipped")
            continue
        for name in largest_delta_images(comparison.image_deltas(ds_name, lab, "psnr"), top_k):
            pair = _pair_tensors(ds, name, noise)
            if pair is None:
                skipped.append(f"{ds_name}/{name}: not in {ds.root}, strip skipped")
                continue
            lq, gt = pair
            key = (ds_name, name)
            if key not in cache:
                cache[key] = run(models[0], lq)
            new = run(model, lq)
            sub = out_dir / slug(lab) if many else out_dir
            jobs.append(_Strip(sub / slug(ds_name) / f"{slug(name)}.png", lq, cache[key], new, gt,
                               (comparison.baseline, lab)))
            done += 1
            if progress:
                progress(done, total)
    return jobs, skipped


def _draw_strips(jobs: list[_Strip]) -> tuple[list[Path], float, dict[str, float]]:
    """Draw and save every strip with one shared heat scale (the largest automatic one);
    returns (paths, that scale, the largest divergence of each strip)."""
    divs = [divergence_map(j.base, j.new) for j in jobs]
    scales = [auto_heat_scale(d) for d in divs]
    heat_scale = max(scales) if scales else 0.0
    strips, max_div = [], {}
    for job, div in zip(jobs, divs):
        img = comparison_strip(job.lq, job.base, job.new, job.gt,
                               labels=("LQ (upscaled)", *job.labels, "GT"), heat_scale=heat_scale)
        strips.append(save_image(img, job.path))
        max_div[str(job.path)] = float(div.max()) if div.size else 0.0
    return strips, heat_scale, max_div


def write_comparison_visuals(
    comparison: Comparison,
    models: Sequence[LoadedModel],
    datasets: dict[str, Dataset],
    out_dir: str | Path,
    top_k: int = 3,
    *,
    device: str | torch.device = "cpu",
    tile: int | None = None,
    overlap: int = 32,
    noise: dict | None = None,
    progress: StripProgress | None = None,
) -> dict[str, Any]:
    """For every later model and dataset, the `top_k` images with the largest |Δ PSNR|
    against the baseline: both models are re-run on just those images and a
    `comparison_strip` (LQ | baseline | retrained | GT | divergence) is written to
    `out_dir/<dataset>/<image>.png` (two models) or `out_dir/<label>/<dataset>/<image>.png`
    (more); plus the per-dataset Δ PSNR bar charts (`write_delta_charts`). All heat maps
    share one scale (the largest automatic scale among them). `models[i]` is the
    `LoadedModel` of `comparison.models[i]`; `datasets` maps the comparison's dataset
    names to `data.Dataset`s. Returns {"strips": [paths], "charts": [paths],
    "heat_scale": float, "max_divergence": {path: float}, "skipped": [messages]}."""
    out_dir = Path(out_dir)
    if len(models) != len(comparison.models):
        raise ValueError(f"{len(models)} models for {len(comparison.models)} results")
    dev = resolve_device(device) if isinstance(device, str) else device

    def run(model: LoadedModel, lq: torch.Tensor) -> torch.Tensor:
        return _run(model, lq, dev, tile, overlap)

    jobs, skipped = _restore_strips(comparison, models, datasets, out_dir, top_k, run, noise, progress)
    strips, heat_scale, max_div = _draw_strips(jobs)
    charts = write_delta_charts(comparison, out_dir)
    return {"strips": strips, "charts": charts, "heat_scale": heat_scale,
            "max_divergence": max_div, "skipped": skipped}
