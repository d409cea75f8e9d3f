"""Shared test helpers.

Real data lives in ../shared next to the repository, or where $MCIR_SHARED says
(read-only fixtures, never copied into the repo). Tests that need it call `shared_path(...)`, which skips the test with a
reason when the folder or file is absent (e.g. on a user's machine).
"""

from __future__ import annotations

import os
from pathlib import Path

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
def imdn() -> Path:
    """Real IMDN x4 weights: the fastest real SR checkpoint to train on CPU."""
    return shared_path("weights", "IMDN", "IMDN_x4.pth")
