"""The demo's built-in data: photos bundled with scikit-image, shrunk, written as an
HR-only training folder and an SR benchmark folder (HR + LR_bicubic/X4, LR made with
MATLAB-exact bicubic). Training and test photos are disjoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mcir_cli.data.datasets import mod_crop
from mcir_cli.data.imageio import write_image
from mcir_cli.data.resize import imresize
from mcir_cli.errors import McirError

SCALE = 4
# Disjoint sets of scikit-image's bundled photos (grey ones are stored as RGB).
TRAIN_PHOTOS = ("astronaut", "coffee", "rocket", "hubble_deep_field", "retina", "colorwheel")
TEST_PHOTOS = ("chelsea", "immunohistochemistry", "stereo_motorcycle", "camera", "coins",
               "moon", "grass", "gravel")
TRAIN_MAX_SIDE = 256  # HR pixels
TEST_MAX_SIDE = 192

Say = Callable[[str, str], None]  # (message, kind: "info" | "warn")


def _photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo as a float CHW RGB tensor in [0, 1]."""
    import numpy as np
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs: the left view
        img = img[0]
    arr = np.asarray(img)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float() / 255.0


def _shrink(img: torch.Tensor, max_side: int, multiple: int) -> torch.Tensor:
    """Downscale (MATLAB bicubic, uint8 levels) so the longer side is <= max_side, then
    crop to a multiple of `multiple`."""
    h, w = img.shape[-2:]
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        size = (max(multiple, round(h * f)), max(multiple, round(w * f)))
        img = (imresize(img.double(), size=size).clamp(0, 1) * 255).round().float() / 255
    return mod_crop(img, multiple)


def make_data(root: Path, n_train: int = len(TRAIN_PHOTOS), n_test: int = len(TEST_PHOTOS),
              scale: int = SCALE, say: Say | None = None) -> tuple[Path, Path, list[str], list[str]]:
    """Write `root/train/<photo>.png` (HR only) and `root/test/HR/<photo>.png` +
    `root/test/LR_bicubic/X{s}/<photo>x{s}.png`. Photos that scikit-image cannot provide
    (e.g. not downloadable offline) are skipped; too few is a McirError."""
    def take(names: tuple[str, ...], n: int) -> list[tuple[str, torch.Tensor]]:
        got = []
        for name in names:
            if len(got) == n:
                break
            try:
                got.append((name, _photo(name)))
            except Exception as exc:  # noqa: BLE001 - a photo pooch cannot fetch offline
                if say:
                    say(f"scikit-image photo {name!r} unavailable ({type(exc).__name__}); skipped", "warn")
        return got

    try:
        import skimage.data  # noqa: F401
    except ImportError:
        raise McirError("mcir demo needs scikit-image for its photos: pip install scikit-image") from None
    train = take(TRAIN_PHOTOS, n_train)
    test = take(TEST_PHOTOS, n_test)
    if len(train) < min(2, n_train) or len(test) < min(2, n_test):
        raise McirError("too few scikit-image sample photos are available for the demo")
    train_dir, test_dir = root / "train", root / "test"
    for name, img in train:
        write_image(train_dir / f"{name}.png", _shrink(img, TRAIN_MAX_SIDE, scale))
    for name, img in test:
        hr = _shrink(img, TEST_MAX_SIDE, scale)
        write_image(test_dir / "HR" / f"{name}.png", hr)
        lr = (imresize(hr.double(), 1 / scale).clamp(0, 1) * 255).round().float() / 255
        write_image(test_dir / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png", lr)
    return train_dir, test_dir, [n for n, _ in train], [n for n, _ in test]
