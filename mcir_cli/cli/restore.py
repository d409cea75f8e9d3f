"""`mcir restore`: run a model on your own images and folders."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from mcir_cli.cli.app import RES_SCALE_HELP, app, console, err_console, handle_errors, progress_bar


def _tile_value(text: str) -> int | str:
    """--tile: auto, none, or a size in pixels."""
    return int(text) if text.strip().isdigit() else text.strip().lower()


@app.command()
@handle_errors
def restore(
    inputs: list[Path] = typer.Argument(..., metavar="INPUT", help="Image files and folders (searched recursively; relative paths kept)."),
    output: Path = typer.Option(..., "--output", "-o", help="Output folder (or, for one input file, the output file: photo_x4.png).", rich_help_panel="Output"),
    checkpoint: Optional[Path] = typer.Option(None, help="Checkpoint (.pth/.pt/.ckpt/.safetensors), e.g. a retrained model.safetensors.", rich_help_panel="Model"),
    model: Optional[str] = typer.Option(None, "--model", help="Preset name (see `mcir models`); its weights from $MCIR_WEIGHTS.", rich_help_panel="Model"),
    res_scale: Optional[float] = typer.Option(None, help=RES_SCALE_HELP, rich_help_panel="Model"),
    fmt: Optional[str] = typer.Option(None, "--format", help="png | jpeg | webp | tiff | same (the input's format) (default: png).", rich_help_panel="Output"),
    quality: Optional[int] = typer.Option(None, help="JPEG/WebP quality 1-100, for the JPEG/WebP outputs (default: JPEG 95, WebP lossless).", rich_help_panel="Output"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace outputs that exist (default: refuse).", rich_help_panel="Output"),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Keep outputs that exist and do the rest (continues a stopped run).", rich_help_panel="Output"),
    tile: str = typer.Option("auto", help="Tile size in input pixels, auto (CUDA: from free memory; CPU: 512) or none (whole images).", rich_help_panel="Speed"),
    tile_overlap: int = typer.Option(32, help="Overlap between tiles (input pixels); half of it is cut from each shared edge.", rich_help_panel="Speed"),
    tile_batch: Optional[int] = typer.Option(None, help="Tiles per forward pass (default: 4 on CUDA, 1 on CPU).", rich_help_panel="Speed"),
    amp: bool = typer.Option(False, "--amp", help="bf16 autocast on CUDA (faster; outputs differ slightly from fp32).", rich_help_panel="Speed"),
    device: str = typer.Option("auto", help="auto | cuda | cuda:N | cpu", rich_help_panel="Speed"),
) -> None:
    """Restore your own images with a model: files and folders in, same layout out.

    Example: mcir restore photos/ -o restored/ --checkpoint runs/imdn/model.safetensors --format same

    PNG, JPEG, WebP, TIFF and BMP in; 16-bit PNG/TIFF stay 16-bit; alpha is restored separately and re-attached (chaiNNer's "Separate Alpha"); EXIF orientation is applied; ICC profile, EXIF, XMP and PNG text are kept; grey images stay grey. Every image is read before any is written: a broken file stops the run with nothing written.
    """
    from mcir_cli.workflows.restore import restore_images

    with progress_bar() as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:  # "checking" (every image read first), then "restoring", with its ETA
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = restore_images(
            inputs, output, checkpoint=checkpoint, model=model, res_scale=res_scale, fmt=fmt, quality=quality,
            tile=_tile_value(tile), overlap=tile_overlap, tile_batch=tile_batch, amp=amp, device=device,
            overwrite=overwrite, skip_existing=skip_existing, progress=progress,
        )
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    info, s = result.model, result.settings
    console.print(
        f"{info['label']} ({info['architecture']}, x{info['scale']}) on {s.device}"
        f"{', bf16 autocast' if s.amp else ''}; tile {escape(result.tile_reason)}"
        f"{f', {s.tile_batch} per pass' if s.tile else ''}",
        highlight=False, soft_wrap=True,
    )
    kept = f"; {len(result.skipped)} kept (--skip-existing)" if result.skipped else ""
    console.print(f"wrote {len(result.written)} image{'s' * (len(result.written) != 1)} to {escape(str(output))}{kept}",
                  highlight=False, soft_wrap=True)
