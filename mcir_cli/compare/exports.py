"""A `Comparison` as files: strict JSON, a Markdown report, per-image CSV, a LaTeX table.

The `to_*` functions are pure (a string out); `check_export_paths` refuses targets before
any work (mcir never overwrites a file) and `write_exports` writes them atomically. The
number formats here (`fmt_*`, `score_cells`) are the ones every table uses, the CLI's
Rich table included, so that a printed table and an exported one always agree.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mcir_cli._helpers.fsutil import atomic_write_text, writable_target
from mcir_cli.compare.results import AVERAGE, METRICS, Comparison, conventions_text, render_evidence
from mcir_cli.compare.stats import score_delta
from mcir_cli.errors import McirError
from mcir_cli.models.paper import MARK, average_row, by_preset, cell, paper_notes, row_labels

JSON_FORMAT = "mcir.compare/1"
_MD_BOLD = "**{}**"  # how the text exports mark the best of a column
_TEXTBF = "\\textbf{{{}}}"


# --------------------------------------------------------------------------- numbers


def fmt_psnr(x: float) -> str:
    return "inf" if math.isinf(x) and x > 0 else ("n/a" if math.isnan(x) else f"{x:.2f}")


def fmt_ssim(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4f}"


def fmt_dpsnr(x: float) -> str:
    return "n/a" if math.isnan(x) else (f"{x:+.2f}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf"))


def fmt_dssim(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.4f}"


def score_cells(comp: Comparison, label: str, column: str) -> tuple[tuple[str, bool], tuple[str, bool]]:
    """One table cell of `label`: (PSNR text, best?), (SSIM text, best?)."""
    s = comp.scores[label][column]
    return ((fmt_psnr(s.psnr), comp.is_best(column, "psnr", s.psnr)),
            (fmt_ssim(s.ssim), comp.is_best(column, "ssim", s.ssim)))


def _marked(text: str, best: bool, template: str) -> str:
    """`text` put into `template` (e.g. "**{}**") when it is the best of its column."""
    return template.format(text) if best else text


def _score_rows(comp: Comparison, bold: str, sep: str,
                psnr_text: Callable[[str], str] = str) -> list[tuple[str, list[str]]]:
    """(label, cells) per model for the text exports: "PSNR<sep>SSIM" per column, the
    best of a column put into the `bold` template, PSNR passed through `psnr_text`."""
    rows = []
    for lab in comp.models:
        cells = []
        for col in comp.columns:
            (p, p_best), (q, q_best) = score_cells(comp, lab, col)
            cells.append(f"{_marked(psnr_text(p), p_best, bold)}{sep}{_marked(q, q_best, bold)}")
        rows.append((lab, cells))
    return rows


def delta_cells(comp: Comparison, label: str, column: str) -> tuple[str, str]:
    """One Δ cell of `label` (vs the baseline): (Δ PSNR text, Δ SSIM text)."""
    d = comp.deltas[label][column]
    return fmt_dpsnr(d.psnr), fmt_dssim(d.ssim)


# --------------------------------------------------------------------------- JSON


def _jsonable(x: Any) -> Any:
    """Strict JSON: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def to_dict(comparison: Comparison) -> dict:
    """Everything in a comparison as JSON-ready data (format `JSON_FORMAT`)."""
    comp = comparison
    return _jsonable({
        "format": JSON_FORMAT,
        "conventions": comp.conventions,
        "conventions_text": conventions_text(comp.conventions),
        "baseline": comp.baseline,
        "models": [{**info, "label": lab} for lab, info in zip(comp.models, comp.model_info)],
        "datasets": comp.datasets,
        "table": {lab: {col: asdict(s) for col, s in row.items()} for lab, row in comp.scores.items()},
        "deltas": {lab: {col: asdict(s) for col, s in row.items()} for lab, row in comp.deltas.items()},
        "stats": [s.to_dict() for s in comp.stats],
        "evidence": render_evidence(comp),
        "dropped": comp.dropped.to_dict(),
        "dropped_messages": comp.dropped.messages(),
        "images": {ds: [{"name": name,
                         **{f"{m}": {lab: comp.image_scores[ds][lab][m][i] for lab in comp.models}
                            for m in METRICS}}
                        for i, name in enumerate(names)]
                   for ds, names in comp.images.items()},
        "bootstrap": {"n_resamples": comp.n_resamples, "seed": comp.seed, "ci": 0.95},
        "paper": comp.paper,  # printed figures, kept apart from every measured field above
    })


def to_json(comparison: Comparison) -> str:
    """Strict JSON (non-finite numbers written as the strings "inf"/"-inf"/"nan")."""
    return json.dumps(to_dict(comparison), indent=2, allow_nan=False) + "\n"


# --------------------------------------------------------------------------- paper rows


def paper_table_rows(rows: list[dict], columns: list[str]) -> list[tuple[str, list[str]]]:
    """(label, cells) of the paper's rows (baseline, + SPN, Δ per preset) in a table whose
    columns are datasets (and the average): the printed figures, "–" where the paper has
    none; its "Avg." under the average where the datasets are its test sets."""
    out = []
    datasets = [c for c in columns if c != AVERAGE]
    for preset, by_ds in by_preset(rows).items():
        by_col = {**by_ds, AVERAGE: average_row(preset, by_ds, datasets)}
        for label, which in zip(row_labels(preset, by_ds), ("baseline", "spn", "delta")):
            out.append((label, [cell(by_col.get(col), which) for col in columns]))
    return out


def _paper_csv_columns(comp: Comparison, dataset: str) -> list[str]:
    """The paper's figures for a dataset's CSV rows (empty where it has none)."""
    row = next((r for r in comp.paper if r["dataset"] == dataset), None)
    if row is None:
        return [""] * 9
    figures = (str(row[k][m]) for k in ("baseline", "spn", "delta") for m in ("psnr", "ssim"))
    return [row["table"], row["preset"], *figures, "; ".join(row["flags"])]


# --------------------------------------------------------------------------- Markdown


def md_escape(text: str) -> str:
    """Text safe inside a Markdown table cell or list item."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def to_markdown(comparison: Comparison) -> str:
    """A Markdown report: the table (best in bold), Δ rows, the evidence sentences and
    what was dropped."""
    comp = comparison
    lines = ["## PSNR/SSIM", "", f"{conventions_text(comp.conventions)}; baseline: "
             f"{md_escape(comp.baseline)}.", ""]
    lines.append("| Model | " + " | ".join(md_escape(c) for c in comp.columns) + " |")
    lines.append("|---|" + "---:|" * len(comp.columns))
    for lab, cells in _score_rows(comp, _MD_BOLD, " / "):
        lines.append(f"| {md_escape(lab)} | " + " | ".join(cells) + " |")
    for lab in comp.models[1:]:
        cells = [" / ".join(delta_cells(comp, lab, c)) for c in comp.columns]
        lines.append(f"| {md_escape(comp.delta_label(lab))} | " + " | ".join(cells) + " |")
    lines += [f"| *{md_escape(label)}* | " + " | ".join(md_escape(c) for c in cells) + " |"
              for label, cells in paper_table_rows(comp.paper, comp.columns)]
    if comp.paper:
        lines += ["", "### The paper's figures", ""] + [f"- {md_escape(n)}" for n in paper_notes(comp.paper)]
    lines += ["", f"### Evidence (paired over images; 95 % bootstrap CI, {comp.n_resamples} "
                  f"resamples, seed {comp.seed}; sign-flip permutation p)", ""]
    lines += [f"- {md_escape(s)}" for s in render_evidence(comp)]
    if comp.dropped:
        lines += ["", "### Left out", ""]
        lines += [f"- {md_escape(s)}" for s in comp.dropped.messages()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CSV


def _csv_num(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


def to_csv(comparison: Comparison) -> str:
    """One row per (dataset, image): psnr_<label> and ssim_<label> for every model, then
    delta_psnr_<label> and delta_ssim_<label> (label - baseline) for every later model,
    and a column `conventions` saying how every number was measured; where the paper
    reports a dataset, paper_* columns repeat its printed figures (not measurements)."""
    comp = comparison
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["dataset", "image"]
    header += [f"psnr_{lab}" for lab in comp.models] + [f"ssim_{lab}" for lab in comp.models]
    for lab in comp.models[1:]:
        header += [f"delta_psnr_{lab}", f"delta_ssim_{lab}"]
    paper_header = ["paper_table", "paper_preset", "paper_baseline_psnr", "paper_baseline_ssim", "paper_spn_psnr",
                    "paper_spn_ssim", "paper_delta_psnr", "paper_delta_ssim", "paper_flags"] if comp.paper else []
    w.writerow(header + ["conventions"] + paper_header)
    conv = conventions_text(comp.conventions)
    for ds in comp.datasets:
        sc = comp.image_scores[ds]
        for i, name in enumerate(comp.images[ds]):
            row = [ds, name]
            row += [_csv_num(sc[lab]["psnr"][i]) for lab in comp.models]
            row += [_csv_num(sc[lab]["ssim"][i]) for lab in comp.models]
            for lab in comp.models[1:]:
                row += [_csv_num(score_delta(sc[comp.baseline]["psnr"][i], sc[lab]["psnr"][i])),
                        _csv_num(score_delta(sc[comp.baseline]["ssim"][i], sc[lab]["ssim"][i]))]
            w.writerow(row + [conv] + (_paper_csv_columns(comp, ds) if comp.paper else []))
    return buf.getvalue()


# --------------------------------------------------------------------------- LaTeX


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "Δ": r"$\Delta$", "<": r"\textless{}", ">": r"\textgreater{}", "†": r"\textdagger{}", "–": "--",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex_caption_of(comp: Comparison) -> str:
    """The caption: how every number was measured, what bold and Δ mean."""
    conv = comp.conventions
    channel = "the Y channel (BT.601)" if conv.get("y_channel") else "RGB"
    border = int(conv.get("crop_border", 0) or 0)
    crop = f"{border} border pixels cropped" if border else "no border cropped"
    quant = conv.get("quantize")
    quant_txt = f"images quantised to {quant} (BasicSR conventions)" if quant else "no quantisation"
    caption = (f"PSNR (dB)/SSIM on {channel}, {crop}, {quant_txt}. Best in bold. "
               f"$\\Delta$: difference to {comp.baseline}. Average: mean of the per-dataset means.")
    if comp.paper:
        caption += (" Paper rows (italic): figures printed in the MCIR paper (AAAI 2024), not measured here; "
                    f"{MARK}: the paper's figure is on the full test set or differs in setting.")
    # escape everything except the math put in on purpose
    marker = "\x00DELTA\x00"
    return latex_escape(caption.replace("$\\Delta$", marker)).replace(marker, "$\\Delta$")


def _latex_num(s: str) -> str:
    return {"inf": "$\\infty$", "+inf": "$+\\infty$", "-inf": "$-\\infty$"}.get(s, s)


def to_latex(comparison: Comparison, label: str = "tab:mcir-compare") -> str:
    """A booktabs table in the layout of the paper's Table 1: a row per model, PSNR/SSIM
    per dataset and the average, best in \\textbf, Δ rows, a caption naming the
    conventions. Needs \\usepackage{booktabs}."""
    comp = comparison
    lines = ["% requires \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
             f"\\caption{{{_latex_caption_of(comp)}}}", f"\\label{{{label}}}",
             "\\begin{tabular}{l" + "c" * len(comp.columns) + "}", "\\toprule",
             "Model & " + " & ".join(latex_escape(c) for c in comp.columns) + " \\\\", "\\midrule"]
    for lab, cells in _score_rows(comp, _TEXTBF, "/", _latex_num):
        lines.append(f"{latex_escape(lab)} & " + " & ".join(cells) + " \\\\")
    lines.append("\\midrule")
    for lab in comp.models[1:]:
        name = "$\\Delta$" if len(comp.models) == 2 else f"$\\Delta$ {latex_escape(lab)}"
        cells = []
        for col in comp.columns:
            dp, dq = delta_cells(comp, lab, col)
            cells.append(f"{_latex_num(dp)}/{dq}")
        lines.append(f"{name} & " + " & ".join(cells) + " \\\\")
    paper = paper_table_rows(comp.paper, comp.columns)
    if paper:
        lines.append("\\midrule")
    lines += [f"\\textit{{{latex_escape(label)}}} & " + " & ".join(latex_escape(c) for c in cells) + " \\\\"
              for label, cells in paper]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- files

EXPORTS = {"json": to_json, "markdown": to_markdown, "csv": to_csv, "latex": to_latex}
REPORTS = ("html",)  # checked here with the exports, written by `report.py` (it needs the pictures)


def check_export_paths(paths: dict[str, str | Path | None]) -> dict[str, Path]:
    """The export targets given ({"json": path or None, ...}), refused with a one-line
    McirError when one exists already (mcir never overwrites a file) or two coincide."""
    out = {kind: Path(p) for kind, p in paths.items() if p is not None}
    for kind, path in out.items():
        if kind not in EXPORTS and kind not in REPORTS:
            raise ValueError(f"unknown export {kind!r}")
        if path.exists():
            raise McirError(f"--{kind} file exists; choose a new name (mcir never overwrites "
                            "results)", path)
        writable_target(path, f"--{kind} file")
    seen: dict[Path, str] = {}
    for kind, path in out.items():
        key = path.resolve()
        if key in seen:
            raise McirError(f"--{seen[key]} and --{kind} name the same file", path)
        seen[key] = kind
    return out


def write_exports(comparison: Comparison, paths: dict[str, Path]) -> list[Path]:
    """Write each requested export atomically (after `check_export_paths`)."""
    return [atomic_write_text(path, EXPORTS[kind](comparison)) for kind, path in paths.items() if kind in EXPORTS]
