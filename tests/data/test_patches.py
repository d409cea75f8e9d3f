"""Training patches: exact bicubic LR, alignment by scale, determinism, augmentation."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from mcir_cli.data.datasets import PatchDataset, bicubic_lr_patch, dihedral, discover, mod_crop
from mcir_cli.data.imageio import read_image
from mcir_cli.data.resize import imresize
from tests.conftest import shared_path


@pytest.mark.unit
def test_lr_patch_equals_crop_of_whole_image_lr():
    hr = read_image(shared_path("data", "sr", "Set14", "HR", "baboon.png"))
    full = (imresize(mod_crop(hr, 4), 1 / 4).clamp(0, 1) * 255).round() / 255
    h, w = full.shape[-2:]
    for top, left in [(0, 0), (3, 7), (h - 24, w - 24), (h // 2, 0)]:
        patch = bicubic_lr_patch(hr, 4, top, left, 24)
        assert torch.equal(patch, full[..., top : top + 24, left : left + 24])


@pytest.mark.unit
def test_hr_only_patches_equal_patches_from_published_lr_files(tmp_path):
    """Set5's LR files are MATLAB bicubic of HR: the same sample index must give the very
    same (lq, gt) whether LR is read from the files or synthesised from HR."""
    set5 = shared_path("data", "sr", "Set5")
    paired = discover(set5, scale=4)
    hr_only = discover(set5 / "HR", scale=4)
    assert paired.layout.startswith("HR/") and hr_only.layout.startswith("HR-only")
    a = PatchDataset([paired], patch=16, length=100, seed=3, augment=True)
    b = PatchDataset([hr_only], patch=16, length=100, seed=3, augment=True)
    for i in (0, 1, 7, 42):
        (lq_a, gt_a), (lq_b, gt_b) = a[i], b[i]
        assert lq_a.shape == (3, 16, 16) and gt_a.shape == (3, 64, 64)
        assert torch.equal(gt_a, gt_b)
        assert torch.equal(lq_a, lq_b)


def test_patches_are_a_function_of_seed_and_index_only():
    data = discover(shared_path("data", "train", "SunHays80_color_subset20"), scale=4, task="sr")
    ds = PatchDataset([data], patch=12, length=8, seed=0, cache=False)
    first = [ds[i] for i in range(8)]
    again = PatchDataset([data], patch=12, length=8, seed=0, cache=True)
    loader = DataLoader(again, batch_size=4, num_workers=2)
    batches = list(loader)
    stacked = torch.cat([b[0] for b in batches])
    assert torch.equal(stacked, torch.stack([lq for lq, _ in first]))
    other = PatchDataset([data], patch=12, length=8, seed=1, cache=False)
    assert not torch.equal(other[0][1], first[0][1])


@pytest.mark.unit
def test_dihedral_gives_eight_distinct_transforms():
    x = torch.arange(9.0).view(1, 3, 3)
    outs = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(outs) == 8


@pytest.mark.unit
def test_grey_images_among_colour_ones_become_three_channels():
    set14 = discover(shared_path("data", "sr", "Set14"), scale=4)  # holds the grey "bridge"
    ds = PatchDataset([set14], patch=16, length=200, seed=0, channels=3)
    picks = [int(torch.randint(14, (1,), generator=ds._generator(i))) for i in range(200)]
    grey = [i for i, k in enumerate(picks) if ds.items[k][1].name == "bridge"]
    assert grey  # the sampler does draw the grey image
    assert {ds[i][0].shape for i in grey} == {(3, 16, 16)} and {ds[i][1].shape for i in grey} == {(3, 64, 64)}


@pytest.mark.unit
def test_colour_data_for_a_grey_model_is_refused():
    import pytest

    from mcir_cli.errors import McirError

    set5 = discover(shared_path("data", "sr", "Set5"), scale=4)
    with pytest.raises(McirError, match="model takes grey input"):
        PatchDataset([set5], patch=16, length=4, channels=1)
