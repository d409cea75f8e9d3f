"""`mcir plot`: training curves of run folders, from their log.jsonl.

A run folder (`mcir retrain --output RUN`) logs one JSON object a line to `RUN/log.jsonl`:
step records (step, l_rec, l_neg, ratio, lam, lr, grad_norm, it_s, neg_psnr) and events
("start", "val", "collapse", "negative_update", ..., "end"); `RUN/config.json` holds the
run's `ratio_band`. Reading them is here; drawing is `curves.curves_figure`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcir_cli._helpers.fsutil import writable_target
from mcir_cli.errors import McirError
from mcir_cli.render.charts import chart_format, save_figure
from mcir_cli.render.curves import RunCurves, curves_figure

LOG_FILE = "log.jsonl"


def _log_path(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise McirError("no such run folder", run_dir)
    if not run_dir.is_dir():
        raise McirError("is a file, expected a run folder (the --output of mcir retrain)", run_dir)
    path = run_dir / LOG_FILE
    if not path.is_file():
        raise McirError(f"no {LOG_FILE}: not a run folder of mcir retrain, or a run that never started", path)
    return path


def load_run_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of `run_dir/log.jsonl`, in order. A one-line McirError naming the
    folder or file for a missing folder, a missing log or a line that is not a JSON
    object; only an unfinished last line (no newline: the run is writing it, or was killed
    while it did) is left out."""
    path = _log_path(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise McirError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", path) from None
    lines = text.split("\n")
    unfinished = lines.pop()  # "" when the file ends with a newline
    records = []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            records.append(_record(line, number, path))
    if unfinished.strip():
        try:
            records.append(_record(unfinished, len(lines) + 1, path))
        except McirError:
            pass  # a line still being written
    return records


def _record(line: str, number: int, path: Path) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise McirError(f"line {number} is not JSON ({exc.msg}, column {exc.colno})", path) from None
    if not isinstance(record, dict):
        raise McirError(f"line {number} is not a JSON object", path)
    return record


def _ratio_band(run_dir: Path) -> tuple[float, float] | None:
    """config.json's `ratio_band`, or None when the file or key is missing or odd."""
    try:
        band = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["config"]["ratio_band"]
        lo, hi = (float(v) for v in band)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (lo, hi) if 0 <= lo < hi else None


def run_labels(runs: Sequence[str | Path]) -> list[str]:
    """Labels from folder names: the shortest path endings that tell the runs apart
    (runs/plain, runs/mcir -> plain, mcir; a/mcir, b/mcir -> a/mcir, b/mcir)."""
    parts = [Path(os.path.abspath(p)).parts for p in runs]
    longest = max((len(p) for p in parts), default=0)
    for k in range(1, longest + 1):
        tails = ["/".join(p[-k:]) for p in parts]
        if len(set(tails)) == len(tails):
            return tails
    return [str(p) for p in runs]


def load_run(run_dir: str | Path, label: str | None = None) -> RunCurves:
    """One run folder, ready to draw: its log records, its ratio band, its label
    (default: the folder's name)."""
    run_dir = Path(run_dir)
    records = load_run_log(run_dir)
    return RunCurves(label or Path(os.path.abspath(run_dir)).name, records, _ratio_band(run_dir))


def plot_runs(runs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None) -> Path:
    """Draw the training curves of the run folders `runs` on one figure
    (`curves.curves_figure`) and write it to `out` (.png, .svg or .pdf). `labels`: one per
    run (default: the folders' distinct names). The output is checked first (a known
    format, not an existing file: mcir never overwrites one, a folder it can be written
    in), then every run is read; each problem is one McirError line."""
    out = Path(out)
    runs = [Path(r) for r in runs]
    if not runs:
        raise McirError("nothing to plot: give at least one run folder")
    chart_format(out)
    if out.exists():
        raise McirError("file exists; choose a new name (mcir never overwrites results)", out)
    writable_target(out, "plot")
    if labels:
        labels = [str(lab) for lab in labels]
        if len(labels) != len(runs):
            raise McirError(f"--label was given {len(labels)} time(s) for {len(runs)} run(s): give one per run, "
                            "in the same order")
    else:
        labels = run_labels(runs)
    seen: dict[Path, Path] = {}
    for run in runs:
        key = run.resolve()
        if key in seen:
            raise McirError(f"the same run folder is given twice ({seen[key]})", run)
        seen[key] = run
    if len(set(labels)) != len(labels):
        dup = next(lab for lab in labels if labels.count(lab) > 1)
        raise McirError(f"two runs have the label {dup!r}: labels tell the runs apart in the legend")
    loaded = [load_run(run, label) for run, label in zip(runs, labels)]
    for run, item in zip(runs, loaded):
        if not any("event" not in r or r.get("event") == "val" for r in item.records):
            raise McirError("no training step or validation logged yet: nothing to plot", run / LOG_FILE)
    return save_figure(curves_figure(loaded), out)
