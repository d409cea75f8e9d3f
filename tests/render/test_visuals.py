"""visuals.py: strip layout (exact sizes), divergence maps, heat colours, the Δ charts of a comparison."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mcir_cli.compare.results import compare_results
from mcir_cli.render.visuals import (
    LABEL_H,
    SEP,
    comparison_strip,
    crop_size,
    divergence_map,
    heatmap_image,
    largest_delta_images,
    largest_difference_box,
    save_image,
    write_delta_charts,
)

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


@pytest.fixture
def images():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(3, 32, 40, generator=g)
    lq = torch.rand(3, 8, 10, generator=g)
    base = torch.rand(3, 32, 40, generator=g)
    new = base.clone()
    new[:, 20:28, 4:12] = 1.0 - new[:, 20:28, 4:12]  # the models differ in one 8x8 block
    return lq, base, new, gt


def test_layout_constants():
    assert (SEP, LABEL_H) == (4, 16)


def test_divergence_map_zero_for_identical(images):
    _, base, _, _ = images
    div = divergence_map(base, base.clone())
    assert div.shape == (32, 40)
    assert np.all(div == 0.0)
    heat = np.asarray(heatmap_image(div))
    assert heat.shape == (32, 40, 3) and not heat.any()


def test_divergence_map_values():
    base = torch.zeros(3, 2, 2)
    new = base.clone()
    new[0, 0, 0] = 0.6  # one channel of one pixel
    div = divergence_map(base, new)
    assert div[0, 0] == pytest.approx(0.2)
    assert div.sum() == pytest.approx(0.2)
    # grey vs grey
    assert divergence_map(torch.zeros(1, 3, 3), torch.full((1, 3, 3), 0.5)).tolist() == [[0.5] * 3] * 3


def test_heatmap_colours():
    div = np.array([[0.0, 1 / 3, 2 / 3, 1.0, 2.0]])
    rgb = np.asarray(heatmap_image(div, scale=1.0))[0]
    assert rgb.tolist() == [[0, 0, 0], [255, 0, 0], [255, 255, 0], [255, 255, 255], [255, 255, 255]]


def test_crop_size_and_box():
    assert crop_size(32, 40) == 8  # min(48, 32//4, 40//4)
    assert crop_size(1000, 1000) == 48
    assert crop_size(3, 3) == 1
    div = np.zeros((30, 40))
    div[10:13, 20:23] = 1.0
    assert largest_difference_box(div, 3) == (20, 10, 23, 13)
    assert largest_difference_box(np.zeros((30, 40)), 5) == (0, 0, 5, 5)


def test_strip_size_exact(images):
    strip = comparison_strip(*images)
    # top row: 5 panels of 40 + 4 separators of 4 = 216; zoom row: crop 8 (min(48, 32/4,
    # 40/4)) x3 = 24 -> 5*24 + 16 = 136 < 216. Height: 16 + 32 + 4 + 16 + 24 = 92.
    assert strip.size == (216, 92)
    assert strip.mode == "RGB"


def test_strip_zooms_on_the_difference(images):
    lq, base, new, gt = images
    strip = np.asarray(comparison_strip(lq, base, new, gt))
    # the crop is the 8x8 block where the models differ, so the zoomed base crop
    # (second zoom panel, x = 24 + 4) shows base[:, 20:28, 4:12] enlarged 3x
    y0 = 16 + 32 + 4 + 16
    zoom_base = strip[y0:y0 + 24, 28:28 + 24]
    expected = np.round(base[:, 20:28, 4:12].numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
    assert np.array_equal(zoom_base[::3, ::3], expected)
    # top panels: the LQ is nearest-upscaled x4 (a 4x4 block per input pixel)
    lq_panel = strip[16:16 + 32, 0:40]
    assert np.array_equal(lq_panel[0:4, 0:4].reshape(-1, 3),
                          np.repeat(np.round(lq[:, 0, 0].numpy() * 255).astype(np.uint8)[None], 16, 0))
    # the GT panel (x = 3 * 44) is the GT
    assert np.array_equal(strip[16 + 31, 132 + 39], np.round(gt[:, 31, 39].numpy() * 255).astype(np.uint8))


def test_strip_identical_models_black_heat(images):
    lq, base, _, gt = images
    strip = np.asarray(comparison_strip(lq, base, base.clone(), gt))
    heat_panel = strip[16:16 + 32, 4 * 44:4 * 44 + 40]
    # zero map -> crop at (0, 0, 8, 8), outlined in cyan along x = 8 and y = 8 only
    outline = (heat_panel == (0, 255, 255)).all(-1)
    assert outline[:9, 8].all() and outline[8, :9].all() and outline.sum() == 17
    assert not heat_panel[~outline].any()
    y0 = 16 + 32 + 4 + 16
    assert not strip[y0:y0 + 24, 4 * 28:4 * 28 + 24].any()  # zoomed heat crop


def test_strip_grey_and_custom_crop(images):
    _, base, new, _ = images
    grey = [t[:1] for t in images]
    strip = comparison_strip(*grey, crop_box=(0, 0, 10, 5), zoom=2)
    # zoom row: 10x5 crop x2 = 20x10 -> 5*20 + 16 = 116 < 216; height 16+32+4+16+10 = 78
    assert strip.size == (216, 78)
    # a big crop makes the zoom row the wider one: 5 * 120 + 16 = 616, 16+32+4+16+96 = 164
    big = comparison_strip(*images, crop_box=(0, 0, 40, 32), zoom=3)
    assert big.size == (616, 164)
    arr = np.asarray(strip)
    panel = arr[16:48, 44:84]  # the grey baseline panel
    outline = (panel == (0, 255, 255)).all(-1)
    # the box (0, 0, 10, 5) touches the top-left corner: only its right (x = 10) and
    # bottom (y = 5) sides are drawn, outside the box
    assert outline[:6, 10].all() and outline[5, :11].all() and outline.sum() == 16
    grey_part = panel[~outline]
    assert np.array_equal(grey_part[:, 0], grey_part[:, 1])
    assert np.array_equal(grey_part[:, 1], grey_part[:, 2])


def test_strip_rejects_mismatched_sizes(images):
    lq, base, new, gt = images
    with pytest.raises(ValueError, match="GT is 40x32"):
        comparison_strip(lq, base[:, :16], new, gt)
    with pytest.raises(ValueError, match="crop_box"):
        comparison_strip(lq, base, new, gt, crop_box=(30, 0, 50, 10))


def test_largest_delta_images():
    d = {"a": 0.1, "b": -0.5, "c": 0.3, "d": float("nan"), "e": -0.3}
    assert largest_delta_images(d, 2) == ["b", "c"]
    assert largest_delta_images(d, 3) == ["b", "c", "e"]  # ties by name
    assert largest_delta_images(d, 10) == ["b", "c", "e", "a"]
    assert largest_delta_images(d, 0) == []


def test_save_image_atomic(tmp_path):
    img = Image.new("RGB", (7, 5), (1, 2, 3))
    path = save_image(img, tmp_path / "sub" / "x.png")
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.png"]
    with Image.open(path) as back:
        assert back.format == "PNG" and back.size == (7, 5)


def _result(label, vals, ssim=None):
    ssim = ssim or [0.9] * len(vals)
    return {"conventions": {"y_channel": True, "crop_border": 4, "quantize": "uint8"},
            "model": {"checkpoint": f"{label}.pth", "label": label},
            "datasets": {"Set 5": {"psnr": float(np.mean(vals)), "ssim": float(np.mean(ssim)),
                                   "images": [{"name": f"i{k}", "psnr": v, "ssim": s}
                                              for k, (v, s) in enumerate(zip(vals, ssim))]}}}


@pytest.fixture
def drawn_charts(monkeypatch):
    """The figures write_delta_charts saves, by file name (then saved for real)."""
    import mcir_cli.render.charts as charts

    figures = {}
    real = charts.save_figure

    def keep(fig, path):
        figures[Path(path).name] = fig
        return real(fig, path)

    monkeypatch.setattr(charts, "save_figure", keep)
    return figures


def _ci_extent(ax):
    (band,) = [p for p in ax.patches if p.get_gid() == "ci"]
    ax.get_xlim()  # the view limits are up to date
    verts = band.get_transform().transform(band.get_path().vertices)
    xs = ax.transData.inverted().transform(verts)[:, 0]
    return float(xs.min()), float(xs.max())


def test_write_delta_charts(tmp_path, drawn_charts):
    base = [30.0, 31.0, 29.0, 28.5, 32.0, 30.2]
    new = [30.5, 30.0, 29.3, math.inf, 32.4, 30.1]  # i3: infinite on one side, left out
    comp = compare_results([_result("b", base), _result("n", new)], n_resamples=200)
    paths = write_delta_charts(comp, tmp_path)
    assert [p.name for p in paths] == ["delta_psnr_Set_5.png"]
    with Image.open(paths[0]) as im:
        assert im.format == "PNG" and im.size == (720, 360)
    fig = drawn_charts["delta_psnr_Set_5.png"]
    fig.canvas.draw()
    ax = fig.axes[0]
    stat = comp.stat("Set 5", "n", "psnr")
    # one bar per finite Δ, named by image, from the largest gain down
    bars = [p for p in ax.patches if p.get_gid() == "delta"]
    assert len(bars) == stat.n == 5
    names = [t.get_text() for t in sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])]
    assert names == ["i0", "i4", "i2", "i5", "i1"]
    assert sorted(round(b.get_width(), 9) for b in bars) == [-1.0, -0.1, 0.3, 0.4, 0.5]
    # the mean and the bootstrap CI are the comparison's own numbers
    assert _ci_extent(ax) == pytest.approx((stat.ci_low, stat.ci_high))
    (mean,) = [line for line in ax.lines if line.get_gid() == "mean"]
    assert mean.get_xdata()[0] == pytest.approx(stat.mean_delta)
    assert ax.get_xlabel() == "Δ PSNR (dB)"
    assert fig.get_suptitle() == "Set 5: PSNR n − b, per image"
    ticks = [t.get_text() for t, v in zip(ax.get_xticklabels(), ax.get_xticks()) if ax.get_xlim()[0] <= v <= ax.get_xlim()[1]]
    assert "0.0" in ticks and "−0.5" in ticks and "0.5" in ticks
    notes = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    assert any("1 with a non-finite Δ left out" in t for t in notes)


def test_write_delta_charts_several_models_and_ssim(tmp_path, drawn_charts):
    results = [_result("b", [30.0, 31.0], [0.90, 0.80]), _result("n1", [30.5, 30.0], [0.91, 0.82]),
               _result("n 2", [30.0, 31.5], [0.90, 0.79])]
    comp = compare_results(results, n_resamples=50)
    paths = write_delta_charts(comp, tmp_path, metric="ssim")
    assert [p.name for p in paths] == ["delta_ssim_Set_5_n1.png", "delta_ssim_Set_5_n_2.png"]
    ax = drawn_charts["delta_ssim_Set_5_n_2.png"].axes[0]
    assert ax.get_xlabel() == "Δ SSIM"
    stat = comp.stat("Set 5", "n 2", "ssim")
    assert _ci_extent(ax) == pytest.approx((stat.ci_low, stat.ci_high))
    top_down = sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])
    assert [t.get_text() for t in top_down] == ["i0", "i1"]  # i0 unchanged, i1 lost 0.01
