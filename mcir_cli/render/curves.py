"""Training curves of run folders, drawn with matplotlib (numbers in, a `Figure` out):
l_rec, l_neg, the contrast ratio with mcir's heuristic band, λ, lr and validation PSNR
over steps, several runs on one figure, collapses marked. Reading run folders is
`plot.py`'s job; the style, the figure and saving are `charts.py`'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import matplotlib.style
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullFormatter

from mcir_cli.choices import RATIO_BAND
from mcir_cli.render.charts import BAND, chart_style, new_figure, plain_text

# one dash pattern per run (with its colour): a run drawn exactly over another still shows
DASHES: tuple[Any, ...] = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (5, 2, 1, 2)))


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
    """`--ratio-band`'s default (`choices.RATIO_BAND`, TrainConfig's): mcir's heuristic 1–10 %."""
    return tuple(RATIO_BAND)  # type: ignore[return-value]


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
    with chart_style():
        colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        fig = new_figure(10.0 if cols == 2 else 6.4, 1.0 + 2.6 * rows)
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
                    ax.plot(xs, ys, color=colour, linewidth=1.3, label=plain_text(run.label),
                            linestyle=DASHES[j % len(DASHES)],  # runs that coincide stay visible
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
                                     linestyle=DASHES[j % len(DASHES)], label=plain_text(run.label))
                              for j, run in enumerate(items)]
        if any(r.get("event") == "collapse" for run in items for r in run.records):
            handles.append(Line2D([], [], color="black", linestyle=":", linewidth=1.4,
                                  label="collapse (rolled back)"))
        if handles and panels:  # the title heads the legend: one block, nothing overlaps
            fig.legend(handles=handles, loc="outside upper center", ncols=min(len(handles), 5), frameon=False,
                       title=plain_text(title), title_fontproperties={"size": 11})
        else:
            fig.suptitle(plain_text(title))
        note = _val_note(items)
        if note and panels:
            fig.supxlabel(plain_text(note), fontsize=8, color="0.3")
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
        ax.axhspan(lo, hi, color=BAND, alpha=0.15, linewidth=0, gid="ratio_band", label=plain_text(label))
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


def arm_curves_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], *, title: str,
                      ylabel: str = "validation PSNR (dB)") -> Figure:
    """A study's validation curves: per arm, the mean over seeds at each validated step with
    a ± sd band (`curves`: {arm: {"steps", "mean", "sd"}}), so a reader sees whether a gap
    grows, shrinks or flips during training."""
    with chart_style():
        colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
        fig = new_figure(6.4, 3.6)
        ax = fig.add_subplot(1, 1, 1)
        ax.set_gid("arm-curves")
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(color="0.92", linewidth=0.6)
        for j, (arm, c) in enumerate(curves.items()):
            colour = colours[j % len(colours)]
            xs, mean, sd = list(c["steps"]), list(c["mean"]), list(c["sd"])
            ax.plot(xs, mean, color=colour, linewidth=1.4, linestyle=DASHES[j % len(DASHES)], marker="o",
                    markersize=3, label=plain_text(arm))
            ax.fill_between(xs, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)],
                            color=colour, alpha=0.15, linewidth=0)
        ax.legend(frameon=False, title=plain_text(title))
    return fig
