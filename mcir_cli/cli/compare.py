"""`mcir compare`: baseline vs retrained, paired statistics, exports and visuals."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from mcir_cli.cli.app import RES_SCALE_HELP, app, console, handle_errors, progress_bar
from mcir_cli.cli.evaluate import _check_scoring_flags, _qualities
from mcir_cli.errors import McirError

if TYPE_CHECKING:
    from mcir_cli.workflows.compare import CompareRun


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


def _show(run: CompareRun, visuals: Path | None) -> None:
    """The table, what was left out, the evidence, the files written; an exit code 2 for
    asked-for visuals that could not be made (after everything else is shown)."""
    from mcir_cli.cli.render import print_evidence, print_notes, print_paper_notes, render_table
    from mcir_cli.compare.results import render_evidence

    comp = run.comparison
    console.print(render_table(comp))
    print_paper_notes(comp.paper)
    print_notes(comp.dropped.messages())
    print_evidence(f"[bold]Evidence[/] (paired over images; 95 % bootstrap CI, {comp.n_resamples} resamples, "
                   f"seed {comp.seed}; sign-flip permutation p):", render_evidence(comp))
    for path in run.written:
        console.print(f"written: {path}", highlight=False)
    if run.report is not None:
        if run.visuals_error is not None and visuals is None:
            print_notes([f"the report has no comparison strips: {run.visuals_error}"])
        console.print(f"report: {run.report}", highlight=False)
    if run.visuals_error is not None and visuals is not None:  # asked for and not made: the exit code says so
        raise McirError(f"--visuals could not be made ({run.visuals_error}); the table and exports above are complete")
    if run.visuals is not None:
        print_notes(run.visuals["skipped"])
        n_s, n_c = len(run.visuals["strips"]), len(run.visuals["charts"])
        console.print(f"visuals: {n_s} strip{'s' * (n_s != 1)} and {n_c} chart{'s' * (n_c != 1)} "
                      f"in {visuals}", highlight=False)


@app.command()
@handle_errors
def compare(
    results: Optional[list[Path]] = typer.Argument(None, help="Result JSONs from `mcir evaluate --output` (the first is the baseline)."),
    checkpoint: Optional[list[Path]] = typer.Option(None, "--checkpoint", help="Instead of JSONs: checkpoints to evaluate with identical conventions (repeatable; the first is the baseline).", rich_help_panel="Inputs"),
    data: Optional[list[Path]] = typer.Option(None, "--data", help="With --checkpoint: benchmark folder (repeatable).", rich_help_panel="Inputs"),
    label: Optional[list[str]] = typer.Option(None, "--label", help="Names for the models, in order (repeatable; default: the file's stem, with its folder when the stem names only a scale or step: DCTLSA/X4, EDSR_Mx4/net_g_5000; a run's model.* is the run's folder name).", rich_help_panel="Inputs"),
    scale: Optional[int] = typer.Option(None, min=1, help="With --checkpoint: SR scale (default: the checkpoints'; checked against them).", rich_help_panel="Scoring"),
    res_scale: Optional[float] = typer.Option(None, help="With --checkpoint: " + RES_SCALE_HELP, rich_help_panel="Scoring"),
    task: Optional[str] = typer.Option(None, help="With --checkpoint: sr | dehaze | derain | deblur | denoise | jpeg (default: from the checkpoints or folder layout).", rich_help_panel="Scoring"),
    y_channel: Optional[bool] = typer.Option(None, "--y-channel/--rgb", help="With --checkpoint: score on Y (BT.601) or RGB (default: Y for SR, RGB otherwise).", rich_help_panel="Scoring"),
    crop_border: Optional[int] = typer.Option(None, help="With --checkpoint: pixels cropped from each edge (default: the scale for SR, 0 otherwise).", rich_help_panel="Scoring"),
    jpeg_quality: Optional[str] = typer.Option(None, help="With --checkpoint, JPEG: qualities clean images are compressed at (e.g. 10,20,30,40).", rich_help_panel="Scoring"),
    device: str = typer.Option("auto", help="auto | cuda | cpu (evaluation and visuals).", rich_help_panel="Speed"),
    tile: Optional[int] = typer.Option(None, help="Tile size (input pixels) for large images, in evaluation and visuals (default: whole images).", rich_help_panel="Speed"),
    resamples: int = typer.Option(10_000, help="Bootstrap / permutation resamples.", rich_help_panel="Statistics"),
    seed: int = typer.Option(0, help="Seed of the resampling.", rich_help_panel="Statistics"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the comparison as JSON (new file).", rich_help_panel="Output"),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="Write a Markdown report (new file).", rich_help_panel="Output"),
    csv_out: Optional[Path] = typer.Option(None, "--csv", help="Write per-image scores and deltas as CSV (new file).", rich_help_panel="Output"),
    latex: Optional[Path] = typer.Option(None, "--latex", help="Write a booktabs LaTeX table (new file).", rich_help_panel="Output"),
    visuals: Optional[Path] = typer.Option(None, "--visuals", help="Folder (new or empty) for comparison strips and Δ bar charts.", rich_help_panel="Output"),
    html: Optional[Path] = typer.Option(None, "--html", help="Write one self-contained HTML report (new file): table, evidence, per-image charts, strips, and training curves when the models come from run folders.", rich_help_panel="Output"),
    top_k: int = typer.Option(3, help="With --visuals or --html: strips for the k images per dataset with the largest |Δ PSNR|.", rich_help_panel="Output"),
    no_gt: bool = typer.Option(False, "--no-gt", help="With --checkpoint: the --data folders hold input images only (real photos, a real-world benchmark's LR): no PSNR exists; every image's outputs side by side in --visuals.", rich_help_panel="Inputs"),
) -> None:
    """Compare a baseline with retrained models image by image: table, Δ, 95 % CI, p, visuals.

    Example: mcir compare --checkpoint DCTLSA/X4.pt --checkpoint runs/mcir/model.safetensors --data Set5/ --html report.html --markdown report.md
    """
    from mcir_cli.workflows.compare import Scoring, run_compare

    _compare_inputs(results or [], checkpoint or [], data or [], {
        "--data": data, "--scale": scale is not None, "--res-scale": res_scale is not None, "--task": task is not None,
        "--y-channel/--rgb": y_channel is not None, "--crop-border": crop_border is not None,
        "--jpeg-quality": jpeg_quality is not None,
    })
    _check_scoring_flags(task, crop_border, None, tile)
    if no_gt:
        return _compare_without_gt(checkpoint or [], data or [], visuals, (scale, res_scale), device, tile, label, {
            "--json": json_out, "--markdown": markdown, "--csv": csv_out, "--latex": latex, "--html": html,
            "--task": task, "--y-channel/--rgb": y_channel is not None, "--crop-border": crop_border is not None,
            "--jpeg-quality": jpeg_quality is not None})
    qualities = _qualities(jpeg_quality, task)
    if resamples < 1:
        raise McirError(f"--resamples must be at least 1 (got {resamples})")
    if top_k < 1:
        raise McirError(f"--top-k must be at least 1 (got {top_k})")
    with progress_bar() as bar:
        bars: dict[str, Any] = {}

        def advance(key: str, done: int, total: int | None) -> None:
            if key not in bars:
                bars[key] = bar.add_task(key, total=total)
            bar.update(bars[key], completed=done, total=total)

        run = run_compare(
            results or [], checkpoints=checkpoint or [], data=data or [],
            scoring=Scoring(scale=scale, res_scale=res_scale, task=task, y_channel=y_channel, crop_border=crop_border,
                            device=device, tile=tile, jpeg_quality=qualities),
            exports={"json": json_out, "markdown": markdown, "csv": csv_out, "latex": latex},
            visuals=visuals, html=html, labels=label, top_k=top_k, n_resamples=resamples, seed=seed,
            progress=lambda lab, name, done, total: advance(f"{lab}: {name}", done, total),
            visuals_progress=lambda done, total: advance("visuals", done, total),
        )
    _show(run, visuals)


def _compare_without_gt(checkpoint: list[Path], data: list[Path], visuals: Path | None,
                        scales: tuple[int | None, float | None], device: str, tile: int | None,
                        label: list[str] | None, scores: dict[str, Any]) -> None:
    """--no-gt: no scores, so no table, exports or statistics; the strips, and why."""
    from mcir_cli.workflows.compare_unpaired import compare_without_gt

    if not checkpoint:
        raise McirError("--no-gt runs the models on the images: give --checkpoint A --checkpoint B --data IMAGES/")
    given = [flag for flag, value in scores.items() if value]
    if given:
        raise McirError(f"{', '.join(given)} {'need' if len(given) > 1 else 'needs'} scores, and --no-gt images have no ground truth to score against")
    with progress_bar() as bar:
        job = bar.add_task("outputs", total=None)
        run = compare_without_gt(checkpoint, data, visuals, scale=scales[0], res_scale=scales[1], device=device,
                                 tile=tile, labels=label,
                                 progress=lambda done, total: bar.update(job, completed=done, total=total))
    console.print(f"{run.note}: no table, no Δ and no p-value; the models' outputs are shown side by side.",
                  highlight=False)
    shown = ", ".join(f"{name} ({n} image{'s' * (n != 1)})" for name, n in run.images.items())
    console.print(f"visuals: {len(run.strips)} strips (LQ | {' | '.join(run.labels)}) of {shown} in {visuals}",
                  highlight=False)
