"""Rich rendering of a `Comparison`, shared by `mcir compare` and `mcir demo`.

The library hands back plain data and plain sentences; colours, bold and consoles are
the CLI's business and live only here. Numbers are formatted by `exports.py`, so the
printed table and the exported ones always show the same digits.
"""

from __future__ import annotations

import math

from rich.table import Table
from rich.text import Text

from mcir_cli.cli.app import console, err_console
from mcir_cli.compare.exports import fmt_dpsnr, fmt_dssim, paper_table_rows, score_cells
from mcir_cli.compare.results import Comparison, conventions_text
from mcir_cli.models.paper import FULL_SET, paper_notes


def _colour(x: float) -> str:
    """Green for a gain, red for a loss, no colour for none (or n/a)."""
    if math.isnan(x) or x == 0:
        return ""
    return "green" if x > 0 else "red"


def render_table(comparison: Comparison) -> Table:
    """A rich Table: a row per model, a column per dataset ("PSNR/SSIM", best in bold),
    the average, and Δ rows (green > 0, red < 0); the caption states the conventions."""
    comp = comparison
    table = Table(title="PSNR/SSIM", caption=conventions_text(comp.conventions))
    table.add_column("Model", style="bold")
    for col in comp.columns:
        table.add_column(col, justify="right")
    for lab in comp.models:
        cells = [Text(lab)]
        for col in comp.columns:
            (p, p_best), (q, q_best) = score_cells(comp, lab, col)
            t = Text()
            t.append(p, style="bold" if p_best else "")
            t.append("/")
            t.append(q, style="bold" if q_best else "")
            cells.append(t)
        table.add_row(*cells)
    table.add_section()  # a rule between the model rows and the delta rows
    for lab in comp.models[1:]:
        cells = [Text(comp.delta_label(lab))]
        for col in comp.columns:
            d = comp.deltas[lab][col]
            t = Text()
            t.append(fmt_dpsnr(d.psnr), style=_colour(d.psnr))
            t.append("/")
            t.append(fmt_dssim(d.ssim), style=_colour(d.ssim))
            cells.append(t)
        table.add_row(*cells)
    add_paper_rows(table, comp.paper, comp.columns)
    return table


def add_paper_rows(table: Table, rows: list[dict], columns: list[str]) -> None:
    """The paper's rows (baseline, + SPN, Δ per preset) under a table whose columns are
    datasets, in their own section and dimmed: printed figures, not measurements."""
    for i, (label, cells) in enumerate(paper_table_rows(rows, columns)):
        if i % 3 == 0:
            table.add_section()
        table.add_row(Text(label, style="italic"), *(Text(c, style="dim") for c in cells))


def add_paper_rows_by_dataset(table: Table, rows: list[dict]) -> None:
    """The paper's rows under `mcir evaluate`'s table (a row per dataset): baseline →
    + SPN (Δ) in the PSNR and SSIM columns, "full set" where the paper's set is larger."""
    if rows:
        table.add_section()
    for row in rows:
        (bp, bs), (sp, ss) = (row[k]["printed"].split("/") for k in ("baseline", "spn"))
        dp, ds = row["delta"]["printed"].split("/")
        full = any(f.startswith(FULL_SET) for f in row["flags"])
        table.add_row(Text(f"{row['dataset']}: paper {row['table']} ({row['preset']})", style="italic"),
                      Text(f"{bp} → {sp} ({dp})", style="dim"), Text(f"{bs} → {ss} ({ds})", style="dim"),
                      Text("full set" if full else "", style="dim"))


def print_paper_notes(rows: list[dict]) -> None:
    """The footnotes of the paper rows (flags, the paper's own contradictions)."""
    for line in paper_notes(rows):
        console.print(Text(line, style="dim"), highlight=False, soft_wrap=True)


def print_evidence(header: str, lines: list[str]) -> None:
    """A bold-headed block of evidence sentences, one indented line each."""
    console.print(header, highlight=False)
    for line in lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def print_notes(messages: list[str]) -> None:
    """Things left out or skipped, in yellow on stderr (they never change the numbers)."""
    for msg in messages:
        err_console.print(f"[yellow]{msg}[/]", highlight=False)
