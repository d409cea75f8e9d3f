"""visuals.py: strip layout (exact sizes), divergence maps, heat colours, bar charts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mcir_cli.results import compare_results
from mcir_cli.visuals import (
    LABEL_H,
    SEP,
    comparison_strip,
    crop_size,
    delta_bar_chart,
    divergence_map,
    heatmap_image,
    largest_delta_images,
    largest_difference_box,
    save_image,
    write_delta_charts,
)


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


def test_bar_chart():
    names = ["a", "b", "c", "d", "e"]
    deltas = [0.3, -0.2, 0.1, math.inf, -0.05]
    chart = delta_bar_chart(names, deltas, "Set5: PSNR retrained - baseline")
    assert chart.size == (720, 360)
    arr = np.asarray(chart)
    assert (arr == (46, 160, 67)).all(-1).any() and (arr == (207, 34, 46)).all(-1).any()
    small = delta_bar_chart(names, deltas, "t", size=(200, 120))
    assert small.size == (200, 120)
    empty = delta_bar_chart([], [], "nothing")
    assert empty.size == (720, 360)
    zero = delta_bar_chart(["a"], [0.0], "zero")
    assert zero.size == (720, 360)
    with pytest.raises(ValueError):
        delta_bar_chart(["a"], [], "bad")


def test_bar_chart_green_up_red_down():
    chart = np.asarray(delta_bar_chart(["up", "down"], [1.0, -1.0], "t", size=(300, 200)))
    green = np.argwhere(np.all(chart == (46, 160, 67), axis=-1))
    red = np.argwhere(np.all(chart == (207, 34, 46), axis=-1))
    # sorted largest first: the green bar is left of and above the red one
    assert green[:, 1].max() < red[:, 1].min()
    assert green[:, 0].max() < red[:, 0].min()


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


def test_write_delta_charts(tmp_path):
    def res(label, vals):
        return {"conventions": {"y_channel": True, "crop_border": 4, "quantize": "uint8"},
                "model": {"checkpoint": f"{label}.pth", "label": label},
                "datasets": {"Set 5": {"psnr": float(np.mean(vals)), "ssim": 0.9,
                                       "images": [{"name": f"i{k}", "psnr": v, "ssim": 0.9}
                                                  for k, v in enumerate(vals)]}}}

    comp = compare_results([res("b", [30.0, 31.0]), res("n", [30.5, 30.0])], n_resamples=10)
    paths = write_delta_charts(comp, tmp_path)
    assert [p.name for p in paths] == ["delta_psnr_Set_5.png"]
    with Image.open(paths[0]) as im:
        assert im.size == (720, 360)
