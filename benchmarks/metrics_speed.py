"""Speed of mcir's torch PSNR+SSIM against a NumPy implementation of the same conventions.

Images: Set14 HR (from ../shared) against their x4 bicubic LR upscaled back with
`mcir_cli.data.resize.imresize`; Y channel, border 4 px, uint8 levels (BasicSR).

The NumPy reference follows BasicSR's `calculate_psnr` / `calculate_ssim` step by step
(Y computed and stored in float32 by `to_y_channel`, then cast to float64 for the
metrics, as BasicSR >= 1.4 does; the README's reference vectors need exactly that); SSIM filters with cv2.filter2D as BasicSR
does when OpenCV is importable, else with a separable Gaussian in NumPy.

    python benchmarks/metrics_speed.py [--device cpu|cuda] [--repeat N] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mcir_cli.data.imageio import read_image, to_uint8  # noqa: E402
from mcir_cli.data.resize import imresize  # noqa: E402
from mcir_cli.metrics.basicsr import psnr, ssim  # noqa: E402
from mcir_cli.metrics.conventions import Conventions  # noqa: E402

try:
    import cv2  # type: ignore
except ImportError:  # BasicSR uses OpenCV; fall back to NumPy filtering
    cv2 = None


# ---------------------------------------------------------------- NumPy reference
def np_to_y_channel(img: np.ndarray) -> np.ndarray:
    """BasicSR `to_y_channel` on an H x W x 3 BGR array of 0-255 levels (float32 Y).
    Grey (H x W x 1) arrays are scored on their channel, as mcir does."""
    if img.shape[2] != 3:
        return img
    img = img.astype(np.float32) / 255.0
    y = np.dot(img, [24.966, 128.553, 65.481]) + 16.0
    y = (y / 255.0).astype(np.float32)
    return (y * 255.0)[..., None]


def _prepare(img: np.ndarray, img2: np.ndarray, crop: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """BasicSR's common preamble: float64, border crop, optional Y, float64 again."""
    img, img2 = img.astype(np.float64), img2.astype(np.float64)
    if crop:
        img, img2 = img[crop:-crop, crop:-crop], img2[crop:-crop, crop:-crop]
    if y_channel:
        img, img2 = np_to_y_channel(img), np_to_y_channel(img2)
    img, img2 = img.astype(np.float64), img2.astype(np.float64)  # after Y, as BasicSR >= 1.4
    return img, img2


def np_psnr(img: np.ndarray, img2: np.ndarray, crop: int, y_channel: bool) -> float:
    img, img2 = _prepare(img, img2, crop, y_channel)
    mse = np.mean((img - img2) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0 * 255.0 / mse))


def _gauss_1d() -> np.ndarray:
    i = np.arange(11, dtype=np.float64) - 5.0
    g = np.exp(-(i * i) / (2 * 1.5**2))
    return g / g.sum()


def _filter_valid_np(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 11x11 Gaussian, 'valid' region, in NumPy (sum of 11 shifted slices)."""
    h, w = x.shape
    rows = sum(g[k] * x[k : h - 10 + k, :] for k in range(11))
    return sum(g[k] * rows[:, k : w - 10 + k] for k in range(11))


def _filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    if cv2 is not None:
        return cv2.filter2D(x, -1, np.outer(g, g))[5:-5, 5:-5]
    return _filter_valid_np(x, g)


def _np_ssim_channel(img: np.ndarray, img2: np.ndarray) -> float:
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    g = _gauss_1d()
    mu1, mu2 = _filter(img, g), _filter(img2, g)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = _filter(img**2, g) - mu1_sq
    sigma2_sq = _filter(img2**2, g) - mu2_sq
    sigma12 = _filter(img * img2, g) - mu1_mu2
    ssim_map = ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return float(ssim_map.mean())


def np_ssim(img: np.ndarray, img2: np.ndarray, crop: int, y_channel: bool) -> float:
    img, img2 = _prepare(img, img2, crop, y_channel)
    return float(np.mean([_np_ssim_channel(img[..., i], img2[..., i]) for i in range(img.shape[2])]))


# ---------------------------------------------------------------- benchmark
def load_pairs(scale: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    root = ROOT.parent / "shared" / "data" / "sr" / "Set14"
    if not root.is_dir():
        sys.exit(f"benchmark data not found: {root}")
    pairs = []
    for hr_path in sorted((root / "HR").glob("*.png")):
        hr = read_image(hr_path)
        lr = read_image(root / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png")
        hr = hr[:, : lr.shape[1] * scale, : lr.shape[2] * scale]
        up = imresize(lr, float(scale)).clamp(0, 1)
        pairs.append((up, hr))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    conv = Conventions(y_channel=True, crop_border=4)
    pairs = load_pairs()
    n = len(pairs)
    # BasicSR reads BGR uint8 arrays.
    np_pairs = [(to_uint8(a).permute(1, 2, 0).numpy()[..., ::-1], to_uint8(b).permute(1, 2, 0).numpy()[..., ::-1])
                for a, b in pairs]
    dev_pairs = [(a.to(device), b.to(device)) for a, b in pairs]

    def run_torch() -> list[tuple[float, float]]:
        out = [(psnr(a, b, conv), ssim(a, b, conv)) for a, b in dev_pairs]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return [(float(p), float(s)) for p, s in out]

    def run_numpy() -> list[tuple[float, float]]:
        return [(np_psnr(a, b, 4, True), np_ssim(a, b, 4, True)) for a, b in np_pairs]

    t_vals = run_torch()  # warm-up (and CUDA init)
    n_vals = run_numpy()
    dp = max(abs(x[0] - y[0]) for x, y in zip(t_vals, n_vals))
    ds = max(abs(x[1] - y[1]) for x, y in zip(t_vals, n_vals))

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    t_torch, t_numpy = timed(run_torch), timed(run_numpy)
    mean_p = sum(v[0] for v in t_vals) / n
    mean_s = sum(v[1] for v in t_vals) / n
    print(f"Set14 x4 bicubic, {n} images, Y channel, border 4; torch {torch.__version__} on {device}, "
          f"{torch.get_num_threads()} CPU threads; NumPy reference SSIM via "
          f"{'cv2.filter2D' if cv2 is not None else 'separable NumPy filter'}")
    print(f"mean PSNR {mean_p:.4f} dB, SSIM {mean_s:.4f}; max |torch - numpy|: PSNR {dp:.2e} dB, SSIM {ds:.2e}")
    print(f"torch : {n / t_torch:8.2f} images/s  ({t_torch * 1000:.1f} ms for {n}, best of {args.repeat})")
    print(f"numpy : {n / t_numpy:8.2f} images/s  ({t_numpy * 1000:.1f} ms for {n}, best of {args.repeat})")
    print(f"ratio : torch is {t_numpy / t_torch:.2f}x the NumPy rate")


if __name__ == "__main__":
    main()
