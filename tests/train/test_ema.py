"""The EMA of the weights (`mcir_cli.train.ema`) on its own."""

from __future__ import annotations

import pytest

from mcir_cli.train.ema import start_share

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def test_ema_share_of_the_start():
    assert start_share(0.999, 1000) == pytest.approx(0.368, abs=1e-3)
