"""Charts drawn with matplotlib: per-image Δ bars of a comparison and training curves of
run folders (`curves.py`). Drawing only (numbers in, a `Figure` out); reading run folders is
`plot.py`'s job, comparisons are `results.py`'s.

Figures are made with `matplotlib.figure.Figure` and rendered by the Agg canvas, never
through pyplot: nothing global holds them (no figure manager, no backend switch in the
caller's process), so a figure is freed when it is dropped and there is nothing to close.
Every figure is drawn under one fixed style (matplotlib's defaults plus `_STYLE`,
whatever the user's matplotlibrc says) at `DPI` dots per inch, and saved without dates:
the same figure gives the same bytes in PNG, SVG and PDF.

Text mcir did not write (image names, run labels, titles) is shown as it is: a `$` is
escaped, so a name never turns into mathtext.
"""

from __future__ import annotations

import io
import math
import textwrap
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from mcir_cli._helpers.fsutil import atomic_write_bytes
from mcir_cli.errors import McirError

DPI = 100  # a 7.2 x 3.6 in Δ chart is 720 x 360 pixels
GAIN = "#2ea043"  # green: retrained better than the baseline
LOSS = "#cf222e"  # red: worse
NEUTRAL = "#8c959f"  # no change
MEAN = "#1f4e99"  # the mean Δ and its CI
BAND = "#6e7781"  # the contrast-ratio band

# delta chart geometry (inches): a fixed width, the height grows with the number of images
DELTA_WIDTH = 7.2
DELTA_MIN_HEIGHT = 3.6
DELTA_MAX_HEIGHT = 11.0
DELTA_FRAME = 1.6  # title, legend, axis label and note around the bars
DELTA_ROW = 0.155  # per named image
MAX_NAMED = 60  # up to this many images every bar is named; beyond, only the extremes
EXTREMES_NAMED = 10  # ... the 10 highest and the 10 lowest Δ
MIN_LABEL_PT = 6.0  # smallest tick-label font; rows are skipped rather than overlapped
NAME_CHARS = 32  # longer image names are shortened with "…"

FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
# no dates in the files (PNG carries none): one figure, one set of bytes
_METADATA: dict[str, dict[str, Any]] = {"png": {}, "svg": {"Date": None}, "pdf": {"CreationDate": None, "ModDate": None}}

_STYLE = {
    "figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 9, "axes.titlesize": 10,
    "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8, "legend.fontsize": 8,
    "figure.titlesize": 11, "axes.spines.top": False, "axes.spines.right": False,
    "axes.formatter.useoffset": False, "svg.hashsalt": "mcir", "svg.fonttype": "path",
    "pdf.fonttype": 42, "savefig.facecolor": "white", "figure.facecolor": "white",
}


@contextmanager
def chart_style():
    """matplotlib's default style plus mcir's, for building and for saving a figure."""
    with matplotlib.style.context(["default", _STYLE]):
        yield


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plain_text(text: object) -> str:
    """`text` shown literally: `$` escaped (no mathtext), control characters dropped."""
    s = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return s.replace("$", r"\$")


def _short(name: str, limit: int = NAME_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _num(x: float) -> str:
    """A signed value with three significant digits: +0.0312, -1.25, +0.000412."""
    if x == 0:
        return "0"
    return f"{x:+.3g}".replace("-", "−")


def _with_unit(x: float, unit: str) -> str:
    return f"{_num(x)} {unit}" if unit else _num(x)


# --------------------------------------------------------------------------- Δ chart


def delta_figure(names: Sequence[str], deltas: Sequence[float], *, metric: str = "PSNR",
                 unit: str = "dB", title: str, mean: float | None = None,
                 ci: tuple[float, float] | None = None) -> Figure:
    """Per-image Δ (retrained − baseline) as horizontal bars sorted by Δ, the largest gain
    at the top, each bar named by its image; gains green, losses red, a zero line. `mean`
    (default: the mean of the finite Δ) is drawn as a dashed line and `ci` (the bootstrap
    95 % interval, e.g. `PairedStats.ci_low/ci_high`) as a band around it; non-finite
    values of either are not drawn. Non-finite deltas are left out and counted in the note
    under the chart.

    Up to `MAX_NAMED` images every bar is named and the figure grows with the count; with
    more, the figure stops growing and only the `EXTREMES_NAMED` highest and lowest bars
    are named (the note says so). The x axis is symmetric about 0, ticks from
    matplotlib's locator, labelled "Δ <metric> (<unit>)"."""
    if len(names) != len(deltas):
        raise ValueError(f"names and deltas differ in length: {len(names)} vs {len(deltas)}")
    pairs = [(str(n), float(d)) for n, d in zip(names, deltas)]
    finite = sorted((p for p in pairs if math.isfinite(p[1])), key=lambda nd: (-nd[1], nd[0]))
    skipped = len(pairs) - len(finite)
    n = len(finite)
    if mean is None and n:
        mean = math.fsum(d for _, d in finite) / n
    show_mean = mean is not None and math.isfinite(mean)
    show_ci = ci is not None and all(math.isfinite(float(v)) for v in ci)
    lo_ci, hi_ci = (sorted((float(ci[0]), float(ci[1]))) if show_ci else (0.0, 0.0))  # type: ignore[index]

    height = min(DELTA_MAX_HEIGHT, max(DELTA_MIN_HEIGHT, DELTA_FRAME + DELTA_ROW * min(n, MAX_NAMED)))
    with chart_style():
        fig = new_figure(DELTA_WIDTH, height)
        fig.suptitle(plain_text(title))
        ax = fig.add_subplot()
        axis_label = f"Δ {metric} ({unit})" if unit else f"Δ {metric}"
        ax.set_xlabel(plain_text(axis_label))
        ax.spines["left"].set_visible(False)
        note = [f"{n} image{'s' * (n != 1)}, sorted by Δ (retrained − baseline)"]
        if skipped:
            note.append(f"{skipped} with a non-finite Δ left out")
        if n == 0:
            ax.set_xlim(-1, 1)
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no finite Δ to plot", transform=ax.transAxes, ha="center", va="center")
        else:
            _draw_bars(ax, finite, height, note, [mean] if show_mean else [],  # type: ignore[list-item]
                       [lo_ci, hi_ci] if show_ci else [])
        ax.axvline(0.0, color="black", linewidth=0.9, gid="zero")
        _legend(ax, [d for _, d in finite], mean if show_mean else None, (lo_ci, hi_ci) if show_ci else None, unit)
        fig.supxlabel(textwrap.fill("; ".join(note), 120), fontsize=8, color="0.3")
    return fig


def _draw_bars(ax: Any, finite: list[tuple[str, float]], height: float, note: list[str],
               means: list[float], cis: list[float]) -> None:
    """The bars (sorted, the largest gain at the top), their names and a symmetric x axis
    that reaches every bar, the mean and the CI."""
    n = len(finite)
    values = [d for _, d in finite]
    y = [n - 1 - i for i in range(n)]
    colours = [GAIN if d > 0 else LOSS if d < 0 else NEUTRAL for d in values]
    bars = ax.barh(y, values, height=0.8 if n <= MAX_NAMED else 1.0, color=colours, linewidth=0,
                   label="_per-image Δ")
    for bar in bars:
        bar.set_gid("delta")
    ax.set_ylim(-0.6, n - 0.4)
    named, stride, font = _named_rows(n, height)
    ax.set_yticks([y[i] for i in named], [plain_text(_short(finite[i][0])) for i in named])
    ax.tick_params(axis="y", length=0, labelsize=font)
    if n > MAX_NAMED:
        rows = f" (1 row in {stride}, so that names do not overlap)" if stride > 1 else ""
        note.append(f"names shown for the {EXTREMES_NAMED} highest and lowest Δ{rows}")
    reach = max(abs(v) for v in [*values, *means, *cis])
    reach = reach * 1.08 if reach > 0 else 1.0
    ax.set_xlim(-reach, reach)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10], symmetric=True))
    ax.grid(axis="x", color="0.9", linewidth=0.6)
    ax.set_axisbelow(True)


def _legend(ax: Any, values: list[float], mean: float | None, ci: tuple[float, float] | None, unit: str) -> None:
    """Counts of better/worse/unchanged, the CI band and the mean line, above the bars."""
    handles: list[Any] = []
    wins, losses = sum(d > 0 for d in values), sum(d < 0 for d in values)
    if wins:
        handles.append(Patch(color=GAIN, label=f"better ({wins})"))
    if losses:
        handles.append(Patch(color=LOSS, label=f"worse ({losses})"))
    if len(values) - wins - losses:
        handles.append(Patch(color=NEUTRAL, label=f"unchanged ({len(values) - wins - losses})"))
    if ci is not None:
        lo, hi = ci
        handles.append(ax.axvspan(lo, hi, color=MEAN, alpha=0.15, linewidth=0, gid="ci", zorder=0.6,
                                  label=plain_text(f"95 % bootstrap CI [{_num(lo)}, {_num(hi)}]")))
    if mean is not None:
        handles.append(ax.axvline(mean, color=MEAN, linestyle="--", linewidth=1.3, gid="mean",
                                  label=plain_text(f"mean Δ {_with_unit(mean, unit)}")))
    if handles:  # above the bars, under the title: never over a bar
        ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(handles), 5),
                  frameon=False, borderaxespad=0.2)


def _named_rows(n: int, height: float) -> tuple[list[int], int, float]:
    """Which sorted rows get a name (indices, top first), the stride between named rows
    and the label font size: every row up to MAX_NAMED images, else the extremes, rows
    skipped where names would overlap."""
    pitch = max(0.1, (height - DELTA_FRAME) * 72.0 / n)  # points per row
    if n <= MAX_NAMED:
        return list(range(n)), 1, max(MIN_LABEL_PT, min(8.0, 0.9 * pitch))
    stride = max(1, math.ceil(MIN_LABEL_PT / (0.9 * pitch)))
    k = min(EXTREMES_NAMED, math.ceil(n / 2 / stride))
    top = [i * stride for i in range(k)]
    bottom = [n - 1 - i * stride for i in reversed(range(k))]
    rows = sorted(set(top) | set(bottom))
    return rows, stride, max(MIN_LABEL_PT, min(8.0, 0.9 * pitch * stride))


# --------------------------------------------------------------------------- saving


def chart_format(path: str | Path) -> str:
    """"png", "svg" or "pdf" from the file's suffix; a one-line McirError otherwise."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise McirError(f"unknown chart format {Path(path).suffix or '(no suffix)'}: use .png, .svg or .pdf", path)
    return fmt


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG, SVG or PDF bytes (for a file, or inlined in an HTML report);
    the same figure gives the same bytes."""
    if fmt not in _METADATA:
        raise ValueError(f"unknown chart format {fmt!r}: png, svg or pdf")
    buf = io.BytesIO()
    with chart_style(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure atomically (temp file, fsync, rename), in the format of the
    suffix (.png, .svg, .pdf); returns the path."""
    fmt = chart_format(path)
    return atomic_write_bytes(path, figure_bytes(fig, fmt))
