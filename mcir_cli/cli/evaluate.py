"""`mcir evaluate`: score a model, restored images or the bicubic baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mcir_cli._helpers.fsutil import writable_target, write_json
from mcir_cli.cli.app import RES_SCALE_HELP, app, console, err_console, handle_errors, progress_bar
from mcir_cli.cli.render import add_paper_rows_by_dataset, print_paper_notes
from mcir_cli.errors import McirError


def results_table(result: dict[str, Any], title: str | None = None) -> Table:
    """A row per dataset with PSNR, SSIM and the image count, plus the average."""
    conv = result["conventions"]
    caption = f"conventions: {conv.get('description', conv)}"
    if result.get("noise"):  # synthetic noise is part of what the numbers mean
        caption += f"; Gaussian noise σ={result['noise']['sigma']:g} (0–255), seed {result['noise']['seed']}"
    if result.get("jpeg"):
        caption += f"; JPEG inputs: {result['jpeg']['encoder']}"
    table = Table(title=title, caption=caption)
    rows = result["datasets"]
    b = any("psnrb" in d for d in rows.values())
    columns = [("PSNR (dB)", "psnr", ".2f"), ("SSIM", "ssim", ".4f")] + ([("PSNR-B (dB)", "psnrb", ".2f")] if b else [])
    for head in ["dataset", *(c[0] for c in columns), "images"]:
        table.add_column(head, justify="left" if head == "dataset" else "right")
    for name, d in rows.items():
        table.add_row(name, *(f"{d[k]:{f}}" for _, k, f in columns), str(len(d["images"])))
    if len(rows) > 1:
        n = sum(len(d["images"]) for d in rows.values())
        # the mean of the dataset means (how papers average benchmarks), not of all images
        means = (sum(d[k] for d in rows.values()) / len(rows) for _, k, _ in columns)
        table.add_row(f"[bold]mean of {len(rows)} datasets[/]", *(f"[bold]{m:{f}}" for m, (_, _, f) in zip(means, columns)),
                      f"{n} in all")
    add_paper_rows_by_dataset(table, result.get("paper", []))
    return table





@app.command()
@handle_errors
def evaluate(
    data: list[Path] = typer.Option(..., "--data", help="Benchmark folder (repeatable).", rich_help_panel="Data"),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint (.pth/.pt/.ckpt/.safetensors); architecture auto-detected.", rich_help_panel="Model"),
    model: Optional[str] = typer.Option(None, "--model", help="Preset name (see `mcir models`) or a preset .toml.", rich_help_panel="Model"),
    restored: Optional[Path] = typer.Option(None, help="Score images already restored by any method (a folder) instead of a model.", rich_help_panel="Model"),
    bicubic: bool = typer.Option(False, "--bicubic", help="Score the bicubic baseline (MATLAB imresize of the LR) instead of a model.", rich_help_panel="Model"),
    compressed: bool = typer.Option(False, "--compressed", help="JPEG: score the decoded JPEG itself (the 'JPEG' row of every table) instead of a model.", rich_help_panel="Model"),
    scale: Optional[int] = typer.Option(None, min=1, help="SR scale (default: the model's; a preset in several scales: the one the data holds).", rich_help_panel="Model"),
    res_scale: Optional[float] = typer.Option(None, help=RES_SCALE_HELP, rich_help_panel="Model"),
    task: Optional[str] = typer.Option(None, help="sr | dehaze | derain | deblur | denoise | jpeg (default: from the model or folder layout).", rich_help_panel="Data"),
    y_channel: Optional[bool] = typer.Option(None, "--y-channel/--rgb", help="Score on Y (BT.601) or RGB (default: Y for SR, RGB otherwise).", rich_help_panel="Metrics"),
    crop_border: Optional[int] = typer.Option(None, help="Pixels cropped from each edge before scoring (default: the scale for SR, 0 otherwise).", rich_help_panel="Metrics"),
    noise_sigma: Optional[float] = typer.Option(None, help="Denoising: Gaussian noise σ (0–255 scale) added to clean images (default: none; a clean-only denoising folder needs it).", rich_help_panel="Data"),
    noise_seed: int = typer.Option(0, help="Seed of the added noise.", rich_help_panel="Data"),
    jpeg_quality: Optional[str] = typer.Option(None, help="JPEG: qualities (1–100) clean images are compressed at, e.g. 10,20,30,40: a table row per folder and quality (OpenCV's encoder, bit for bit).", rich_help_panel="Data"),
    tile: Optional[int] = typer.Option(None, help="Tile size (input pixels) for large images (default: whole images); tiles see less context, so attention models score slightly differently.", rich_help_panel="Speed"),
    tile_overlap: int = typer.Option(32, help="Overlap between tiles (input pixels).", rich_help_panel="Speed"),
    device: str = typer.Option("auto", help="auto | cuda | cpu", rich_help_panel="Speed"),
    amp: Optional[str] = typer.Option(None, help="fp32 | bf16 (autocast on CUDA; scores then differ slightly from fp32) (default: fp32).", rich_help_panel="Speed"),
    save_images: Optional[Path] = typer.Option(None, help="Write restored images to this folder (new or empty; default: not saved).", rich_help_panel="Output"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON (new file), for `mcir compare`.", rich_help_panel="Output"),
) -> None:
    """Score a model (or restored images) on benchmark folders with BasicSR's PSNR/SSIM.

    Example: mcir evaluate --checkpoint DCTLSA/X4.pt --data Set5/ --data Set14/ -o dctlsa.json
    """
    from mcir_cli.evaluate.benchmarks import (Scoring, evaluate_bicubic, evaluate_compressed, evaluate_model,
                                              evaluate_restored)
    from mcir_cli.models.loading import load_model

    _check_scoring_flags(task, crop_border, noise_sigma, tile, tile_overlap)
    qualities = _qualities(jpeg_quality, task)
    sources = [flag for flag, given in (("--checkpoint/--model", checkpoint or model), ("--restored", restored),
                                        ("--bicubic", bicubic), ("--compressed", compressed)) if given]
    if len(sources) > 1:
        raise McirError(f"score one thing at a time: {' and '.join(sources)} were both given")
    if bicubic and task not in (None, "sr"):
        raise McirError("--bicubic is the SR baseline; it has no meaning for --task " + task)
    if compressed and not qualities:
        raise McirError("--compressed scores JPEG inputs: give --jpeg-quality Q (e.g. 10,20,30,40)")
    if amp not in (None, "bf16", "fp32", "none"):
        raise McirError(f"--amp must be bf16 or fp32 (got {amp!r})")
    if save_images is not None:
        if save_images.exists() and not save_images.is_dir():
            raise McirError("--save-images must be a folder, this is a file", save_images)
        if save_images.exists() and any(save_images.iterdir()):
            raise McirError("--save-images folder exists and is not empty; choose a new one", save_images)
        writable_target(save_images, "--save-images folder")
    if output is not None:
        if output.exists():
            raise McirError("output file exists; choose a new name (mcir never overwrites results)", output)
        writable_target(output, "results")
    with progress_bar() as bar:
        tasks: dict[str, Any] = {}

        def progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=total)
            bar.update(tasks[name], completed=done)

        if compressed:
            result = evaluate_compressed(data, qualities or (), y_channel=y_channel, crop_border=crop_border,
                                         progress=progress, save_images=save_images)
        elif bicubic:
            result = evaluate_bicubic(data, scale=scale, y_channel=y_channel, crop_border=crop_border,
                                      progress=progress, save_images=save_images)
        elif restored is not None:
            result = evaluate_restored(
                restored, data, scale=scale, task=task, y_channel=y_channel,
                crop_border=crop_border, progress=progress, jpeg_quality=qualities,
            )
        else:
            loaded = load_model(checkpoint, model, _scale_from_data(model, scale, data), res_scale=res_scale)
            scoring = Scoring(task=task, y_channel=y_channel, crop_border=crop_border, device=device, tile=tile,
                              overlap=tile_overlap, amp=amp, noise_sigma=noise_sigma, noise_seed=noise_seed,
                              jpeg_quality=qualities)
            result = evaluate_model(loaded, data, scoring, save_images=save_images, progress=progress)
    info = result["model"]
    title = f"{info['label']} ({info['architecture']}, x{info['scale']})"
    console.print(results_table(result, title))
    print_paper_notes(result.get("paper", []))
    for note in result.get("notes", []):
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    if output is not None:
        write_json(output, result)
        console.print(f"results written to {output}")


def _scale_from_data(model: str | None, scale: int | None, data: list[Path]) -> int | None:
    """`--model swinir-light` (a preset in several scales) without --scale: the one scale
    the data folders hold (`preset_scale`), said in a note."""
    from mcir_cli.models.presets import preset_scale

    found = preset_scale(model, scale, data)
    if scale is None and found is not None:
        err_console.print(f"[yellow]note:[/] preset {escape(model or '')}: x{found}, the scale the data holds "
                          "(no --scale given)", highlight=False)
    return found


def _qualities(text: str | None, task: str | None) -> tuple[int, ...] | None:
    """--jpeg-quality of evaluate/compare: a list of qualities, for the JPEG task only."""
    from mcir_cli.data.jpeg import check_task, parse_qualities

    if text is None:
        return None
    check_task(task)
    return parse_qualities(text)


def _check_scoring_flags(task: str | None, crop_border: int | None, noise_sigma: float | None,
                         tile: int | None = None, tile_overlap: int = 0) -> None:
    """Flags of evaluate/compare, refused in one line before any work."""
    from mcir_cli.models.presets import check_noise_sigma, check_task_name

    check_task_name(task)
    check_noise_sigma(noise_sigma)
    if crop_border is not None and crop_border < 0:
        raise McirError(f"--crop-border must be >= 0 (got {crop_border})")
    if tile is not None and tile < 8:
        raise McirError(f"--tile must be at least 8 pixels (got {tile})")
    if tile_overlap < 0:
        raise McirError(f"--tile-overlap must be >= 0 (got {tile_overlap})")
    if tile is not None and tile_overlap >= tile:
        raise McirError(f"--tile-overlap {tile_overlap} must be smaller than --tile {tile}")


