"""`mcir demo`: the whole path on a built-in default."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mcir_cli.cli.app import app, console, err_console, handle_errors, progress_bar


@app.command()
@handle_errors
def demo(
    output: Path = typer.Option(Path("mcir-demo"), "--output", "-o", help="New folder for everything the demo makes (must not exist).", rich_help_panel="Run control"),
    iters: int = typer.Option(40, help="Steps of each of the two retrains (MCIR and plain).", rich_help_panel="Run control"),
    device: str = typer.Option("auto", help="auto | cuda | cpu", rich_help_panel="Speed"),
    embedding_weights: Optional[Path] = typer.Option(None, help="Local torchvision VGG16 weights for the SPN embedding when torchvision's cache is empty (default: the cache; else a random VGG16, said loudly).", rich_help_panel="MCIR / SPN"),
) -> None:
    """The whole path offline in a few minutes: data, a model, MCIR vs plain retraining, proof.

    Example: mcir demo --iters 200 --device cuda -o runs/demo
    """
    import time

    from mcir_cli.cli.render import print_evidence, render_table
    from mcir_cli.compare.results import render_evidence
    from mcir_cli.workflows.demo import run_demo

    t0 = time.perf_counter()

    def say(message: str, kind: str) -> None:
        style = "bold yellow" if kind == "warn" else "cyan"
        err_console.print(f"[{style}]{message}[/]", highlight=False, soft_wrap=True)

    with progress_bar(quiet_in_pipes=False) as bar:
        jobs: dict[str, Any] = {}

        def on_step(name: str, step: int, total: int) -> None:
            if name not in jobs:
                jobs[name] = bar.add_task(f"train {name}", total=total)
            bar.update(jobs[name], completed=step)

        result = run_demo(output, iters=iters, device=device, embedding_weights=embedding_weights,
                          say=say, on_step=on_step)
    console.print(render_table(result.comparison))
    print_evidence("[bold]Evidence[/] (paired over images; 95 % bootstrap CI; sign-flip permutation p):",
                   render_evidence(result.comparison))
    print_evidence("[bold]MCIR vs plain fine-tuning[/] (baseline: plain):", render_evidence(result.head_to_head))
    for message in result.notes:
        err_console.print(f"[bold yellow]note:[/] {message}", highlight=False, soft_wrap=True)
    console.print(f"start model: {result.model}", highlight=False, soft_wrap=True)
    console.print(f"report: {result.report} ({result.summary.name} beside it)   visuals: {result.output / 'visuals'}   "
                  f"runs: {', '.join(str(p) for p in result.runs.values())}", highlight=False, soft_wrap=True)
    console.print(f"done in {time.perf_counter() - t0:.0f} s", highlight=False)


