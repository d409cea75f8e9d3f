"""`mcir_cli.models.inference`: padding to a model's size requirements and seam-free tiling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import shared_path
from torch import nn

from mcir_cli.models.inference import pad_to, restore, run_padded

# ---------------------------------------------------------------------------- tiling


@pytest.fixture(scope="module")
def dncnn():
    """Real DnCNN-S σ25 (17 conv layers 3x3: receptive field 35 px, radius 17)."""
    from mcir_cli.models.loading import load_model

    model = load_model(shared_path("weights", "DnCNN_KAIR", "dncnn_25.pth"))
    return model.restorer.eval()


@pytest.fixture(scope="module")
def noisy_crop():
    from mcir_cli.data.datasets import add_noise
    from mcir_cli.data.imageio import read_image

    clean = read_image(shared_path("data", "denoise", "Set12_gray", "01.png"))[:, 80:176, 100:196]
    assert clean.shape == (1, 96, 96)
    return add_noise(clean, 25, torch.Generator().manual_seed(0)).unsqueeze(0)


@pytest.fixture(scope="module")
def untiled(dncnn, noisy_crop):
    return restore(dncnn, noisy_crop)


def test_dncnn_tiled_equals_untiled(dncnn, noisy_crop, untiled):
    """overlap 34 keeps 17 px (the receptive-field radius) away from every shared edge."""
    tiled = restore(dncnn, noisy_crop, tile=64, overlap=34)
    assert tiled.shape == untiled.shape == (1, 1, 96, 96)
    assert (tiled - untiled).abs().max() < 1e-4
    assert (untiled - noisy_crop).abs().mean() > 0.03  # the model does change the image


@pytest.mark.parametrize("tile, overlap", [(64, 32), (32, 20)])
def test_dncnn_too_small_overlap_shows_seams(dncnn, noisy_crop, untiled, tile, overlap):
    """A margin under the receptive-field radius (16 or 10 px < 17) breaks equality: the
    equality test above can fail."""
    tiled = restore(dncnn, noisy_crop, tile=tile, overlap=overlap)
    assert tiled.shape == untiled.shape
    assert (tiled - untiled).abs().max() > 1e-3


class TinySR(nn.Module):
    """3 conv layers 3x3 (receptive-field radius 3) then pixel shuffle x2."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, padding=1) for c_in, c_out in ((3, 8), (8, 8), (8, 12)))
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) * 0.1)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x) if i == 2 else torch.relu(conv(x))
        return F.pixel_shuffle(x, 2)


@pytest.mark.unit
def test_tiled_sr_equals_untiled_with_scale():
    net = TinySR().eval()
    x = torch.rand(2, 3, 40, 37, generator=torch.Generator().manual_seed(1))
    full = restore(net, x, scale=2)
    assert full.shape == (2, 3, 80, 74)
    assert (restore(net, x, scale=2, tile=16, overlap=6) - full).abs().max() < 1e-5
    assert (restore(net, x, scale=2, tile=16, overlap=2) - full).abs().max() > 1e-3



@pytest.mark.unit
def test_tiles_batched_give_the_same_output():
    """Tiles stacked along the batch axis (`tile_batch`), two images at once: the same
    output as one tile at a time; the model really sees batches of tiles."""
    net = TinySR().eval()
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    x = torch.rand(2, 3, 40, 37, generator=torch.Generator().manual_seed(3))
    one = restore(net, x, scale=2, tile=16, overlap=6)
    assert seen == [2] * 16
    seen.clear()
    batched = restore(net, x, scale=2, tile=16, overlap=6, tile_batch=4)
    assert seen == [8, 8, 8, 8]  # 4 x 4 tiles, 4 per pass, 2 images each
    assert (batched - one).abs().max() < 1e-6

@pytest.mark.unit
def test_tile_larger_than_image_and_single_image():
    net = TinySR().eval()
    x = torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(2))
    y = restore(net, x, scale=2, tile=64)
    assert y.shape == (3, 40, 48) and y.dtype == torch.float32
    assert torch.equal(y, restore(net, x, scale=2))


@pytest.mark.unit
def test_overlap_must_be_smaller_than_tile():
    from mcir_cli.errors import McirError

    with pytest.raises(McirError, match="--tile-overlap 16 must be smaller than --tile 16"):
        restore(TinySR(), torch.rand(1, 3, 40, 40), scale=2, tile=16, overlap=16)


@pytest.mark.unit
def test_tiling_pads_the_whole_image_like_the_untiled_run():
    """A model with a size multiple: edge tiles must see the same padding as the whole
    image (not their own), so a local model gives the untiled output exactly."""
    torch.manual_seed(0)
    net = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(4)]).eval()  # radius 4
    x = torch.rand(1, 3, 37, 53)
    full = restore(net, x, 1, multiple_of=4)
    tiled = restore(net, x, 1, multiple_of=4, tile=16, overlap=8)
    assert tiled.shape == full.shape == x.shape
    assert (tiled - full).abs().max().item() < 1e-5


# --------------------------------------------------------------------------- padding


class NeedsMultiple(nn.Module):
    """Refuses sizes that are not multiples of `m` (like a window transformer); nearest x2."""

    def __init__(self, m: int, square: bool = False) -> None:
        super().__init__()
        self.m, self.square, self.seen = m, square, []

    def forward(self, x):
        h, w = x.shape[-2:]
        assert h % self.m == 0 and w % self.m == 0, (h, w)
        assert not self.square or h == w
        self.seen.append((h, w))
        return F.interpolate(x, scale_factor=2, mode="nearest")


@pytest.mark.unit
def test_padding_to_multiple_is_cropped_back():
    x = torch.rand(1, 3, 13, 21, generator=torch.Generator().manual_seed(0))
    net = NeedsMultiple(8)
    y = restore(net, x, scale=2, multiple_of=8)
    assert net.seen == [(16, 24)]
    assert y.shape == (1, 3, 26, 42)
    assert torch.equal(y, F.interpolate(x, scale_factor=2, mode="nearest"))


@pytest.mark.unit
def test_padding_square_and_min_size():
    x = torch.rand(3, 13, 21)
    net = NeedsMultiple(8, square=True)
    assert restore(net, x, scale=2, multiple_of=8, square=True).shape == (3, 26, 42)
    assert net.seen == [(24, 24)]
    net = NeedsMultiple(1)
    assert run_padded(net, x.unsqueeze(0), 2, min_size=32).shape == (1, 3, 26, 42)
    assert net.seen == [(32, 32)]


@pytest.mark.unit
def test_tiles_are_padded_too():
    x = torch.rand(1, 3, 30, 30, generator=torch.Generator().manual_seed(3))
    net = NeedsMultiple(8)
    y = restore(net, x, scale=2, tile=20, overlap=4, multiple_of=8)
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in net.seen) and len(net.seen) == 4
    assert torch.equal(y, F.interpolate(x, scale_factor=2, mode="nearest"))


@pytest.mark.unit
def test_pad_to_reflects_when_it_can():
    x = torch.arange(35.0).reshape(1, 1, 5, 7)
    y = pad_to(x, multiple_of=4)
    assert y.shape == (1, 1, 8, 8)
    assert torch.equal(y, F.pad(x, (0, 1, 0, 3), mode="reflect"))
    assert torch.equal(y[..., :5, :7], x)
    assert torch.equal(y[..., 5, :7], x[..., 3, :])  # reflect: the row above the last


@pytest.mark.unit
def test_pad_to_replicates_tiny_images():
    x = torch.arange(6.0).reshape(1, 1, 2, 3)
    y = pad_to(x, min_size=8)
    assert y.shape == (1, 1, 8, 8)
    assert torch.equal(y, F.pad(x, (0, 5, 0, 6), mode="replicate"))
    assert torch.equal(y[..., 7, :3], x[..., 1, :])
    # pad equal to the size: reflect is impossible (torch needs pad < size)
    x4 = torch.rand(1, 3, 4, 4)
    assert torch.equal(pad_to(x4, min_size=8), F.pad(x4, (0, 4, 0, 4), mode="replicate"))
    # one side small enough for reflect, the other not: replicate both
    x5 = torch.rand(1, 3, 3, 12)
    assert torch.equal(pad_to(x5, multiple_of=8), F.pad(x5, (0, 4, 0, 5), mode="replicate"))
    # a 1-pixel-high image
    assert pad_to(torch.rand(1, 1, 1, 5), multiple_of=4).shape == (1, 1, 4, 8)


@pytest.mark.unit
def test_pad_to_no_op_returns_input():
    x = torch.rand(1, 3, 16, 24)
    assert pad_to(x, min_size=8, multiple_of=8) is x
    assert pad_to(x, square=True).shape == (1, 3, 24, 24)
    assert pad_to(torch.rand(3, 5, 6), multiple_of=4).shape == (3, 8, 8)  # CHW works too
