"""Real-ESRGAN's second-order degradation: the sampled parameters follow the configured
ranges and probabilities over many draws, the kernels follow BasicSR's formulas, the JPEG
stays close to libjpeg, the same seed gives the same batch, and bad settings are one line.

Statistical checks: every observed rate or mean lies within 4 standard errors of its
configured value (a wrong probability of 0.1 in 0.45, or a range off by 10 %, is many
standard errors away); the draws are seeded, so each check gives the same verdict on every
run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from benchmarks.jpeg_vs_libjpeg import libjpeg, psnr  # the measurement docs/datasets.md records
from mcir_cli.cli import app
from mcir_cli.data.imageio import read_image
from mcir_cli.data.realesrgan.jpeg_sim import jpeg
from mcir_cli.data.realesrgan.kernels import (
    KernelDraw,
    draw_blur,
    draw_final_sinc,
    shaped_kernel,
    sinc_kernel,
    usm_kernel,
)
from mcir_cli.data.realesrgan.pipeline import DIRECTIONS, RESIZE_MODES, Degrader, draw_plan
from mcir_cli.data.realesrgan.settings import KERNEL_TYPES, RealESRGANSettings, read_table_file, settings_from_dict
from mcir_cli.errors import McirError
from mcir_cli.train.config import load_config_file, make_config
from tests.conftest import shared_path

DEFAULTS = RealESRGANSettings()
SE = 4.0  # tolerance, in standard errors


def assert_rate(hits: int, n: int, p: float, what: str) -> None:
    se = math.sqrt(p * (1 - p) / n)
    assert abs(hits / n - p) <= SE * se, f"{what}: {hits}/{n} = {hits / n:.4f}, configured {p} (±{SE * se:.4f})"


def assert_uniform(values: list[float], lo: float, hi: float, what: str) -> None:
    """Inside [lo, hi], mean (lo+hi)/2 and spread (hi-lo)/√12 as a uniform draw has."""
    v = np.asarray(values)
    assert v.min() >= lo and v.max() <= hi, f"{what}: [{v.min()}, {v.max()}] outside [{lo}, {hi}]"
    sd = (hi - lo) / math.sqrt(12)
    assert abs(v.mean() - (lo + hi) / 2) <= SE * sd / math.sqrt(len(v)), f"{what}: mean {v.mean()}"
    assert v.min() - lo < 0.02 * (hi - lo) and hi - v.max() < 0.02 * (hi - lo), f"{what}: does not reach its ends"


def test_blur_kernel_draws_follow_the_settings():
    g = torch.Generator().manual_seed(0)
    n = 2000
    draws = [draw_blur(DEFAULTS, g)[1] for _ in range(n)]
    sinc = [d for d in draws if d.kind == "sinc"]
    shaped = [d for d in draws if d.kind != "sinc"]
    assert_rate(len(sinc), n, DEFAULTS.sinc_prob, "sinc_prob")
    for kind, p in zip(KERNEL_TYPES, DEFAULTS.kernel_prob):
        assert_rate(sum(d.kind == kind for d in shaped), len(shaped), p, f"kernel_prob {kind}")
    sizes = [d.size for d in draws]
    for size in range(7, 22, 2):  # realesrgan_dataset.py's kernel_range, uniformly
        assert_rate(sizes.count(size), n, 1 / 8, f"kernel size {size}")
    assert_uniform([d.sigma_x for d in shaped], *DEFAULTS.blur_sigma, "blur_sigma (x)")
    aniso = [d for d in shaped if "aniso" in d.kind]
    assert_uniform([d.sigma_y for d in aniso], *DEFAULTS.blur_sigma, "blur_sigma (y)")
    assert_uniform([d.theta for d in aniso], -math.pi, math.pi, "rotation")
    assert all(d.sigma_y == d.sigma_x and d.theta == 0 for d in shaped if "aniso" not in d.kind)
    for prefix, lo_hi in (("generalized", DEFAULTS.betag_range), ("plateau", DEFAULTS.betap_range)):
        betas = [d.beta for d in shaped if d.kind.startswith(prefix)]
        assert lo_hi[0] <= min(betas) and max(betas) <= lo_hi[1], prefix
        if lo_hi[0] < 1:  # half the draws below 1, half above (BasicSR)
            assert_rate(sum(b < 1 for b in betas), len(betas), 0.5, f"{prefix} β below 1")
    small = [d.omega for d in sinc if d.size < 13]
    assert min(small) >= math.pi / 3 and max(d.omega for d in sinc) <= math.pi
    assert min(d.omega for d in sinc if d.size >= 13) >= math.pi / 5


def test_second_and_final_kernels_follow_their_own_settings():
    g = torch.Generator().manual_seed(1)
    n = 1000
    second = [draw_blur(DEFAULTS, g, second=True)[1] for _ in range(n)]
    assert_uniform([d.sigma_x for d in second if d.kind != "sinc"], *DEFAULTS.blur_sigma2, "blur_sigma2")
    final = [draw_final_sinc(DEFAULTS, g) for _ in range(n)]
    assert_rate(sum(d.kind == "sinc" for _, d in final), n, DEFAULTS.final_sinc_prob, "final_sinc_prob")
    assert_uniform([d.omega for _, d in final if d.kind == "sinc"], math.pi / 3, math.pi, "final sinc cut-off")
    pulse = next(k for k, d in final if d.kind == "pulse")
    assert pulse.sum() == 1 and pulse[10, 10] == 1  # the identity, padded to 21


def test_batch_draws_follow_the_settings():
    g = torch.Generator().manual_seed(2)
    plans = [draw_plan(DEFAULTS, 4, g) for _ in range(1500)]
    n = len(plans)
    for stage, probs, (lo, hi) in (("resize1", DEFAULTS.resize_prob, DEFAULTS.resize_range),
                                   ("resize2", DEFAULTS.resize_prob2, DEFAULTS.resize_range2)):
        draws = [getattr(p, stage) for p in plans]
        for direction, prob in zip(DIRECTIONS, probs):
            assert_rate(sum(r.direction == direction for r in draws), n, prob, f"{stage} {direction}")
        assert_uniform([r.factor for r in draws if r.direction == "up"], 1.0, hi, f"{stage} up")
        assert_uniform([r.factor for r in draws if r.direction == "down"], lo, 1.0, f"{stage} down")
        assert all(r.factor == 1 for r in draws if r.direction == "keep")
        for mode in RESIZE_MODES:
            assert_rate(sum(r.mode == mode for r in draws), n, 1 / 3, f"{stage} {mode}")
    for stage, sfx in (("noise1", ""), ("noise2", "2")):
        noises = [getattr(p, stage) for p in plans]
        gaussian = [x for x in noises if x.gaussian]
        assert_rate(len(gaussian), n, getattr(DEFAULTS, "gaussian_noise_prob" + sfx), f"{stage} gaussian")
        assert_uniform(torch.cat([x.level for x in gaussian]).tolist(), *getattr(DEFAULTS, "noise_range" + sfx),
                       f"{stage} σ")
        assert_uniform(torch.cat([x.level for x in noises if not x.gaussian]).tolist(),
                       *getattr(DEFAULTS, "poisson_scale_range" + sfx), f"{stage} Poisson scale")
        grey = torch.cat([x.grey for x in noises])
        assert_rate(int(grey.sum()), grey.numel(), getattr(DEFAULTS, "gray_noise_prob" + sfx), f"{stage} grey")
    assert_uniform(torch.cat([p.quality1 for p in plans]).tolist(), *DEFAULTS.jpeg_range, "jpeg_range")
    assert_uniform(torch.cat([p.quality2 for p in plans]).tolist(), *DEFAULTS.jpeg_range2, "jpeg_range2")
    assert_rate(sum(p.blur2 for p in plans), n, DEFAULTS.second_blur_prob, "second_blur_prob")
    assert_rate(sum(p.sinc_first for p in plans), n, 0.5, "final order")


def _basicsr_kernel(size: int, sx: float, sy: float, theta: float, beta: float, kind: str) -> np.ndarray:
    """BasicSR's bivariate kernels from their definitions (degradations.py), in numpy."""
    ax = np.arange(-size // 2 + 1.0, size // 2 + 1.0)
    xx, yy = np.meshgrid(ax, ax)
    grid = np.stack([xx, yy], -1)
    u = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    inv = np.linalg.inv(u @ np.diag([sx**2, sy**2]) @ u.T)
    q = np.sum((grid @ inv) * grid, 2)
    k = {"gauss": np.exp(-0.5 * q), "generalized": np.exp(-0.5 * q**beta), "plateau": 1 / (q**beta + 1)}[kind]
    return k / k.sum()


@pytest.mark.unit
def test_kernels_follow_basicsr_definitions():
    from scipy import special

    for kind, name in (("aniso", "gauss"), ("generalized_aniso", "generalized"), ("plateau_aniso", "plateau")):
        mine = shaped_kernel(KernelDraw(kind, 15, 2.3, 0.7, 0.9, 1.7)).numpy()
        assert np.allclose(mine, _basicsr_kernel(15, 2.3, 0.7, 0.9, 1.7, name), rtol=0, atol=1e-12), kind
    omega, size = 1.3, 13
    c = (size - 1) / 2
    r = np.hypot(*np.meshgrid(np.arange(size) - c, np.arange(size) - c))
    with np.errstate(invalid="ignore", divide="ignore"):
        want = omega * special.j1(omega * r) / (2 * np.pi * r)
    want[6, 6] = omega**2 / (4 * np.pi)
    # torch's float64 bessel_j1 differs from scipy's (Cephes) by up to 5e-7 at these radii
    assert np.allclose(sinc_kernel(omega, size).numpy(), want / want.sum(), rtol=0, atol=5e-8)
    usm = usm_kernel()  # OpenCV getGaussianKernel(51, 0): σ = 8
    assert usm.shape == (51, 51) and usm.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert usm[25, 25] / usm[25, 33] == pytest.approx(math.exp(0.5), rel=1e-12)


@pytest.mark.unit
def test_jpeg_is_close_to_libjpeg():
    """Measured on this crop: ours vs Pillow's libjpeg 37-42 dB; each one's loss against the
    clean image within 1.3 dB of the other's (docs/datasets.md)."""
    img = read_image(shared_path("data", "sr", "Set5", "HR", "butterfly.png"))[:, :250, :250]
    for q in (10, 50, 90):
        ours, pil = jpeg(img[None], torch.tensor([float(q)]))[0], libjpeg(img, q)
        assert psnr(ours, pil) > 36, q
        assert abs(psnr(ours, img) - psnr(pil, img)) < 1.5, q
    batch = jpeg(torch.stack([img, img]), torch.tensor([10.0, 90.0]))  # per-image quality in one call
    assert torch.equal(batch[0], jpeg(img[None], torch.tensor([10.0]))[0])
    assert psnr(batch[1], img) > psnr(batch[0], img) + 5
    assert torch.isfinite(jpeg(img[None], torch.tensor([100.0]))).all()


def _batch(seed: int, n: int = 3) -> tuple[dict, torch.Tensor]:
    from mcir_cli.data.datasets import PatchDataset, discover

    ds = discover(shared_path("data", "train", "SunHays80_color_subset20"), 4, "sr")
    patches = PatchDataset([ds], 16, length=100, seed=seed, cache=False,
                           degradation=RealESRGANSettings(crop_pad_size=64))
    return torch.utils.data.default_collate([patches[i] for i in range(n)])


@pytest.mark.unit
def test_same_seed_same_batch():
    degrade = Degrader(RealESRGANSettings(crop_pad_size=64), 4, 16, torch.device("cpu"))
    lq, gt = degrade(*_batch(0))
    lq2, gt2 = degrade(*_batch(0))
    assert lq.shape == (3, 3, 16, 16) and gt.shape == (3, 3, 64, 64)
    assert torch.equal(lq, lq2) and torch.equal(gt, gt2)
    assert torch.equal(lq, (lq * 255).round() / 255)  # 8-bit levels, as Real-ESRGAN rounds
    lq3, _ = degrade(*_batch(1))
    assert not torch.equal(lq, lq3)


@pytest.mark.unit
def test_bad_settings_are_one_line(tmp_path: Path):
    bad = tmp_path / "deg.toml"
    bad.write_text("[degradation]\nblur_sigmaa = [0.2, 3]\n")
    with pytest.raises(McirError, match=r"deg\.toml: unknown key 'blur_sigmaa' in \[degradation\]"):
        read_table_file(bad)
    bad.write_text("[degradation]\nnoise_range2 = [25, 1]\n")
    with pytest.raises(McirError, match=r"deg\.toml: \[degradation\] noise_range2: low end 25 exceeds high end 1"):
        read_table_file(bad)
    with pytest.raises(McirError, match="jpeg_range"):
        settings_from_dict({"jpeg_range": [0, 95]})
    run_file = tmp_path / "run.toml"  # the same table in a run file (retrain --config)
    run_file.write_text("iters = 3\n[degradation]\ntype = \"realesrgan\"\nresize_range = [1.5, 0.15]\n")
    with pytest.raises(McirError, match=r"run\.toml: \[degradation\] resize_range: low end 1.5 exceeds high end 0.15"):
        load_config_file(run_file)
    res = CliRunner().invoke(app, ["retrain", "--checkpoint", str(shared_path("weights", "IMDN", "IMDN_x4.pth")),
                                   "--data", str(tmp_path), "--degradation-config", str(bad), "-o", str(tmp_path / "r")])
    out = res.output.strip()
    assert res.exit_code == 2 and out.startswith("error: ") and "\n" not in out and "noise_range2" in out, out
    assert str(bad) in out and not (tmp_path / "r").exists()


@pytest.mark.unit
def test_preset_carries_the_published_settings():
    """The preset's [degradation] table restates the defaults; its recipe is RealESRNet's
    (its network, count and forward: tests/models/test_presets.py)."""
    from mcir_cli.models.presets import get_preset

    preset = get_preset("realesrnet-x4plus")
    assert preset.degradation == "realesrgan" and preset.architecture == "ESRGAN"
    assert settings_from_dict(preset.degradation_settings) == DEFAULTS
    r = preset.recipe
    assert (r.lr, r.betas, r.batch, r.patch, r.loss, r.ema_decay) == (2e-4, (0.9, 0.99), 48, 64, "l1", 0.999)
    cfg = make_config(["DF2K"], "run", model="realesrnet-x4plus", degradation_settings={"noise_range": [1, 10]})
    assert cfg.degradation == "realesrgan" and cfg.lr == 2e-4  # where its (constant) schedule ends
    assert settings_from_dict(cfg.degradation_settings) == RealESRGANSettings(noise_range=(1.0, 10.0))
    assert make_config(["DF2K"], "run", model="realesrnet-x4plus", degradation="none").degradation is None
