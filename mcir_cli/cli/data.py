"""`mcir data inspect`: what a dataset folder is (layout, task, scale, pairs), or why not."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from mcir_cli.cli.app import console, data_app, handle_errors
from mcir_cli.errors import McirError


def _rel(path: Path, root: Path) -> str:
    base = root.parent if root.is_file() else root
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


@data_app.command("inspect")
@handle_errors
def data_inspect(
    folder: Path = typer.Argument(..., help="A dataset folder as published (or a list file of lq gt pairs)."),
    scale: Optional[int] = typer.Option(None, min=1, help="SR scale, when the folder holds several (default: the smallest).", rich_help_panel="Data"),
    task: Optional[str] = typer.Option(None, help="sr | dehaze | derain | deblur | denoise | jpeg (default: the layout's).", rich_help_panel="Data"),
    show: int = typer.Option(5, min=0, help="How many pairs to list (0: none).", rich_help_panel="Output"),
) -> None:
    """The layout a folder matches, its task, scale(s) and first pairs; or why none fits.

    Prints the published layout found (DIV2K, RESIDE, GoPro, ...), the task, the scale(s),
    the number of pairs and the first few, and checks from the file headers that every
    input matches its ground truth (LR x scale, or the same size); a folder that fits
    nothing, several layouts, or pairs that do not match get one line naming the file and
    the problem (exit code 2).

    Example: mcir data inspect DIV2K/ --scale 4 --show 3
    """
    from mcir_cli.data.datasets import pair_size_problems
    from mcir_cli.data.layouts import recognise, scales_of
    from mcir_cli.models.presets import check_task_name

    check_task_name(task)
    scales = scales_of(folder)
    notes = []
    if scale is None and len(scales) > 1:
        scale = scales[0]
        notes.append(f"holds x{', x'.join(map(str, scales))}: showing x{scale} (commands need --scale)")
    found = recognise(folder, scale, task)
    table = Table(show_header=False, title=str(folder))
    rows = [("layout", found.layout)]
    if found.root != folder and found.root.resolve() != folder.resolve():
        rows.append(("pairs from", str(found.root)))
    rows += [
        ("task", found.task),
        ("scale", f"x{found.scale}" + (f" (held: x{', x'.join(map(str, found.scales))})" if len(found.scales) > 1 else "")
         if found.task == "sr" else "1 (input and target the same size)"),
        ("pairs", f"{len(found.pairs):,}"),
    ]
    problems = pair_size_problems(found)
    rows.append(("sizes", _sizes_text(found, problems)))
    notes += found.notes
    if notes:
        rows.append(("notes", "\n".join(notes)))
    for k, v in rows:
        table.add_row(k, escape(v))
    console.print(table)
    _show_pairs(found, show)
    if problems:
        pair, problem = problems[0]
        more = f" ({len(problems) - 1} more pair{'s' * (len(problems) > 2)} like it)" if len(problems) > 1 else ""
        raise McirError(f"{problem}{more}", pair.lq or pair.gt)


def _sizes_text(found: Any, problems: list) -> str:
    if problems:
        return f"{len(problems):,} of {len(found.pairs):,} pairs do not match (the first is named below)"
    if all(p.lq is None for p in found.pairs):
        return ("no input files: inputs are made from each ground truth" +
                (f" (cropped to a multiple of {found.scale} first)" if found.task == "sr" else ""))
    return "every pair's input and ground truth match (file headers)"


def _show_pairs(found: Any, show: int) -> None:
    if not show or not found.pairs:
        return
    pairs = Table(title=f"first {min(show, len(found.pairs))} of {len(found.pairs):,} pairs")
    for col in ("name", "input", "ground truth"):
        pairs.add_column(col, overflow="fold")
    for p in found.pairs[:show]:
        if found.side_by_side:
            lq, gt = f"{_rel(p.gt, found.root)} (left half)", f"{_rel(p.gt, found.root)} (right half)"
        elif p.lq is None:
            made = {"denoise": "Gaussian noise added", "jpeg": "JPEG-compressed at --jpeg-quality"}.get(
                found.task, f"MATLAB bicubic x{found.scale} of the GT")
            lq, gt = f"({made})", _rel(p.gt, found.root)
        else:
            lq, gt = _rel(p.lq, found.root), _rel(p.gt, found.root)
        pairs.add_row(escape(p.name), escape(lq), escape(gt))
    console.print(pairs)


@data_app.command("degrade")
@handle_errors
def data_degrade(
    source: Path = typer.Argument(..., help="An SR folder (a benchmark as published, or HR images only); its ground truths are used."),
    output: Path = typer.Option(..., "--output", "-o", help="New folder for the copy (must not exist, or be empty).", rich_help_panel="Output"),
    scale: int = typer.Option(4, help="SR scale of the inputs made.", rich_help_panel="Degradation"),
    seed: int = typer.Option(0, help="Seed: the same seed and settings give the same files.", rich_help_panel="Degradation"),
    degradation_config: Optional[Path] = typer.Option(None, help="TOML with a \\[degradation] table changing the published defaults (Real-ESRGAN's option names).", rich_help_panel="Degradation"),
    device: str = typer.Option("cpu", help="cpu | cuda | auto: where the degradation runs (the noise of a CUDA copy differs from a CPU copy's; degradation.json says which).", rich_help_panel="Degradation"),
) -> None:
    """A benchmark copy degraded once by Real-ESRGAN's second-order degradation.

    Writes OUTPUT/HR/ (the ground truths, mod-cropped), OUTPUT/LR_realesrgan/X{s}/ and
    OUTPUT/degradation.json (settings, seed, each image's draws): an SR benchmark folder
    that evaluate, compare, study and --val read like Set5, the same inputs for every model.

    Example: mcir data degrade Set5/ -o Set5-realesrgan/ --scale 4 --seed 0
    """
    from mcir_cli.data.realesrgan.settings import degradation_flags
    from mcir_cli.workflows.degrade_data import degrade_dataset

    settings = degradation_flags(None, degradation_config)["degradation_settings"]
    done = degrade_dataset(source, output, scale, seed=seed, settings=settings, device=device)
    console.print(f"the {done.images} ground-truth images of {escape(str(source))} degraded x{done.scale} "
                  f"by the Real-ESRGAN second-order pipeline, seed {done.seed} -> {escape(str(done.output))} "
                  f"(HR/, LR_realesrgan/X{done.scale}/, degradation.json)")
