"""`mcir compare` as one call: results loaded (or checkpoints scored), compared, exported
and drawn, every output checked before any work.

The parts live in their own modules: `results.py` (loading, checks, alignment,
`Comparison`), `stats.py` (the paired statistics), `exports.py` (files),
`evaluate_many.py` (`evaluate_checkpoints`) and `visual_sources.py` (the pictures). This
module only runs them in order and reports what happened; the CLI renders it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcir_cli._helpers.fsutil import refuse_inside_inputs, writable_target
from mcir_cli.compare.exports import check_export_paths, write_exports
from mcir_cli.compare.files import load_result
from mcir_cli.compare.results import Comparison, compare_results
from mcir_cli.errors import McirError
from mcir_cli.evaluate.benchmarks import Scoring
from mcir_cli.evaluate.checkpoints import ModelsProgress, evaluate_checkpoints
from mcir_cli.render.report import comparison_report, run_folders, write_report
from mcir_cli.workflows.visual_sources import (
    StripProgress,
    VisualsUnavailable,
    load_visual_sources,
    write_comparison_visuals,
)


@dataclass
class CompareRun:
    """What `run_compare` did: the comparison, the exports written and the visuals."""

    comparison: Comparison
    written: list[Path]  # export files, in the order asked for
    visuals: dict[str, Any] | None = None  # `write_comparison_visuals`' report, when made
    visuals_error: str | None = None  # why asked-for visuals could not be made
    report: Path | None = None  # the HTML report, when asked for


def check_visuals_folder(folder: Path | None, data: Sequence[str | Path] = ()) -> None:
    """--visuals must be a new or empty folder that can be written, outside the `data`
    folders (checked up front)."""
    if folder is None:
        return
    refuse_inside_inputs(folder, data, "--visuals folder")
    if folder.exists():
        if not folder.is_dir():
            raise McirError("--visuals must be a folder, this is a file", folder)
        if any(folder.iterdir()):
            raise McirError("--visuals folder exists and is not empty; choose a new one", folder)
    writable_target(folder, "--visuals folder")


def _check_label_count(labels: Sequence[str] | None, models: int) -> None:
    """--label names every model, in order, or none (checked before any scoring)."""
    if labels and len(labels) != models:
        raise McirError(f"--label given {len(labels)} time(s) for {models} models; name every model, in order")


def _apply_labels(results: list[dict], labels: Sequence[str] | None) -> None:
    """Name the models (--label, in order); every model or none."""
    if not labels:
        return
    _check_label_count(labels, len(results))
    for res, name in zip(results, labels):
        res["model"]["label"] = name


def run_compare(
    results: Sequence[Path] = (),
    *,
    checkpoints: Sequence[Path] = (),
    data: Sequence[Path] = (),
    scoring: Scoring = Scoring(),
    exports: dict[str, Path | None] | None = None,
    visuals: Path | None = None,
    html: Path | None = None,
    labels: Sequence[str] | None = None,
    top_k: int = 3,
    n_resamples: int = 10_000,
    seed: int = 0,
    progress: ModelsProgress | None = None,
    visuals_progress: StripProgress | None = None,
) -> CompareRun:
    """Compare result JSONs (`results`), or `checkpoints` scored here on `data` with
    identical conventions (`scoring`, whose device and tile also run the models for the
    visuals); the first is the baseline. Writes the `exports`
    ({"json"|"markdown"|"csv"|"latex": path or None}) and, with `visuals`, the strips and
    Δ charts of the `top_k` most changed images per dataset, and with `html` one
    self-contained report (the strips too, made in a temporary folder beside it when
    `visuals` is not given). Outputs are refused before any work; visuals that cannot be
    made are reported in `visuals_error`, after the exports are written."""
    targets = check_export_paths({**(exports or {}), "html": html})
    check_visuals_folder(visuals, data)
    if html is not None and visuals is not None and html.resolve().is_relative_to(visuals.resolve()):
        raise McirError("--html must not be inside the --visuals folder (or be it)", html)
    _check_label_count(labels, len(results) or len(checkpoints))
    loaded: list[Any] = []
    datasets: dict[str, Any] | None = None
    if results:
        result_dicts = [load_result(p) for p in results]
    else:
        result_dicts, loaded, datasets = evaluate_checkpoints(list(checkpoints), list(data), scoring,
                                                              progress=progress)
    _apply_labels(result_dicts, labels)
    comparison = compare_results(result_dicts, n_resamples=n_resamples, seed=seed)
    run = CompareRun(comparison, write_exports(comparison, targets))
    if html is None:
        if visuals is not None:
            _draw(run, result_dicts, list(results), loaded, datasets, visuals, top_k, scoring, visuals_progress)
        return run
    html.parent.mkdir(parents=True, exist_ok=True)  # as every other output's folder is made
    with tempfile.TemporaryDirectory(dir=html.parent, prefix=f".{html.name}.") as scratch:
        folder = visuals if visuals is not None else Path(scratch)
        _draw(run, result_dicts, list(results), loaded, datasets, folder, top_k, scoring, visuals_progress)
        run.report = _write_report(run, html, folder)
    if visuals is None:  # the strips were only for the report
        run.visuals = None
    return run


def _draw(run: CompareRun, result_dicts: list[dict], results: list[Path], loaded: list[Any],
          datasets: dict[str, Any] | None, folder: Path, top_k: int, scoring: Scoring,
          progress: StripProgress | None) -> None:
    """The strips and Δ charts into `folder`; why not, in `run.visuals_error`."""
    try:
        if results:
            loaded, datasets = load_visual_sources(result_dicts, results)
        run.visuals = write_comparison_visuals(
            run.comparison, loaded, datasets or {}, folder, top_k, device=scoring.device, tile=scoring.tile,
            noise=result_dicts[0].get("noise"), progress=progress,
        )
    except VisualsUnavailable as exc:
        run.visuals_error = str(exc)


def _write_report(run: CompareRun, html: Path, folder: Path) -> Path:
    notes = [f"no comparison strips: {run.visuals_error}"] if run.visuals_error else []
    strips = run.visuals["strips"] if run.visuals else []
    text = comparison_report(run.comparison, strips=strips, strips_root=folder,
                             runs=run_folders(run.comparison), notes=notes)
    return write_report(html, text)
