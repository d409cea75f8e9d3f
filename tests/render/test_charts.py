"""charts.py: what the Δ chart and the training curves show (read back from the figure's
artists), and how figures are written (formats, atomic, the same bytes every time)."""

from __future__ import annotations

import gc
import math
import weakref

import numpy as np
import pytest
from matplotlib.colors import to_hex

from mcir_cli.errors import McirError
from mcir_cli.render.charts import (
    GAIN,
    LOSS,
    MAX_NAMED,
    chart_format,
    delta_figure,
    figure_bytes,
    save_figure,
)
from mcir_cli.render.curves import RunCurves, curves_figure, default_ratio_band

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def drawn(fig):
    fig.canvas.draw()
    return fig


def bars(ax):
    return [p for p in ax.patches if p.get_gid() == "delta"]


def by_gid(ax, gid):
    return [a for a in [*ax.lines, *ax.patches] if a.get_gid() == gid]


def x_extent(ax, artist):
    """Data x range of a patch (axvspan is a Rectangle in new matplotlib, a Polygon in old)."""
    verts = artist.get_transform().transform(artist.get_path().vertices)
    xs = ax.transData.inverted().transform(verts)[:, 0]
    return float(xs.min()), float(xs.max())


def texts(fig):
    """Every string the figure shows."""
    return [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text")) if t.get_text()]


# --------------------------------------------------------------------------- Δ chart


def test_delta_figure_names_sorted_bars_colours_and_note():
    names = ["baby", "bird", "butterfly", "head", "woman"]
    deltas = [0.03, -0.01, 0.05, math.inf, -0.002]
    fig = drawn(delta_figure(names, deltas, title="Set5: PSNR mcir − plain, per image"))
    ax = fig.axes[0]
    rects = bars(ax)
    assert len(rects) == 4  # the infinite Δ is left out ...
    assert any("1 with a non-finite Δ left out" in t for t in texts(fig))  # ... and counted
    # names on the y axis, top to bottom from the largest gain to the largest loss
    ticks = sorted(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]), reverse=True)
    assert [name for _, name in ticks] == ["butterfly", "baby", "woman", "bird"]
    by_name = {name: rect for (y, name) in ticks for rect in rects if abs(rect.get_y() + rect.get_height() / 2 - y) < 1e-9}
    assert {n: round(r.get_width(), 6) for n, r in by_name.items()} == {"butterfly": 0.05, "baby": 0.03, "woman": -0.002, "bird": -0.01}
    assert to_hex(by_name["baby"].get_facecolor()) == GAIN and to_hex(by_name["bird"].get_facecolor()) == LOSS
    assert ax.get_xlabel() == "Δ PSNR (dB)"
    assert fig.get_suptitle() == "Set5: PSNR mcir − plain, per image"
    zero = by_gid(ax, "zero")
    assert len(zero) == 1 and list(zero[0].get_xdata()) == [0, 0]
    # the mean defaults to the mean of the finite Δ; no CI unless given
    (mean,) = by_gid(ax, "mean")
    assert mean.get_xdata()[0] == pytest.approx(np.mean([0.03, -0.01, 0.05, -0.002]))
    assert not by_gid(ax, "ci")


def test_delta_figure_ticks_come_from_the_locator_and_are_symmetric():
    fig = drawn(delta_figure(["a", "b", "c"], [0.3, -0.12, 0.05], title="t"))
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo == pytest.approx(-hi) and hi == pytest.approx(0.3 * 1.08)
    shown = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert shown == pytest.approx([-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3])
    labels = [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if lo <= v <= hi]
    assert labels == ["−0.3", "−0.2", "−0.1", "0.0", "0.1", "0.2", "0.3"]


def test_delta_figure_mean_and_ci_band_equal_the_given_stats():
    fig = drawn(delta_figure(["a", "b"], [0.2, -0.1], metric="SSIM", unit="", title="t", mean=0.05,
                             ci=(-0.1, 0.2)))
    ax = fig.axes[0]
    (band,) = by_gid(ax, "ci")
    assert x_extent(ax, band) == pytest.approx((-0.1, 0.2))
    (mean,) = by_gid(ax, "mean")
    assert mean.get_xdata()[0] == 0.05
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["better (1)", "worse (1)", "95 % bootstrap CI [−0.1, +0.2]", "mean Δ +0.05"]
    assert ax.get_xlabel() == "Δ SSIM"
    # NaN stats (no usable image) draw nothing rather than a line at NaN
    nan = delta_figure(["a"], [math.nan], title="t", mean=math.nan, ci=(math.nan, math.nan))
    assert not by_gid(nan.axes[0], "ci") and not by_gid(nan.axes[0], "mean") and not bars(nan.axes[0])
    assert any("no finite Δ to plot" in t for t in texts(nan))


def test_delta_figure_many_images_names_the_extremes_only():
    n = 100
    rng = np.random.default_rng(0)
    deltas = rng.normal(0, 0.05, n)
    names = [f"img_{i:03d}" for i in range(n)]
    fig = delta_figure(names, deltas, title="Urban100")
    ax = fig.axes[0]
    assert len(bars(ax)) == n
    order = [names[i] for i in np.argsort(-deltas, kind="stable")]
    shown = [t.get_text() for t in sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])]
    assert shown == order[:10] + order[-10:]
    assert any("names shown for the 10 highest and lowest Δ" in t for t in texts(fig))
    # up to MAX_NAMED every bar is named and the chart grows with the count; then it stops
    few = delta_figure(names[:MAX_NAMED], deltas[:MAX_NAMED], title="t")
    assert len(few.axes[0].get_yticklabels()) == MAX_NAMED
    assert list(fig.get_size_inches()) == list(few.get_size_inches())
    assert fig.get_size_inches()[0] == 7.2 and 10 < fig.get_size_inches()[1] <= 11
    assert delta_figure(names[:5], deltas[:5], title="t").get_size_inches()[1] == 3.6
    assert 3.6 < delta_figure(names[:30], deltas[:30], title="t").get_size_inches()[1] < 11.0


def test_delta_figure_shows_names_literally():
    fig = drawn(delta_figure(["$x$ cost", "a\nb"], [0.1, -0.1], title="price in $ and $"))
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels == [r"\$x\$ cost", "a b"]  # escaped: matplotlib shows "$x$ cost", not math
    assert not any(t._preprocess_math(t.get_text())[1] for t in fig.axes[0].get_yticklabels())


def test_delta_figure_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="differ in length"):
        delta_figure(["a"], [], title="t")


# --------------------------------------------------------------------------- curves


def step(k, l_rec, l_neg=0.0, lam=1e-4, lr=1e-5):
    ratio = lam * l_neg / abs(l_rec) if l_neg else 0.0
    return {"step": k, "l_rec": l_rec, "l_neg": l_neg, "ratio": ratio, "lam": lam, "lr": lr,
            "grad_norm": 0.1, "it_s": 10.0}


def mcir_log():
    """A log as the loop writes it: start, a validation, steps, a collapse that rolled
    back two steps (steps 3 and 4 logged again), a negative update, the end."""
    return [
        {"event": "start", "step": 0, "negatives": "mix", "negative_steps": [2, 3]},
        {"event": "val", "step": 0, "psnr": 32.0, "ssim": 0.9, "datasets": {}, "conventions": "Y channel"},
        step(1, 0.05, 40.0), step(2, 0.04, 30.0),
        {"event": "negative_update", "step": 2, "index": 0, "period": 2},
        step(3, 0.03, 20.0), step(4, 0.02, 10.0),
        {"event": "collapse", "step": 5, "reason": "non-finite loss", "rolled_back_to": 2},
        step(3, 0.035, 25.0, lam=5e-5), step(4, 0.025, 12.0, lam=5e-5),
        {"event": "val", "step": 4, "psnr": 32.1, "ssim": 0.91, "datasets": {}, "conventions": "Y channel"},
        {"event": "end", "step": 4},
    ]


def plain_log():
    return [{"event": "start", "step": 0, "negatives": "none"},
            step(1, 0.05), step(2, 0.045, lr=5e-6), step(3, 0.04, lr=5e-6)]


def panels(fig):
    return {ax.get_gid(): ax for ax in fig.axes}


def run_lines(ax, label):
    return [line for line in ax.lines if line.get_label() == label]


def test_curves_figure_panels_data_and_collapses():
    fig = curves_figure({"mcir": mcir_log(), "plain": plain_log()})
    p = panels(fig)
    assert list(p) == ["l_rec", "l_neg", "ratio", "lam", "lr", "psnr"]
    assert all(ax.get_xlabel() == "step" for ax in p.values())
    assert p["psnr"].get_ylabel() == "PSNR (dB)" and p["l_rec"].get_yscale() == "log"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["mcir", "plain", "collapse (rolled back)"]
    assert fig.legends[0].get_title().get_text() == "training curves"
    # the data are the log's values; the rolled-back stretch is its own segment
    segments = run_lines(p["l_rec"], "mcir")
    assert [list(s.get_xdata()) for s in segments] == [[1, 2, 3, 4], [3, 4]]
    assert [list(s.get_ydata()) for s in segments] == [[0.05, 0.04, 0.03, 0.02], [0.035, 0.025]]
    assert [list(s.get_ydata()) for s in run_lines(p["lam"], "mcir")] == [[1e-4] * 4, [5e-5] * 2]
    ratio = [y for s in run_lines(p["ratio"], "mcir") for y in s.get_ydata()]
    assert ratio == pytest.approx([lam * n / r for r, n, lam in [(0.05, 40, 1e-4), (0.04, 30, 1e-4), (0.03, 20, 1e-4),
                                                                 (0.02, 10, 1e-4), (0.035, 25, 5e-5), (0.025, 12, 5e-5)]])
    (val,) = run_lines(p["psnr"], "mcir")
    assert list(val.get_xdata()) == [0, 4] and list(val.get_ydata()) == [32.0, 32.1]
    # the plain run: l_rec and lr, nothing in the SPN panels (its l_neg is 0 by construction)
    assert [list(s.get_ydata()) for s in run_lines(p["lr"], "plain")] == [[1e-5, 5e-6, 5e-6]]
    for key in ("l_neg", "ratio", "lam", "psnr"):
        assert not run_lines(p[key], "plain")
    # the collapse: a vertical line at its step, in every panel, in the run's colour
    for ax in p.values():
        (c,) = by_gid(ax, "collapse")
        assert list(c.get_xdata()) == [5, 5]
        assert c.get_color() == run_lines(ax, "mcir")[0].get_color()
    assert any("validation PSNR: Y channel" in t for t in texts(fig))


def test_curves_figure_ratio_band():
    fig = curves_figure({"mcir": mcir_log()})
    ax = panels(fig)["ratio"]
    (band,) = by_gid(ax, "ratio_band")
    lo, hi = default_ratio_band()
    assert (lo, hi) == (0.01, 0.10)
    ax.get_ylim()  # the view limits are up to date
    ys = ax.transData.inverted().transform(band.get_transform().transform(band.get_path().vertices))[:, 1]
    assert (ys.min(), ys.max()) == pytest.approx((lo, hi))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mcir's heuristic band (1–10 %)"]
    # a run's own band (config.json's ratio_band) wins; two bands are told apart
    fig = curves_figure([RunCurves("a", mcir_log(), (0.02, 0.05)), RunCurves("b", mcir_log())])
    labels = [t.get_text() for t in panels(fig)["ratio"].get_legend().get_texts()]
    assert labels == ["mcir's heuristic band (2–5 %): a", "mcir's heuristic band (1–10 %): b"]


def test_curves_figure_leaves_out_panels_without_data():
    fig = curves_figure({"plain": plain_log()})
    assert [ax.get_gid() for ax in fig.axes] == ["l_rec", "lr"]  # no negatives, no validation
    assert not any(by_gid(ax, "collapse") for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["plain"]
    # a run without a start record: zero l_neg everywhere also means no negatives
    assert [ax.get_gid() for ax in curves_figure({"x": plain_log()[1:]}).axes] == ["l_rec", "lr"]
    empty = curves_figure({"new": [{"event": "start", "step": 0}]})
    assert not empty.axes and "no training steps or validations logged" in texts(empty)


def test_curves_figure_non_finite_values_and_signed_loss():
    log = [step(1, -30.0), step(2, -31.0), {**step(3, -32.0), "lr": float("inf")}]
    fig = curves_figure({"psnr loss": log})
    p = panels(fig)
    assert p["l_rec"].get_yscale() == "linear"  # the PSNR loss is negative: no log axis
    (lr,) = run_lines(p["lr"], "psnr loss")
    assert list(lr.get_ydata()[:2]) == [1e-5, 1e-5] and math.isnan(lr.get_ydata()[2])


# --------------------------------------------------------------------------- saving


@pytest.fixture
def small_fig():
    return delta_figure(["a", "b"], [0.1, -0.05], title="t", mean=0.025, ci=(-0.05, 0.1))


@pytest.mark.parametrize("fmt, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_figure_bytes_are_deterministic(small_fig, fmt, magic):
    first = figure_bytes(small_fig, fmt)
    assert first.startswith(magic)
    again = delta_figure(["a", "b"], [0.1, -0.05], title="t", mean=0.025, ci=(-0.05, 0.1))
    assert figure_bytes(again, fmt) == first  # no dates, fixed svg ids
    if fmt == "svg":
        assert b"<dc:date>" not in first


def test_save_figure_atomic_format_from_suffix(small_fig, tmp_path):
    from PIL import Image

    path = save_figure(small_fig, tmp_path / "sub" / "delta.png")
    assert sorted(p.name for p in path.parent.iterdir()) == ["delta.png"]  # no temp file left
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (720, 360)  # 7.2 x 3.6 in at 100 dpi
    assert save_figure(small_fig, tmp_path / "d.SVG").read_bytes().startswith(b"<?xml")
    assert save_figure(small_fig, tmp_path / "d.pdf").read_bytes().startswith(b"%PDF")
    with pytest.raises(McirError, match=r"d\.jpg: unknown chart format \.jpg: use \.png, \.svg or \.pdf"):
        save_figure(small_fig, tmp_path / "d.jpg")
    assert not (tmp_path / "d.jpg").exists()
    assert chart_format("x.Pdf") == "pdf"
    with pytest.raises(ValueError):
        figure_bytes(small_fig, "jpg")


def test_figures_are_not_held_anywhere(tmp_path):
    """No pyplot: nothing global keeps a figure once the caller drops it."""
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = delta_figure(["a"], [0.1], title="t")
    save_figure(fig, tmp_path / "a.png")
    curves = curves_figure({"r": plain_log()})
    refs = [weakref.ref(fig), weakref.ref(curves)]
    del fig, curves
    gc.collect()
    assert [r() for r in refs] == [None, None]
    assert plt.get_fignums() == before
