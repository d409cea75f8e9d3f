"""Shared test fixtures and helpers (one place: files import helpers from `tests.conftest`).

Real data lives in ../shared next to the repository, or where $MCIR_SHARED says
(read-only fixtures, never copied into the repo). Tests that need it call `shared_path(...)`, which skips the test with a
reason when the folder or file is absent (e.g. on a user's machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

# MCIR_SHARED points elsewhere (benchmarks/gpu_check.sh carries a subset to a GPU machine)
SHARED = Path(os.environ.get("MCIR_SHARED") or Path(__file__).resolve().parents[1].parent / "shared")


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the calling test if it does not exist."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared test data not found: {path}")
    return path


@pytest.fixture
def shared():
    """Fixture form of `shared_path`: `shared("data", "sr", "Set5")`."""
    return shared_path


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """The whole session on one intra-op thread: the tensors here are small, on a busy
    2-core host OpenMP spinning made some models up to 70x slower with two threads, and
    one thread keeps float reductions in the same order in every test and fixture."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def set5_crops(root: Path, names: tuple[str, ...], size: int, scale: int = 4) -> Path:
    """A small SR benchmark made from real Set5 images: `root/HR/<name>.png` (size x size
    top-left crops) and `root/LR_bicubic/X<s>/<name>x<s>.png` by MATLAB bicubic."""
    from mcir_cli.data.imageio import read_image, write_image
    from mcir_cli.data.resize import imresize

    for name in names:
        hr = read_image(shared_path("data", "sr", "Set5", "HR", f"{name}.png"))[:, :size, :size]
        write_image(root / "HR" / f"{name}.png", hr)
        write_image(root / "LR_bicubic" / f"X{scale}" / f"{name}x{scale}.png", imresize(hr, 1 / scale))
    return root


@pytest.fixture(scope="module")
def train_dir() -> Path:
    """20 real colour photos (HR only), disjoint from the test sets."""
    return shared_path("data", "train", "SunHays80_color_subset20")


@pytest.fixture(scope="module")
def train_crops(tmp_path_factory) -> Path:
    """96x96 crops of three of those photos (PNG), for tests whose many runs or processes
    each decode their training data at the start (the whole photos: ~4 s a process)."""
    from mcir_cli.data.imageio import read_image, write_image

    root = tmp_path_factory.mktemp("train")
    photos = shared_path("data", "train", "SunHays80_color_subset20")
    for photo in sorted(p for p in photos.iterdir() if p.suffix == ".jpg")[:3]:
        write_image(root / f"{photo.stem}.png", read_image(photo)[:, :96, :96])
    return root


@pytest.fixture(scope="module")
def imdn() -> Path:
    """Real IMDN x4 weights: the fastest real SR checkpoint to train on CPU."""
    return shared_path("weights", "IMDN", "IMDN_x4.pth")


@pytest.fixture(scope="module")
def dctlsa() -> Path:
    """Real DCTLSA x4 weights."""
    return shared_path("weights", "DCTLSA", "X4.pt")


@pytest.fixture(scope="module")
def small_val(tmp_path_factory) -> Path:
    """Two 64x64 HR crops of real Set5 images with MATLAB-bicubic LR (fast validation)."""
    return set5_crops(tmp_path_factory.mktemp("val"), ("baby", "bird"), 64)


@pytest.fixture(scope="module")
def set5_bench(tmp_path_factory) -> Path:
    """Three 48x48 crops of real Set5 images with MATLAB-bicubic LR: a fast benchmark."""
    return set5_crops(tmp_path_factory.mktemp("bench") / "Set5crops", ("baby", "bird", "butterfly"), 48)


CROP_NAMES = ("baby", "bird", "butterfly")


@pytest.fixture(scope="module")
def crops() -> dict[str, torch.Tensor]:
    """48x48 crops (3 x 48 x 48, [0, 1]) of three real Set5 HR images, by name (CROP_NAMES)."""
    from mcir_cli.data.imageio import read_image

    hr = shared_path("data", "sr", "Set5", "HR")
    return {n: read_image(hr / f"{n}.png")[:, 100:148, 60:108].contiguous() for n in CROP_NAMES}


@pytest.fixture(scope="module")
def live1_crops(tmp_path_factory) -> Path:
    """Three 48x48 crops of real LIVE1 originals (clean, lossless PNG): a fast benchmark."""
    from mcir_cli.data.imageio import read_image, write_image

    root = tmp_path_factory.mktemp("bench") / "LIVE1crops"
    for name in ("bikes", "caps", "dancers"):
        image = read_image(shared_path("data", "jpeg", "LIVE1_color_subset10", f"{name}.bmp"))
        write_image(root / f"{name}.png", image[:, 100:148, 200:248])
    return root


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB tmpfs (needs root and mount; skipped where either is missing)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def read_log(run: Path) -> list[dict]:
    """A run folder's log.jsonl, one dict per line."""
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def files_under(root: Path) -> list[str]:
    """Every file and folder below `root`, relative and sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_line_error(res, *names: object, code: int = 2) -> str:
    """A CLI result that failed with `code` and exactly one line, `error: ...` (no traceback,
    no "please report"), naming every one of `names`; returns the line."""
    assert res.exit_code == code, res.output
    line = res.output.strip()
    assert line.startswith("error: ") and "\n" not in line, res.output
    assert "Traceback" not in line and "please report" not in line, line
    for name in names:
        assert str(name) in line, line
    return line


class NeedsCode:
    """Pickled by reference: loading a checkpoint holding it needs this module's code."""

    def __init__(self) -> None:
        self.weights = torch.zeros(3)


RESULT_CONV = {"y_channel": True, "crop_border": 4, "quantize": "uint8"}


def result(label, datasets, conv=RESULT_CONV, checkpoint=None):
    """A result file's dict as `mcir evaluate` writes it. datasets: {name: {image: (psnr, ssim)}};
    dataset means are the image means."""
    return {
        "conventions": dict(conv),
        "model": {"checkpoint": checkpoint or f"/ckpt/{label}.pth", "sha256": "ab" * 32,
                  "architecture": "EDSR", "scale": 4, "label": label},
        "datasets": {
            ds: {"psnr": float(np.mean([v[0] for v in imgs.values()])),
                 "ssim": float(np.mean([v[1] for v in imgs.values()])),
                 "images": [{"name": n, "psnr": p, "ssim": s} for n, (p, s) in imgs.items()]}
            for ds, imgs in datasets.items()
        },
    }
