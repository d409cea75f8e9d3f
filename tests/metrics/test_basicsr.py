"""mcir_cli.metrics (basicsr, conventions): BasicSR-exact PSNR/SSIM (reference vectors from ../shared/README.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.conftest import shared_path

from mcir_cli.data.imageio import read_image
from mcir_cli.data.resize import imresize
from mcir_cli.metrics.basicsr import PSNRSSIM, psnr, ssim
from mcir_cli.metrics.conventions import Conventions, quantize, rgb_to_y

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def _bgr_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """BasicSR's H x W x 3 BGR uint8 array -> our RGB CHW [0, 1] tensor."""
    return torch.from_numpy(arr[..., ::-1].copy()).permute(2, 0, 1).float() / 255.0


def _reference_pair() -> tuple[torch.Tensor, torch.Tensor]:
    rs = np.random.RandomState(0)
    gt = rs.randint(0, 256, (64, 64, 3)).astype(np.uint8)
    sr = np.clip(gt + rs.randint(-10, 11, (64, 64, 3)), 0, 255).astype(np.uint8)
    return _bgr_to_tensor(sr), _bgr_to_tensor(gt)


@pytest.mark.parametrize(
    "crop, y_channel, want_psnr, want_ssim",
    [
        (0, False, 32.638667, 0.996628),
        (0, True, 37.465331, 0.996628),
        (4, False, 32.626466, 0.996615),
        (4, True, 37.471772, 0.996720),
    ],
)
def test_basicsr_reference_vectors(crop, y_channel, want_psnr, want_ssim):
    sr, gt = _reference_pair()
    conv = Conventions(y_channel=y_channel, crop_border=crop)
    p, s = psnr(sr, gt, conv), ssim(sr, gt, conv)
    assert p.dim() == 0 and p.dtype == torch.float64
    assert abs(p.item() - want_psnr) < 1e-5
    assert abs(s.item() - want_ssim) < 1e-6


def test_batched_equals_single_and_order_of_arguments():
    sr, gt = _reference_pair()
    batch_sr = torch.stack([sr, gt, sr.flip(-1)])
    batch_gt = torch.stack([gt, gt, gt])
    conv = Conventions(y_channel=True, crop_border=4)
    p, s = psnr(batch_sr, batch_gt, conv), ssim(batch_sr, batch_gt, conv)
    assert p.shape == (3,) and s.shape == (3,)
    for i in range(3):
        assert p[i].item() == pytest.approx(psnr(batch_sr[i], batch_gt[i], conv).item(), abs=1e-12)
        assert s[i].item() == pytest.approx(ssim(batch_sr[i], batch_gt[i], conv).item(), abs=1e-12)
    assert math.isinf(p[1].item()) and s[1].item() == pytest.approx(1.0, abs=1e-12)
    assert ssim(gt, sr, conv).item() == pytest.approx(s[0].item(), abs=1e-12)


def test_identical_images():
    img = torch.rand(3, 32, 40)
    for conv in (Conventions(True, 4), Conventions(False, 0)):
        assert psnr(img, img, conv).item() == math.inf
        assert ssim(img, img, conv).item() == pytest.approx(1.0, abs=1e-12)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 32, 32\).*\(3, 32, 30\)"):
        psnr(torch.rand(3, 32, 32), torch.rand(3, 32, 30), Conventions(True, 0))
    with pytest.raises(ValueError):
        ssim(torch.rand(1, 3, 32, 32), torch.rand(3, 32, 32), Conventions(True, 0))


def test_quantize_is_uint8_levels():
    x = torch.tensor([-1.0, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 3.0])
    q = quantize(x)
    assert q.dtype == torch.float64
    assert q.tolist() == [0.0, 0.0, 0.0, 2.0, 128.0, 255.0, 255.0]  # half to even, like np.round
    # sub-level differences vanish before scoring
    img = torch.rand(3, 24, 24)
    conv = Conventions(False, 0)
    assert math.isinf(psnr(img, quantize(img).float() / 255 + 0.4 / 255, conv).item())


def test_rgb_to_y():
    levels = torch.tensor([[0.0, 255.0, 255.0, 0.0], [0.0, 255.0, 0.0, 0.0], [0.0, 255.0, 0.0, 255.0]])
    y = rgb_to_y(levels.view(3, 1, 4))[0, 0]
    assert y.tolist() == pytest.approx([16.0, 235.0, 16 + 65.481, 16 + 24.966], abs=1e-4)
    assert y.dtype == torch.float64


def test_grey_images_score_their_channel():
    a, b = torch.rand(1, 30, 30), torch.rand(1, 30, 30)
    for fn in (psnr, ssim):
        assert fn(a, b, Conventions(True, 2)).item() == fn(a, b, Conventions(False, 2)).item()


def test_conventions():
    sr = Conventions.for_task("sr", 4)
    assert sr == Conventions(y_channel=True, crop_border=4)
    assert sr.as_dict() == {"y_channel": True, "crop_border": 4, "quantize": "uint8"}
    assert "Y channel" in sr.describe() and "4 px" in sr.describe()
    for task in ("dehaze", "derain", "deblur", "denoise"):
        assert Conventions.for_task(task, 1) == Conventions(y_channel=False, crop_border=0)
    assert "RGB" in Conventions.for_task("dehaze", 1).describe()
    grey = Conventions.for_task("denoise", 1, grey=True)  # a one-channel model: no "RGB" label
    assert grey.describe().startswith("grey (the stored channel") and "RGB" not in grey.describe()
    assert grey.as_dict()["grey"] is True and "grey" not in Conventions.for_task("denoise", 1).as_dict()
    assert "grey images: their stored grey values" in Conventions.for_task("jpeg", 1, grey=True).describe()
    with pytest.raises(ValueError):
        Conventions.for_task("colorize", 1)


def test_psnrssim_accumulator():
    sr, gt = _reference_pair()
    conv = Conventions(True, 4)
    meter = PSNRSSIM(conv)
    meter.update(sr, gt)
    meter.update(torch.stack([sr, sr]), torch.stack([gt, gt]))
    assert len(meter.per_image) == 3
    result = meter.compute()
    assert result["psnr"] == pytest.approx(37.471772, abs=1e-5)
    assert result["ssim"] == pytest.approx(0.996720, abs=1e-6)
    meter.reset()
    assert math.isnan(meter.compute()["psnr"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    sr, gt = _reference_pair()
    conv = Conventions(True, 4)
    assert psnr(sr.cuda(), gt.cuda(), conv).item() == pytest.approx(psnr(sr, gt, conv).item(), abs=1e-9)
    assert ssim(sr.cuda(), gt.cuda(), conv).item() == pytest.approx(ssim(sr, gt, conv).item(), abs=1e-9)


def test_set5_bicubic_baseline_matches_readme():
    """README: bicubic x4 Set5, Y, border 4 -> 28.43 dB / 0.8111 (LR from ../shared)."""
    root = shared_path("data", "sr", "Set5")
    meter = PSNRSSIM(Conventions.for_task("sr", 4))
    for hr_path in sorted((root / "HR").glob("*.png")):
        lr = read_image(root / "LR_bicubic" / "X4" / f"{hr_path.stem}x4.png")
        hr = read_image(hr_path)[:, : lr.shape[1] * 4, : lr.shape[2] * 4]
        meter.update(imresize(lr, 4.0), hr)
    result = meter.compute()
    assert round(result["psnr"], 2) == 28.43
    assert round(result["ssim"], 4) == 0.8111
