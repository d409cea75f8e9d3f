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
from mcir_cli.exports import fmt_dpsnr, fmt_dssim, score_cells
from mcir_cli.results import Comparison, conventions_text


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
    return table


def print_evidence(header: str, lines: list[str]) -> None:
    """A bold-headed block of evidence sentences, one indented line each."""
    console.print(header, highlight=False)
    for line in lines:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def print_notes(messages: list[str]) -> None:
    """Things left out or skipped, in yellow on stderr (they never change the numbers)."""
    for msg in messages:
        err_console.print(f"[yellow]{msg}[/]", highlight=False)
