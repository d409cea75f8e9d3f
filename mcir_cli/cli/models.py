"""`mcir models`: presets, detectable architectures, and what a checkpoint is."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from mcir_cli.cli.app import RES_SCALE_HELP, console, handle_errors, models_app

# --------------------------------------------------------------------------- models


def _weights_cell(preset) -> str:
    """The preset's pretrained file, green when found under $MCIR_WEIGHTS."""
    from mcir_cli.models.loading import resolve_weights

    if not preset.weights_file:
        return "-"
    if resolve_weights(preset):  # said in words too: colour is lost in pipes and logs
        return f"[green]{preset.weights_file} (found)[/]"
    return f"[dim]{preset.weights_file} (not found)[/]"


def _short_source(source: str) -> str:
    """'https://github.com/owner/repo/blob/...' -> 'owner/repo' for a narrow table."""
    import re

    m = re.search(r"github\.com/([^/\s]+/[^/\s]+)", source)
    return m.group(1) if m else source[:40]


@models_app.callback(invoke_without_command=True)
@handle_errors
def models_list(ctx: typer.Context) -> None:
    """Presets (the paper's baselines and the shipped recipes) and detectable architectures."""
    if ctx.invoked_subcommand is not None:
        return
    import spandrel

    from mcir_cli.models import archs
    from mcir_cli.models.presets import list_presets

    table = Table(title="presets (use with --model NAME)", caption="weights: the file a preset loads from a folder in $MCIR_WEIGHTS; paper: "
                  "the MCIR paper's table with this model's printed figures, and its test sets")
    for col in ("name", "task", "scale", "architecture", "params", "weights", "recipe source", "paper"):
        table.add_column(
            col,
            justify="right" if col in ("scale", "params") else "left",
            no_wrap=col in ("name", "task", "scale", "params"),
            overflow="fold",
        )
    for p in list_presets():
        table.add_row(
            p.name, p.task, f"x{p.scale}" if p.task == "sr" else "-", p.architecture,
            f"{p.params:,}" if p.params else "?", _weights_cell(p), _short_source(p.source),
            f"{p.paper.table}: {', '.join(p.paper.results)}" if p.paper else "-",
        )
    console.print(table)
    archs.register()
    ours = set(archs.BUILDERS)
    names = sorted(a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures())
    console.print(
        "[bold]auto-detected architectures[/] (--checkpoint FILE): "
        + ", ".join(f"[cyan]{n}[/]" if n in ours else n for n in names)
        + "  ([cyan]cyan[/]: built into mcir)",
        highlight=False,
    )


@models_app.command("inspect")
@handle_errors
def models_inspect(
    file: Path = typer.Argument(..., help="A checkpoint file."),
    res_scale: Optional[float] = typer.Option(None, help=RES_SCALE_HELP, rich_help_panel="Model"),
) -> None:
    """What a checkpoint is: architecture, scale, channels, parameters, wrapper.

    Example: mcir models inspect EDSR_Lx4.pth --res-scale 0.1
    """
    from mcir_cli.models.loading import load_checkpoint_model

    loaded = load_checkpoint_model(file, res_scale=res_scale)
    ckpt = loaded.checkpoint
    assert ckpt is not None
    table = Table(show_header=False, title=str(file))
    rows = [
        ("architecture", loaded.architecture),
        ("variant, layout", ", ".join(loaded.tags) or "-"),
        ("scale", f"x{loaded.scale}"),
        ("channels", f"{loaded.in_channels} in, {loaded.out_channels} out"),
        ("parameters", f"{loaded.num_params:,}"),
        ("wrapper", ckpt.describe_wrapper()),
        ("EMA copy", "yes" if ckpt.is_ema else "no"),
        ("format", ckpt.format),
        ("size requirement", f"min {loaded.min_size}, multiple of {loaded.multiple_of}"),
    ]
    if ckpt.metadata:
        rows.append(("metadata", "\n".join(f"{k} = {v[:100]}" for k, v in ckpt.metadata.items())))
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


