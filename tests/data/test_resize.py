"""mcir_cli.data.resize: MATLAB bicubic imresize, checked bit-exactly against Set5/Set14 LR."""

from __future__ import annotations

import math

import pytest
import torch
from tests.conftest import shared_path

from mcir_cli.data.imageio import read_image, to_uint8
from mcir_cli.data.resize import imresize, is_uint8_levels, resize_weights


@pytest.mark.parametrize("dataset", ["Set5", "Set14"])
def test_reproduces_benchmark_lr_exactly(dataset):
    root = shared_path("data", "sr", dataset)
    hr_paths = sorted((root / "HR").glob("*.png"))
    assert hr_paths
    for hr_path in hr_paths:
        hr = read_image(hr_path)
        for s in (2, 3, 4):
            lr = to_uint8(read_image(root / "LR_bicubic" / f"X{s}" / f"{hr_path.stem}x{s}.png"))
            h, w = hr.shape[1] // s * s, hr.shape[2] // s * s
            out = to_uint8(imresize(hr[:, :h, :w], 1 / s))
            assert out.shape == lr.shape, (hr_path.name, s)
            diff = (out.int() - lr.int()).abs().max().item()
            assert diff == 0, f"{dataset}/{hr_path.name} x{s}: max abs diff {diff}"


@pytest.mark.unit
def test_weights_rows_sum_to_one_and_mirror():
    for in_len, out_len, scale in [(12, 6, 0.5), (12, 4, 1 / 3), (5, 20, 4.0), (7, 7, 1.0)]:
        w = resize_weights(in_len, out_len, scale)
        assert w.shape == (out_len, in_len) and w.dtype == torch.float64
        assert torch.allclose(w.sum(1), torch.ones(out_len, dtype=torch.float64), atol=1e-12)
    assert torch.equal(resize_weights(7, 7, 1.0), torch.eye(7, dtype=torch.float64))
    # Downscale x2: 8 taps around u = 2x - 0.5 (1-based), symmetric, negative lobes.
    w = resize_weights(16, 8, 0.5)
    assert torch.allclose(w[3, 3:11], w[3, 3:11].flip(0)) and w[3, 3:11].min() < 0


@pytest.mark.unit
def test_scale_one_is_identity_and_float_path_not_clamped():
    x = torch.rand(3, 9, 11, dtype=torch.float64) * 3 - 1
    assert torch.allclose(imresize(x, 1.0), x)
    step = torch.zeros(1, 8, 8)
    step[..., 4:] = 1.0
    up = imresize(step, 2.0, uint8=False)
    assert up.min() < 0 and up.max() > 1  # bicubic overshoot is kept


@pytest.mark.unit
def test_output_sizes_and_dtype():
    x = torch.rand(2, 3, 255, 100)
    out = imresize(x, 1 / 3)
    assert out.shape == (2, 3, 85, math.ceil(100 / 3)) and out.dtype == torch.float32
    assert imresize(x, size=(50, 200)).shape == (2, 3, 50, 200)
    with pytest.raises(ValueError):
        imresize(x)
    with pytest.raises(ValueError):
        imresize(x, 0.5, size=(10, 10))


@pytest.mark.unit
def test_batch_equals_single_images():
    x = torch.rand(3, 3, 20, 24)
    batch = imresize(x, 0.5)
    for i in range(3):
        assert torch.allclose(batch[i], imresize(x[i], 0.5), atol=1e-7)


@pytest.mark.unit
def test_constant_image_stays_constant():
    x = torch.full((1, 13, 17), 0.3, dtype=torch.float64)
    for scale in (0.25, 0.5, 1 / 3, 2.0, 3.0):
        assert torch.allclose(imresize(x, scale), x.new_full((1,), 0.3), atol=1e-12)


@pytest.mark.unit
def test_uint8_path_detection_and_levels():
    levels = torch.randint(0, 256, (3, 16, 16), generator=torch.Generator().manual_seed(0)).float() / 255
    assert is_uint8_levels(levels)
    assert not is_uint8_levels(levels + 0.001)
    out = imresize(levels, 0.5)
    assert is_uint8_levels(out) and out.min() >= 0 and out.max() <= 1
    # the float path differs only by rounding (and by clamping where bicubic overshoots)
    assert (imresize(levels, 0.5, uint8=False) - out).abs().mean() <= 0.5 / 255


@pytest.mark.unit
def test_uint8_path_resizes_smaller_scale_first():
    x = torch.randint(0, 256, (1, 12, 10), generator=torch.Generator().manual_seed(0)).double()

    def manual(first: str) -> torch.Tensor:
        wh, ww = resize_weights(12, 6, 0.5), resize_weights(10, 30, 3.0)
        q = lambda t: torch.floor(t.clamp(0, 255) + 0.5)  # noqa: E731
        y = q(wh @ x) if first == "h" else q(x @ ww.T)
        return q(y @ ww.T) if first == "h" else q(wh @ y)

    out = imresize(x / 255, size=(6, 30)) * 255
    assert torch.allclose(out, manual("h"))  # height scale 0.5 < width scale 3
    assert not torch.allclose(manual("h"), manual("w"))  # the order matters on this path
