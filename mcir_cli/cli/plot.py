"""`mcir plot`: training curves of run folders as one figure."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mcir_cli.cli.app import app, console, handle_errors


@app.command()
@handle_errors
def plot(
    runs: list[Path] = typer.Argument(..., metavar="RUN", help="Run folders of mcir retrain, one or more (their log.jsonl and config.json are read)."),
    out: Path = typer.Option(..., "--out", "-o", help="New figure file: .png, .svg or .pdf (must not exist).", rich_help_panel="Output"),
    label: Optional[list[str]] = typer.Option(None, "--label", help="Legend label of each run, in order (repeatable; default: the folders' distinct names).", rich_help_panel="Legend"),
) -> None:
    """Training curves of runs side by side: losses, contrast ratio, λ, lr, validation PSNR.

    Example: mcir plot runs/plain runs/mcir --out curves.png

    Panels over steps: l_rec, l_neg, the contrast ratio λ·l_neg/|l_rec| with mcir's heuristic band (the run's --ratio-band), λ, lr and the validation PSNR; collapses are dotted vertical lines. Panels no run has data for are left out (a plain run has no l_neg, ratio or λ).
    """
    from mcir_cli.render.plot import plot_runs

    path = plot_runs(runs, out, labels=label)
    console.print(f"wrote {path} (training curves of {len(runs)} run{'s' * (len(runs) != 1)})",
                  highlight=False, soft_wrap=True)
