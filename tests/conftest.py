"""Shared test helpers.

Real data lives in ../shared next to the repository (read-only fixtures, never copied
into the repo). Tests that need it call `shared_path(...)`, which skips the test with a
reason when the folder or file is absent (e.g. on a user's machine).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


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
