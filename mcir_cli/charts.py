"""Charts drawn with matplotlib: per-image Δ bars of a comparison and training curves of
run folders. Drawing only (numbers in, a `Figure` out); reading run folders is
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

import dataclasses
import io
import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.style
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from mcir_cli.errors import McirError
from mcir_cli.fsutil import atomic_write_bytes

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
def _style():
    """matplotlib's default style plus mcir's, for building and for saving a figure."""
    with matplotlib.style.context(["default", _STYLE]):
        yield


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _plain(text: object) -> str:
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
    with _style():
        fig = _new_figure(DELTA_WIDTH, height)
        fig.suptitle(_plain(title))
        ax = fig.add_subplot()
        axis_label = f"Δ {metric} ({unit})" if unit else f"Δ {metric}"
        ax.set_xlabel(_plain(axis_label))
        ax.spines["left"].set_visible(False)
        note = [f"{n} image{'s' * (n != 1)}, sorted by Δ (retrained − baseline)"]
        if skipped:
            note.append(f"{skipped} with a non-finite Δ left out")
        if n == 0:
            ax.set_xlim(-1, 1)
            ax.set_yticks([])
            ax.text(0.5, 0.5, "no finite Δ to plot", transform=ax.transAxes, ha="center", va="center")
        else:
            values = [d for _, d in finite]
            y = [n - 1 - i for i in range(n)]  # the first (largest gain) at the top
            colours = [GAIN if d > 0 else LOSS if d < 0 else NEUTRAL for d in values]
            bars = ax.barh(y, values, height=0.8 if n <= MAX_NAMED else 1.0, color=colours,
                           linewidth=0, label="_per-image Δ")
            for bar in bars:
                bar.set_gid("delta")
            ax.set_ylim(-0.6, n - 0.4)
            named, stride, font = _named_rows(n, height)
            ax.set_yticks([y[i] for i in named], [_plain(_short(finite[i][0])) for i in named])
            ax.tick_params(axis="y", length=0, labelsize=font)
            if n > MAX_NAMED:
                rows = f" (1 row in {stride}, so that names do not overlap)" if stride > 1 else ""
                note.append(f"names shown for the {EXTREMES_NAMED} highest and lowest Δ{rows}")
            reach = max([abs(v) for v in values] + ([abs(mean)] if show_mean else [])  # type: ignore[arg-type]
                        + ([abs(lo_ci), abs(hi_ci)] if show_ci else []))
            reach = reach * 1.08 if reach > 0 else 1.0
            ax.set_xlim(-reach, reach)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10], symmetric=True))
            ax.grid(axis="x", color="0.9", linewidth=0.6)
            ax.set_axisbelow(True)
        ax.axvline(0.0, color="black", linewidth=0.9, gid="zero")
        handles: list[Any] = []
        wins = sum(d > 0 for _, d in finite)
        losses = sum(d < 0 for _, d in finite)
        if wins:
            handles.append(Patch(color=GAIN, label=f"better ({wins})"))
        if losses:
            handles.append(Patch(color=LOSS, label=f"worse ({losses})"))
        if n - wins - losses:
            handles.append(Patch(color=NEUTRAL, label=f"unchanged ({n - wins - losses})"))
        if show_ci:
            handles.append(ax.axvspan(lo_ci, hi_ci, color=MEAN, alpha=0.15, linewidth=0, gid="ci", zorder=0.6,
                                      label=_plain(f"95 % bootstrap CI [{_num(lo_ci)}, {_num(hi_ci)}]")))
        if show_mean:
            handles.append(ax.axvline(mean, color=MEAN, linestyle="--", linewidth=1.3, gid="mean",  # type: ignore[arg-type]
                                      label=_plain(f"mean Δ {_with_unit(mean, unit)}")))  # type: ignore[arg-type]
        if handles:  # above the bars, under the title: never over a bar
            ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=min(len(handles), 5),
                      frameon=False, borderaxespad=0.2)
        fig.supxlabel(textwrap.fill("; ".join(note), 120), fontsize=8, color="0.3")
    return fig


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


# --------------------------------------------------------------------------- curves


@dataclass
class RunCurves:
    """One run's log records to draw: `records` as in log.jsonl (step records without an
    "event" key; events: "start", "val", "collapse", ...), its contrast-ratio band
    (config.json's `ratio_band`; None: the default), and whether it has negatives (None:
    from its "start" record)."""

    label: str
    records: list[dict[str, Any]]
    ratio_band: tuple[float, float] | None = None
    negatives: bool | None = None


def default_ratio_band() -> tuple[float, float]:
    """`--ratio-band`'s default (config.py's TrainConfig): mcir's heuristic 1–10 %."""
    from mcir_cli.config import TrainConfig

    field = next(f for f in dataclasses.fields(TrainConfig) if f.name == "ratio_band")
    return tuple(field.default)  # type: ignore[return-value]


@dataclass
class _Panel:
    key: str
    title: str
    ylabel: str
    spn_only: bool = False  # no data in a run without negatives (plain fine-tuning)


_PANELS = (
    _Panel("l_rec", "reconstruction loss l_rec", "l_rec"),
    _Panel("l_neg", "negative term l_neg (distance to the negatives)", "l_neg", spn_only=True),
    _Panel("ratio", "contrast ratio λ·l_neg / |l_rec|", "λ·l_neg / |l_rec|", spn_only=True),
    _Panel("lam", "λ (SPN weight)", "λ", spn_only=True),
    _Panel("lr", "learning rate", "lr"),
    _Panel("psnr", "validation PSNR", "PSNR (dB)"),
)


def _value(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return math.nan
    v = float(v)
    return v if math.isfinite(v) else math.nan


def _has_negatives(run: RunCurves) -> bool:
    if run.negatives is not None:
        return run.negatives
    for r in run.records:
        if r.get("event") == "start" and "negatives" in r:
            return r["negatives"] != "none"
    values = (_value(r.get("l_neg")) for r in run.records if "event" not in r)
    return any(v != 0 and not math.isnan(v) for v in values)


def _series(run: RunCurves, panel: _Panel) -> list[tuple[list[float], list[float]]]:
    """(steps, values) segments of one run for one panel; a new segment where the step
    goes back (a collapse rolled the run back and it logged those steps again). Empty
    when the run has no value for the panel."""
    if panel.key == "psnr":
        records = [r for r in run.records if r.get("event") == "val"]
    else:
        if panel.spn_only and not _has_negatives(run):
            return []
        records = [r for r in run.records if "event" not in r]
    segments: list[tuple[list[float], list[float]]] = []
    last = -math.inf
    for r in records:
        step, value = _value(r.get("step")), _value(r.get(panel.key))
        if math.isnan(step) or panel.key not in r:
            continue
        if not segments or step <= last:
            segments.append(([], []))
        segments[-1][0].append(step)
        segments[-1][1].append(value)
        last = step
    if not any(not math.isnan(v) for _, ys in segments for v in ys):
        return []
    return segments


def _log_scale(values: list[float], always: bool) -> bool:
    """A log y axis where it helps: every value positive and (unless `always`) spread
    over at least a factor 10. Losses, λ and the lr always (they move by factors), the
    ratio when it spans a decade."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals or min(vals) <= 0:
        return False
    return always or max(vals) / min(vals) >= 10


def curves_figure(runs: Mapping[str, Sequence[dict[str, Any]]] | Sequence[RunCurves], *,
                  title: str = "training curves", ratio_band: tuple[float, float] | None = None) -> Figure:
    """Training curves of one or more runs on one figure, one colour per run: l_rec (log y
    when positive), l_neg, the contrast ratio λ·l_neg/|l_rec| with mcir's heuristic band
    shaded (the run's `ratio_band`, else `ratio_band`, else `--ratio-band`'s default), λ,
    the learning rate and the validation PSNR, each over "step"; collapses as dotted
    vertical lines in the run's colour. `runs`: {label: log records} or `RunCurves`.
    Panels no run has data for are left out (a plain run has no l_neg, ratio or λ)."""
    items = [RunCurves(str(k), list(v)) for k, v in runs.items()] if isinstance(runs, Mapping) else list(runs)
    default_band = tuple(ratio_band) if ratio_band is not None else default_ratio_band()
    data = {p.key: [_series(run, p) for run in items] for p in _PANELS}
    panels = [p for p in _PANELS if any(data[p.key])]
    cols = 2 if len(panels) > 1 else 1
    rows = max(1, math.ceil(len(panels) / cols))
    with _style():
        colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        fig = _new_figure(10.0 if cols == 2 else 6.4, 1.0 + 2.6 * rows)
        if not panels:
            fig.text(0.5, 0.5, "no training steps or validations logged", ha="center", va="center")
        first = None
        for i, panel in enumerate(panels):
            ax = fig.add_subplot(rows, cols, i + 1, sharex=first)
            first = first or ax
            ax.set_gid(panel.key)
            ax.set_title(panel.title)
            ax.set_ylabel(panel.ylabel)
            ax.set_xlabel("step")
            ax.grid(color="0.92", linewidth=0.6)
            values: list[float] = []
            for j, (run, segments) in enumerate(zip(items, data[panel.key])):
                colour = colours[j % len(colours)]
                for xs, ys in segments:
                    ax.plot(xs, ys, color=colour, linewidth=1.3, label=_plain(run.label),
                            marker="o" if panel.key == "psnr" else None, markersize=3.5)
                    values += ys
            if _log_scale(values, always=panel.key != "ratio") and panel.key != "psnr":
                ax.set_yscale("log")
            if panel.key == "ratio":
                _ratio_band(ax, items, data["ratio"], default_band)
                ax.yaxis.set_major_formatter(FuncFormatter(_percent))
                ax.yaxis.set_minor_formatter(NullFormatter())
            for j, run in enumerate(items):
                for r in run.records:
                    if r.get("event") == "collapse" and not math.isnan(_value(r.get("step"))):
                        ax.axvline(_value(r["step"]), color=colours[j % len(colours)], linestyle=":",
                                   linewidth=1.4, gid="collapse")
        handles: list[Any] = [Line2D([], [], color=colours[j % len(colours)], linewidth=2,
                                     label=_plain(run.label)) for j, run in enumerate(items)]
        if any(r.get("event") == "collapse" for run in items for r in run.records):
            handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1.4,
                                  label="collapse (rolled back)"))
        if handles and panels:  # the title heads the legend: one block, nothing overlaps
            fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 5), frameon=False,
                       title=_plain(title), title_fontproperties={"size": 11})
        else:
            fig.suptitle(_plain(title))
        note = _val_note(items)
        if note and panels:
            fig.supxlabel(_plain(note), fontsize=8, color="0.3")
    return fig


def _percent(value: float, _pos: Any = None) -> str:
    return f"{value * 100:.3g} %"


def _ratio_band(ax: Any, items: list[RunCurves], series: list[Any], default: tuple[float, ...]) -> None:
    """Shade each distinct ratio band of the runs drawn in the ratio panel; the label
    names the runs when they differ."""
    bands: dict[tuple[float, float], list[str]] = {}
    for run, segments in zip(items, series):
        if segments:
            band = tuple(float(v) for v in (run.ratio_band or default))
            bands.setdefault(band, []).append(run.label)  # type: ignore[arg-type]
    for (lo, hi), labels in bands.items():
        label = f"mcir's heuristic band ({lo * 100:g}–{hi * 100:g} %)"
        if len(bands) > 1:
            label += ": " + ", ".join(labels)
        ax.axhspan(lo, hi, color=BAND, alpha=0.15, linewidth=0, gid="ratio_band", label=_plain(label))
    handles = [a for a in ax.patches if a.get_gid() == "ratio_band"]
    if handles:
        ax.legend(handles=handles, loc="best", frameon=False)


def _val_note(items: list[RunCurves]) -> str:
    """How the validation PSNR was measured (the "val" records' conventions)."""
    found = {r["conventions"] for run in items for r in run.records
             if r.get("event") == "val" and isinstance(r.get("conventions"), str)}
    if len(found) == 1:
        return f"validation PSNR: {found.pop()}"
    if found:
        return "validation PSNR measured differently between runs: " + " | ".join(sorted(found))
    return ""


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
    with _style(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph .* missing from", category=UserWarning)
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=_METADATA[fmt])
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Write the figure atomically (temp file, fsync, rename), in the format of the
    suffix (.png, .svg, .pdf); returns the path."""
    fmt = chart_format(path)
    return atomic_write_bytes(path, figure_bytes(fig, fmt))
