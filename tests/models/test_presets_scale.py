"""`preset_scale`: a preset in several scales takes the one scale its data folders hold;
`ScaleNeeded`, the typed error, when they hold none or several."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcir_cli.errors import McirError, ScaleNeeded
from mcir_cli.models.presets import get_preset, preset_scale


def sr_folder(root: Path, *scales: int) -> Path:
    """An SR benchmark folder: HR/ and LR_bicubic/X{s}/ for each scale."""
    grey = np.full((24, 24, 3), 128, np.uint8)
    (root / "HR").mkdir(parents=True)
    Image.fromarray(grey).save(root / "HR" / "img.png")
    for s in scales:
        (root / "LR_bicubic" / f"X{s}").mkdir(parents=True)
        Image.fromarray(grey[: 24 // s, : 24 // s]).save(root / "LR_bicubic" / f"X{s}" / f"imgx{s}.png")
    return root


def test_a_preset_in_several_scales_raises_the_typed_error():
    with pytest.raises(ScaleNeeded, match=r"comes in several scales \(swinir-light-x2, .*\): add --scale"):
        get_preset("swinir-light")
    assert issubclass(ScaleNeeded, McirError)  # the CLI's one-line error, exit code 2


def test_the_one_scale_of_the_data(tmp_path):
    x4 = sr_folder(tmp_path / "a", 4)
    assert preset_scale("swinir-light", None, [x4]) == 4
    assert preset_scale("swinir-light", 2, [x4]) == 2  # a given scale wins
    assert preset_scale("swinir-x4", None, [x4]) is None  # one scale: the preset's own
    assert preset_scale(None, None, [x4]) is None and preset_scale(None, 3, [x4]) == 3


def test_data_in_none_or_several_scales_raises_the_typed_error(tmp_path):
    both = sr_folder(tmp_path / "both", 2, 4)
    with pytest.raises(ScaleNeeded, match="several scales"):
        preset_scale("swinir-light", None, [both])
    with pytest.raises(ScaleNeeded):
        preset_scale("swinir-light", None, [sr_folder(tmp_path / "x2", 2), sr_folder(tmp_path / "x4", 4)])
    with pytest.raises(ScaleNeeded):
        preset_scale("swinir-light", None, [tmp_path / "nowhere"])


def test_a_scale_the_preset_lacks_is_said(tmp_path):
    x8 = sr_folder(tmp_path / "x8", 8)
    with pytest.raises(McirError, match="has no x8 variant") as exc:
        preset_scale("swinir-light", None, [x8])
    assert not isinstance(exc.value, ScaleNeeded)
