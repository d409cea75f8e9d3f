"""`grey_as_rgb`: a grey image among colour ones is scored as 3 equal channels, in one place."""

from __future__ import annotations

import torch

from mcir_cli.evaluate.benchmarks import grey_as_rgb


def test_grey_becomes_three_equal_channels_and_colour_stays():
    grey = torch.rand(1, 5, 7)
    rgb = grey_as_rgb(grey)
    assert rgb.shape == (3, 5, 7) and all(torch.equal(rgb[c], grey[0]) for c in range(3))
    colour = torch.rand(3, 5, 7)
    assert grey_as_rgb(colour) is colour
