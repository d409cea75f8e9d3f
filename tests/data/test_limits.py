"""What input must satisfy before any work (`mcir_cli.data.limits`, issue #14): image sizes
for the scale, border and SSIM window; a batch that fits in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcir_cli.data.limits import batch_image_bytes, check_batch_memory, check_image_size
from mcir_cli.errors import McirError

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def test_check_image_size_rules():
    from mcir_cli.metrics.conventions import Conventions

    conv = Conventions(y_channel=True, crop_border=4)
    check_image_size(Path("ok.png"), 19, 19, 1, conv)
    check_image_size(Path("ok.png"), 20, 20, 4, conv)  # mod-crop 20 -> 20, 20 - 8 >= 11
    with pytest.raises(McirError, match="18x18 is too small"):
        check_image_size(Path("x.png"), 18, 18, 1, conv)
    with pytest.raises(McirError, match="16x16 is too small"):  # 19 mod-cropped to x4 is 16
        check_image_size(Path("x.png"), 19, 19, 4, conv)
    with pytest.raises(McirError, match="3x3 is too small for x4"):
        check_image_size(Path("x.png"), 3, 3, 4, conv)
    check_image_size(Path("x.png"), 4, 4, 4, conv, lq_size=(5, 5))  # the LR decides: 20x20


def test_batch_memory_refused_up_front():
    need = batch_image_bytes(1_000_000, 48, 4, 3)
    assert need == 1_000_000 * 3 * (48 * 48 + 2 * 192 * 192) * 4
    with pytest.raises(McirError) as info:
        check_batch_memory(1_000_000, 48, 4, 3, "cpu", available=64 * 2**30)
    msg = str(info.value)
    assert "--batch 1000000 x --patch 48" in msg and "849.7 GiB" in msg and "64.0 GiB" in msg
    assert "smaller --batch or --patch" in msg and "\n" not in msg
    assert check_batch_memory(16, 48, 4, 3, "cpu", available=64 * 2**30) == batch_image_bytes(16, 48, 4, 3)


def test_batch_memory_measures_this_machine():
    from mcir_cli.data.limits import available_memory

    room = available_memory("cpu")
    assert room is None or room > 0
    if room is not None:
        with pytest.raises(McirError, match="free: use a smaller"):
            check_batch_memory(10**9, 512, 4, 3, "cpu")
    check_batch_memory(1, 8, 1, 1, "cpu")
    with pytest.raises(McirError, match="must be positive"):
        check_batch_memory(0, 48, 4, 3, "cpu")
