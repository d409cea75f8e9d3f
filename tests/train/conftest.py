"""Fixtures of tests/train/ only."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def train_dir(train_crops) -> Path:
    """The loop's tests train on 96x96 crops of three real photos (tests/conftest.py's
    train_crops), not the 20 whole ones: every Run decodes its training set and makes its
    bicubic LR when it starts, ~4 s for the whole photos, and the loop's tests start ~60 Runs."""
    return train_crops
