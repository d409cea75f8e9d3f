"""`mcir compare`: baseline vs retrained, paired statistics, exports and visuals."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from mcir_cli.cli.app import _progress, app, console, err_console, handle_errors
from mcir_cli.cli.evaluate import _check_scoring_flags
from mcir_cli.errors import McirError
from mcir_cli.fsutil import writable_target



# ------------------------------------------------------------------------- compare


def _compare_inputs(results: list[Path], checkpoint: list[Path], data: list[Path], model_flags: dict[str, Any]) -> str:
    """Which of the two ways to call `compare` this is: 'json' or 'checkpoint'."""
    if results and checkpoint:
        raise McirError("give result JSONs or --checkpoint files, not both")
    if checkpoint:
        if len(checkpoint) < 2:
            raise McirError("compare needs at least two --checkpoint files (the first is the baseline)")
        if not data:
            raise McirError("--checkpoint needs benchmark folders: add --data DIR (repeatable)")
        return "checkpoint"
    if not results:
        raise McirError("give two or more result JSONs (from `mcir evaluate --output`), or "
                        "--checkpoint A --checkpoint B --data DIR")
    given = [flag for flag, value in model_flags.items() if value]
    if given:
        raise McirError(f"{', '.join(given)} only apply with --checkpoint; result JSONs were "
                        "scored already (their conventions are checked)")
    return "json"


@app.command()
@handle_errors
def compare(
    results: Optional[list[Path]] = typer.Argument(None, help="Result JSONs from `mcir evaluate --output` (the first is the baseline)."),
    checkpoint: Optional[list[Path]] = typer.Option(None, "--checkpoint", help="Instead of JSONs: checkpoints to evaluate with identical conventions (repeatable; the first is the baseline)."),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="With --checkpoint: benchmark folder (repeatable)."),
    scale: Optional[int] = typer.Option(None, help="With --checkpoint: SR scale (checked against the checkpoints)."),
    task: Optional[str] = typer.Option(None, help="With --checkpoint: sr | dehaze | derain | deblur | denoise."),
    y_channel: Optional[bool] = typer.Option(None, "--y-channel/--rgb", help="With --checkpoint: score on Y (BT.601) or RGB (default: Y for SR)."),
    crop_border: Optional[int] = typer.Option(None, help="With --checkpoint: pixels cropped from each edge (default: scale for SR)."),
    device: str = typer.Option("auto", help="auto | cuda | cpu (evaluation and visuals)."),
    tile: Optional[int] = typer.Option(None, help="Tile size (input pixels) for large images."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the comparison as JSON (new file)."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write a Markdown report (new file)."),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-image scores and deltas as CSV (new file)."),
    latex: Optional[Path] = typer.Option(None, "--latex", help="Write a booktabs LaTeX table (new file)."),
    visuals: Optional[Path] = typer.Option(None, "--visuals", help="Folder (new or empty) for comparison strips and Δ bar charts."),
    label: Optional[list[str]] = typer.Option(None, "--label", help="Names for the models, in order (repeatable; default: from the file names)."),
    top_k: int = typer.Option(3, help="Strips for the k images per dataset with the largest |Δ PSNR|."),
    resamples: int = typer.Option(10_000, help="Bootstrap / permutation resamples."),
    seed: int = typer.Option(0, help="Seed of the resampling."),
) -> None:
    """Compare a baseline with retrained models image by image: table, Δ, 95 % CI, p, visuals."""
    from mcir_cli import compare as cmp

    mode = _compare_inputs(results or [], checkpoint or [], data or [], {
        "--data": data, "--scale": scale is not None, "--task": task is not None,
        "--y-channel/--rgb": y_channel is not None, "--crop-border": crop_border is not None,
    })
    _check_scoring_flags(task, crop_border, None, tile)
    if resamples < 1:
        raise McirError(f"--resamples must be at least 1 (got {resamples})")
    if top_k < 1:
        raise McirError(f"--top-k must be at least 1 (got {top_k})")
    exports = cmp.check_export_paths({"json": json_out, "markdown": markdown, "csv": csv_out, "latex": latex})
    if visuals is not None and visuals.exists():
        if not visuals.is_dir():
            raise McirError("--visuals must be a folder, this is a file", visuals)
        if any(visuals.iterdir()):
            raise McirError("--visuals folder exists and is not empty; choose a new one", visuals)
    if visuals is not None:
        writable_target(visuals, "--visuals folder")

    loaded: list[Any] = []
    datasets: dict[str, Any] | None = None
    sources: list[Path] = []
    if mode == "json":
        sources = list(results or [])
        result_dicts = [cmp.load_result(p) for p in sources]
    else:
        with _progress() as bar:
            tasks: dict[str, Any] = {}

            def progress(label: str, name: str, done: int, total: int) -> None:
                key = f"{label}: {name}"
                if key not in tasks:
                    tasks[key] = bar.add_task(key, total=total)
                bar.update(tasks[key], completed=done)

            result_dicts, loaded, datasets = cmp.evaluate_checkpoints(
                list(checkpoint or []), list(data or []), scale=scale, task=task, y_channel=y_channel,
                crop_border=crop_border, device=device, tile=tile, progress=progress,
            )
    if label:
        if len(label) != len(result_dicts):
            raise McirError(f"--label given {len(label)} time(s) for {len(result_dicts)} models; name every model, in order")
        for res, name in zip(result_dicts, label):
            res["model"]["label"] = name
    comparison = cmp.compare_results(result_dicts, n_resamples=resamples, seed=seed)
    console.print(cmp.render_table(comparison))
    for msg in comparison.dropped.messages():
        err_console.print(f"[yellow]{msg}[/]", highlight=False)
    console.print(f"[bold]Evidence[/] (paired over images; 95 % bootstrap CI, {resamples} resamples, "
                  f"seed {seed}; sign-flip permutation p):", highlight=False)
    for line in cmp.render_evidence(comparison):
        console.print(f"  {line}", highlight=False, soft_wrap=True)

    for path in cmp.write_exports(comparison, exports):
        console.print(f"written: {path}", highlight=False)
    if visuals is not None:
        from mcir_cli.visuals import VisualsUnavailable, load_visual_sources, write_comparison_visuals

        try:
            if mode == "json":
                loaded, datasets = load_visual_sources(result_dicts, sources)
            with _progress() as bar:
                job = bar.add_task("visuals", total=None)
                out = write_comparison_visuals(
                    comparison, loaded, datasets or {}, visuals, top_k, device=device, tile=tile,
                    noise=result_dicts[0].get("noise"),
                    progress=lambda done, total: bar.update(job, completed=done, total=total),
                )
        except VisualsUnavailable as exc:  # asked for and not made: the exit code says so
            raise McirError(f"--visuals could not be made ({exc}); the table and exports above are complete") from None
        for msg in out["skipped"]:
            err_console.print(f"[yellow]{msg}[/]", highlight=False)
        console.print(f"visuals: {len(out['strips'])} strips and {len(out['charts'])} charts in {visuals}",
                      highlight=False)


