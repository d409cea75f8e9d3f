"""One self-contained HTML report: the paper-style table with its conventions, the
evidence sentences and paired statistics, per-image Δ charts, the comparison strips and
the training curves, every image inline (no network, no external file), readable on a
phone.

Each section is a function that returns HTML text; `report_html` puts them into a page
and `write_report` writes it atomically. The numbers in the tables come from the same
formatters as every other export (`exports.fmt_*`), and each comparison's full JSON
(`exports.to_dict`) is embedded beside its table, so a reader (or a test) can check one
against the other.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mcir_cli import __version__
from mcir_cli._helpers.fsutil import atomic_write_text
from mcir_cli.compare.exports import delta_cells, fmt_dpsnr, fmt_dssim, fmt_psnr, paper_table_rows, score_cells, to_dict
from mcir_cli.compare.results import Comparison, conventions_text, render_evidence
from mcir_cli.compare.stats import PairedStats, fmt_p
from mcir_cli.compare.study_results import COLLAPSE_RULE, METHOD, NO_PAIRS, fmt_signed, study_number
from mcir_cli.models.paper import paper_notes
from mcir_cli.render.charts import delta_figure, figure_bytes
from mcir_cli.render.curves import arm_curves_figure, curves_figure
from mcir_cli.render.plot import load_run

_CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d9d9de; --gain: #1e7f3c; --loss: #b3261e; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; padding: 12px; max-width: 1100px; }
h1 { font-size: 1.5em; margin: .2em 0; } h2 { font-size: 1.2em; margin-top: 1.6em; }
h3 { font-size: 1.05em; }
.muted { color: var(--muted); } .note { border-left: 4px solid #e8a33d; padding: 4px 10px; background: #fff8ec; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; margin: 8px 0; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid var(--fg); }
th.sortable { cursor: pointer; } th.sortable::after { content: " \\2195"; color: var(--muted); }
tr.paper td, tr.paper th { color: var(--muted); font-style: italic; }
.best { font-weight: 700; } .gain { color: var(--gain); } .loss { color: var(--loss); }
figure { margin: 12px 0; } figure img { max-width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: .9em; }
ul.evidence li { margin: 4px 0; }
"""

# Click a column header of a per-image table to sort by it (numbers as numbers).
_JS = """
document.querySelectorAll("table.sortable-table").forEach(function (table) {
  table.querySelectorAll("th.sortable").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var dir = th.dataset.dir === "desc" ? 1 : -1; th.dataset.dir = dir === 1 ? "asc" : "desc";
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
        var nx = parseFloat(x), ny = parseFloat(y);
        if (!isNaN(nx) && !isNaN(ny)) { return dir * (nx - ny); }
        return dir * String(a.cells[col].textContent).localeCompare(b.cells[col].textContent);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_figure(data: bytes, mime: str, caption: str, alt: str) -> str:
    return (f'<figure><img src="{data_uri(data, mime)}" alt="{esc(alt)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


# a chart is never drawn below this share of its natural size (8 pt labels stay >= 8.5 CSS
# px): on a phone it scrolls sideways in its own box instead of shrinking to unreadable text
CHART_MIN_SCALE = 0.8


def chart_figure(fig: Any, caption: str, alt: str) -> str:
    """A matplotlib figure inline as SVG, at least CHART_MIN_SCALE of its natural width."""
    min_px = round(fig.get_figwidth() * 96 * CHART_MIN_SCALE)  # CSS px are 1/96 in
    return (f'<figure class="chart"><div class="scroll"><img style="min-width: {min_px}px" '
            f'src="{data_uri(figure_bytes(fig, "svg"), "image/svg+xml")}" alt="{esc(alt)}"></div>'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _cell(text: str, *, cls: str = "", **data: Any) -> str:
    attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in data.items())
    cls_attr = f' class="{cls}"' if cls else ""
    return f"<td{cls_attr}{attrs}>{esc(text)}</td>"


def _sign_class(x: float) -> str:
    return "gain" if x > 0 else ("loss" if x < 0 else "")


# --------------------------------------------------------------------------- comparison


def table_html(comp: Comparison, section: str) -> str:
    """The paper-style table: a row per model (PSNR / SSIM per dataset and the average;
    the best of a column in bold) and a Δ row per later model. Every number cell names
    what it holds in data-* attributes (section, model, column, metric)."""
    rows = []
    for lab in comp.models:
        cells = []
        for col in comp.columns:
            for metric, (text, best) in zip(("psnr", "ssim"), score_cells(comp, lab, col)):
                cells.append(_cell(text, cls="best" if best else "", section=section, kind="score",
                                   model=lab, column=col, metric=metric))
        rows.append(f"<tr><th>{esc(lab)}</th>{''.join(cells)}</tr>")
    for lab in comp.models[1:]:
        cells = []
        for col in comp.columns:
            d = comp.deltas[lab][col]
            for metric, text, value in zip(("psnr", "ssim"), delta_cells(comp, lab, col), (d.psnr, d.ssim)):
                cells.append(_cell(text, cls=_sign_class(value), section=section, kind="delta",
                                   model=lab, column=col, metric=metric))
        rows.append(f"<tr><th>{esc(comp.delta_label(lab))}</th>{''.join(cells)}</tr>")
    rows += paper_rows_html(comp.paper, comp.columns, section)
    sub = "".join("<th>PSNR (dB)</th><th>SSIM</th>" for _ in comp.columns)
    return ('<div class="scroll"><table class="scores"><thead><tr><th rowspan="2">model</th>'
            + "".join(f'<th colspan="2">{esc(c)}</th>' for c in comp.columns)
            + f"</tr><tr>{sub}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def paper_rows_html(rows: list[dict], columns: list[str], section: str) -> list[str]:
    """The paper's rows (baseline, + SPN, Δ per preset) in a table whose columns are
    datasets, in italics and marked data-kind="paper-*": printed figures, not measured."""
    out = []
    for i, (label, cells) in enumerate(paper_table_rows(rows, columns)):
        kind = ("paper-baseline", "paper-spn", "paper-delta")[i % 3]
        tds = "".join(_cell(part, section=section, kind=kind, column=col, metric=metric)
                      for col, text in zip(columns, cells)
                      for metric, part in zip(("psnr", "ssim"), text.split("/") if "/" in text else (text, text)))
        out.append(f'<tr class="paper"><th><i>{esc(label)}</i></th>{tds}</tr>')
    return out


def paper_notes_html(rows: list[dict]) -> str:
    """The footnotes of the paper rows: what each row is, its flags, the paper's own
    contradictions."""
    if not rows:
        return ""
    return '<ul class="paper-notes muted">' + "".join(f"<li>{esc(n)}</li>" for n in paper_notes(rows)) + "</ul>"


def stats_html(comp: Comparison, section: str) -> str:
    """Paired statistics per later model and dataset (PSNR and SSIM)."""
    rows = "".join(_stat_row(s, section) for s in comp.stats)
    return ('<div class="scroll"><table class="stats"><thead><tr><th>model</th><th>dataset</th>'
            "<th>metric</th><th>images</th><th>mean Δ</th><th>95 % CI</th><th>better on</th><th>p</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></div>")


def _stat_row(s: PairedStats, section: str) -> str:
    fmt = fmt_dpsnr if s.metric == "psnr" else fmt_dssim

    def cell(text: str, name: str, cls: str = "") -> str:
        return _cell(text, cls=cls, section=section, kind="stat", model=s.new_label, column=s.dataset,
                     metric=s.metric, field=name)

    return (f"<tr><td>{esc(s.new_label)}</td><td>{esc(s.dataset)}</td><td>{esc(s.metric.upper())}</td>"
            + cell(str(s.n), "n") + cell(fmt(s.mean_delta), "mean_delta", _sign_class(s.mean_delta))
            + cell(f"[{fmt(s.ci_low)}, {fmt(s.ci_high)}]", "ci") + cell(f"{s.wins}/{s.n}", "wins")
            + cell(fmt_p(s.p_value), "p_value") + "</tr>")


def per_image_html(comp: Comparison, dataset: str, section: str) -> str:
    """Every image of a dataset: each model's PSNR and each later model's Δ vs the
    baseline, sortable."""
    later = comp.models[1:]
    deltas = {m: comp.image_deltas(dataset, m, "psnr") for m in later}
    head = "".join(f'<th class="sortable">{esc(m)}</th>' for m in comp.models)
    head += "".join(f'<th class="sortable">{esc(comp.delta_label(m))}</th>' for m in later)
    rows = []
    for i, name in enumerate(comp.images[dataset]):
        vals = [comp.image_scores[dataset][m]["psnr"][i] for m in comp.models]
        cells = [f'<td data-value="{esc(name)}">{esc(name)}</td>']
        cells += [_cell(fmt_psnr(v), value=_num(v), section=section, kind="image", model=m, column=dataset,
                        metric="psnr", image=name) for m, v in zip(comp.models, vals)]
        cells += [_cell(fmt_dpsnr(d), cls=_sign_class(d), value=_num(d), section=section, kind="image-delta",
                        model=m, column=dataset, metric="psnr", image=name)
                  for m in later for d in [deltas[m][name]]]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (f"<details><summary>{esc(dataset)}: PSNR (dB) of every image ({len(rows)}) and Δ vs "
            f"{esc(comp.baseline)}, click a column to sort</summary>"
            f'<div class="scroll"><table class="sortable-table"><thead><tr><th class="sortable">image</th>{head}'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table></div></details>')


def _num(x: float) -> str:
    return "nan" if math.isnan(x) else repr(float(x))


def delta_charts_html(comp: Comparison) -> str:
    """One Δ PSNR chart per later model and dataset: image names, the mean and its CI."""
    parts = []
    for lab in comp.models[1:]:
        for ds in comp.datasets:
            deltas = comp.image_deltas(ds, lab, "psnr")
            s = comp.stat(ds, lab, "psnr")
            fig = delta_figure(list(deltas), list(deltas.values()), metric="PSNR", unit="dB",
                               title=f"{ds}: {lab} − {comp.baseline}, per image",
                               mean=s.mean_delta, ci=(s.ci_low, s.ci_high))
            parts.append(chart_figure(fig, f"{ds}: Δ PSNR of {lab} vs {comp.baseline} per image; the line is the "
                                      "mean, the band its 95 % bootstrap CI",
                                      f"per-image PSNR change on {ds}"))
    return "".join(parts)


def comparison_section(comp: Comparison, heading: str, section: str, *, charts: bool = True) -> str:
    """A comparison: conventions, table, evidence, statistics, Δ charts, per-image
    tables, what was left out, and the comparison's JSON (`mcir.compare/1`)."""
    out = [f'<section id="{esc(section)}"><h2>{esc(heading)}</h2>',
           f'<p class="conventions">{esc(conventions_text(comp.conventions))}; baseline: '
           f"<b>{esc(comp.baseline)}</b>; the average column is the mean of the dataset means (the paper's).</p>",
           table_html(comp, section), paper_notes_html(comp.paper),
           f"<h3>Evidence</h3><p class=\"muted\">Paired over images: mean Δ, 95 % paired-bootstrap CI "
           f"({comp.n_resamples} resamples, seed {comp.seed}), sign-flip permutation p.</p>",
           '<ul class="evidence">' + "".join(f"<li>{esc(s)}</li>" for s in render_evidence(comp)) + "</ul>",
           stats_html(comp, section)]
    if comp.dropped:
        out.append("<h3>Left out</h3><ul>" + "".join(f"<li>{esc(m)}</li>" for m in comp.dropped.messages())
                   + "</ul>")
    if charts:
        out.append("<h3>Per image</h3>" + delta_charts_html(comp))
    out += [per_image_html(comp, ds, section) for ds in comp.datasets]
    data = json.dumps(to_dict(comp), allow_nan=False).replace("</", "<\\/")
    out.append(f'<script type="application/json" class="mcir-data" data-section="{esc(section)}">{data}</script>')
    out.append("</section>")
    return "".join(out)


# --------------------------------------------------------------------------- pictures, runs


def strips_section(strips: Sequence[Path], root: Path | None = None, heading: str = "Where the models differ") -> str:
    """The comparison strips (LQ | baseline | retrained | GT | divergence, with the
    zoomed crops), inline, captioned by their path under `root`."""
    if not strips:
        return ""
    figs = []
    for p in strips:
        p = Path(p)
        name = p.relative_to(root).as_posix() if root is not None and p.is_relative_to(root) else p.name
        figs.append(image_figure(p.read_bytes(), "image/png", name, f"comparison strip {name}"))
    return (f'<section id="strips"><h2>{esc(heading)}</h2><p class="muted">Per image: LQ (upscaled) | '
            "baseline | retrained | GT | |retrained − baseline| (one heat scale per set), with the crop where "
            "they differ most zoomed, for the images with the largest |Δ PSNR|.</p>"
            + "".join(figs) + "</section>")


def run_folders(comp: Comparison) -> dict[str, Path]:
    """The run folders (config.json + log.jsonl beside the weights) the models came from."""
    out = {}
    for label, info in zip(comp.models, comp.model_info):
        ckpt = info.get("checkpoint")
        folder = Path(ckpt).parent if ckpt else None
        if folder is not None and (folder / "log.jsonl").is_file() and (folder / "config.json").is_file():
            out[label] = folder
    return out


def curves_section(runs: dict[str, Path]) -> str:
    """Training curves of run folders (l_rec, l_neg, contrast ratio, λ, lr, validation
    PSNR over steps), one colour per run."""
    if not runs:
        return ""
    fig = curves_figure([load_run(path, label) for label, path in runs.items()])
    names = ", ".join(f"{label} ({Path(p).name})" for label, p in runs.items())
    return ('<section id="curves"><h2>How the runs trained</h2>'
            + chart_figure(fig, f"from log.jsonl of {names}", "training curves") + "</section>")


def notes_html(notes: Sequence[str]) -> str:
    return "".join(f'<p class="note">{esc(n)}</p>' for n in notes)


def report_html(title: str, sections: Sequence[str], *, subtitle: str = "", notes: Sequence[str] = ()) -> str:
    """The page around `sections` (each the HTML of one `*_section` function)."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1>"
            + (f'<p class="muted">{esc(subtitle)}</p>' if subtitle else "")
            + f'<p class="muted">mcir {esc(__version__)}; metrics as BasicSR computes them.</p></header>'
            + notes_html(notes) + "".join(s for s in sections if s)
            + f"<script>{_JS}</script></body></html>\n")


def comparison_report(comparison: Comparison, *, strips: Sequence[Path] = (), strips_root: Path | None = None,
                      runs: dict[str, Path] | None = None, title: str = "mcir compare",
                      notes: Sequence[str] = (), extra: Sequence[tuple[str, Comparison]] = ()) -> str:
    """The report of `mcir compare` (and the demo): the comparison, `extra` comparisons
    ((heading, comparison)), the strips and the runs' curves."""
    sections = [comparison_section(comparison, "PSNR/SSIM", "main")]
    sections += [comparison_section(c, h, f"extra-{i}") for i, (h, c) in enumerate(extra, 1)]
    sections += [strips_section(strips, strips_root), curves_section(runs or {})]
    subtitle = f"{' vs '.join(comparison.models)} on {', '.join(comparison.datasets)}"
    return report_html(title, sections, subtitle=subtitle, notes=notes)


def write_report(path: str | Path, text: str) -> Path:
    """Write the report atomically (the path was checked before any work)."""
    return atomic_write_text(Path(path), text)


# --------------------------------------------------------------------------- study


def study_table_html(summary: dict[str, Any]) -> str:
    """A study's table: each arm's mean ± sd over seeds (the start once)."""
    datasets = summary["datasets"]
    rows = []
    for name, row in summary["table"].items():
        cells = []
        for d in datasets:
            for metric, digits in (("psnr", 2), ("ssim", 4)):
                mean, sd = row[d][metric], row[d].get(f"{metric}_sd", 0.0)
                text = f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd else "")
                cells.append(_cell(text, section="study", kind="study-score", model=name, column=d, metric=metric))
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    rows += paper_rows_html(summary.get("paper", []), datasets, "study")
    return ('<div class="scroll"><table class="scores"><thead><tr><th rowspan="2">model</th>'
            + "".join(f'<th colspan="2">{esc(d)}</th>' for d in datasets) + "</tr><tr>"
            + "<th>PSNR (dB)</th><th>SSIM</th>" * len(datasets)
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def study_deltas_html(summary: dict[str, Any], per_image: dict[str, dict[str, tuple[list[str], list[float]]]]) -> str:
    """Each arm's Δ PSNR vs plain (paired over images and seeds) and, per dataset, the
    chart of each image's seed-mean Δ with the two-way CI."""
    out = []
    for arm, info in summary["deltas"].items():
        rows = []
        for d, s in info["datasets"].items():
            lo, hi = s["ci"]
            rows.append(f"<tr><td>{esc(d)}</td>"
                        + _cell(fmt_signed(s["mean"]), cls=_sign_class(s["mean"]), section="study", kind="study-delta",
                                model=arm, column=d, metric="psnr")
                        + f"<td>[{fmt_signed(lo)}, {fmt_signed(hi)}]</td><td>{s['win_rate']:.0%}</td>"
                        f"<td>{fmt_p(study_number(s['p']))}</td><td>{fmt_signed(s['detectable']).lstrip('+')}</td>"
                        f"<td>{s['seeds_better']}/{s['seeds']}</td><td>{esc(s['verdict'])}</td></tr>")
        if not info["datasets"]:
            out.append(f"<h3>{esc(arm)} <span class=\"muted\">({esc(info['settings'])})</span></h3>"
                       f"<p>{esc(NO_PAIRS)}.</p>")
            continue
        out.append(f"<h3>{esc(arm)} <span class=\"muted\">({esc(info['settings'])})</span></h3>"
                   '<div class="scroll"><table class="stats"><thead><tr><th>dataset</th><th>Δ dB</th>'
                   "<th>95 % CI</th><th>win rate</th><th>p</th><th>detectable</th><th>seeds better</th>"
                   f"<th>verdict</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>")
        for d, (names, deltas) in per_image.get(arm, {}).items():
            s = info["datasets"][d]
            ci = tuple(study_number(x) for x in s["ci"])
            fig = delta_figure(names, deltas, metric="PSNR", unit="dB", title=f"{d}: {arm} − plain, mean over seeds",
                               mean=s["mean"], ci=ci if all(map(math.isfinite, ci)) else None)
            out.append(chart_figure(fig, f"{d}: each image's Δ PSNR of {arm} vs plain, averaged over seeds; the band "
                                    "is the 95 % CI of the mean Δ (t test over seeds, images' own variation "
                                    "included)", f"per-image Δ on {d}"))
    return "".join(out)


def study_units_html(summary: dict[str, Any]) -> str:
    """The units a collapse stopped (or a line saying none did), with the study's rule."""
    hit = {n: u for n, u in summary.get("units", {}).items() if u["collapses"] or u["stopped"]}
    items = "".join(f"<li>{esc(n)}: stopped by a collapse at step {u['steps']}; {esc(u['stopped'] or '')}</li>"
                    for n, u in hit.items())
    return (f'<p class="muted" id="collapses">Collapses ({esc(COLLAPSE_RULE)}): '
            + (f"</p><ul>{items}</ul>" if hit else "none.</p>"))


def study_curves_html(summary: dict[str, Any]) -> str:
    """Validation PSNR over steps, mean ± sd over seeds, one line per arm (--val-every)."""
    curves = summary.get("curves")
    if not curves or not any(c["steps"] for c in curves.values()):
        return ""
    fig = arm_curves_figure(curves, title="mean ± sd over seeds")
    return ("<h2>Validation over training</h2>"
            + chart_figure(fig, "benchmark PSNR during training, each arm's mean over seeds with a ± sd band",
                           "validation curves"))


def study_report(summary: dict[str, Any], per_image: dict[str, dict[str, tuple[list[str], list[float]]]],
                 runs: dict[str, Path]) -> str:
    """`mcir study`'s report.html: table, Δ vs plain with charts, every run's curves."""
    plan = summary["plan"]
    conv = summary["conventions"].get("description", "")
    section = (f'<section id="study"><h2>PSNR/SSIM, mean ± sd over seeds {", ".join(map(str, plan["seeds"]))}</h2>'
               f'<p class="conventions">{esc(conv)}</p><p class="muted">Training: {esc(summary.get("recipe", ""))}'
               f'</p>' + study_table_html(summary)
               + paper_notes_html(summary.get("paper", [])) + study_units_html(summary)
               + f"<h2>Δ PSNR vs plain</h2><p class=\"muted\">{esc(METHOD)}.</p>"
               + study_deltas_html(summary, per_image) + study_curves_html(summary)
               + '<script type="application/json" class="mcir-data" data-section="study">'
               + json.dumps(summary, allow_nan=False).replace("</", "<\\/") + "</script></section>")
    title = f"mcir study: {len(plan['arms'])} arms x {len(plan['seeds'])} seeds x {plan['iters']} steps"
    return report_html(title, [section, curves_section(runs)], subtitle=", ".join(summary["datasets"]))
