"""Benchmark folder discovery (`mcir_cli.data.datasets.discover`) on every layout, on tiny folders
built from crops of real Set5 images and on the real shared benchmark folders."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import CROP_NAMES, shared_path

from mcir_cli.data.datasets import add_noise, discover, iter_pairs, load_pair, mod_crop
from mcir_cli.data.imageio import read_image, to_uint8, write_image
from mcir_cli.data.resize import imresize
from mcir_cli.errors import McirError

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def bicubic_lr(hr: torch.Tensor, s: int) -> torch.Tensor:
    """MATLAB bicubic downscale, quantised to uint8 levels like a saved LR file."""
    return to_uint8(imresize(hr, 1 / s)).float() / 255


def write_sr(root, hr_dir, lr_dir, crops, s, lr_name="{n}x{s}.png", hr_size=48):
    for n, img in crops.items():
        write_image(root / hr_dir / f"{n}.png", img[:, :hr_size, :hr_size])
        if lr_dir is not None:
            write_image(root / lr_dir / lr_name.format(n=n, s=s), bicubic_lr(img[:, :48, :48], s))
    return root


def write_paired(root, lq_dir, gt_dir, crops, lq_name="{n}.png", gt_name="{n}.png"):
    for n, img in crops.items():
        write_image(root / gt_dir / gt_name.format(n=n), img)
        write_image(root / lq_dir / lq_name.format(n=n), (img * 0.7 + 0.2).clamp(0, 1))
    return root


# --------------------------------------------------------------------------- SR layouts


@pytest.mark.parametrize("s", [2, 3, 4])
def test_swinir_edsr_layout(tmp_path, crops, s):
    root = write_sr(tmp_path / "tiny", "HR", f"LR_bicubic/X{s}", crops, s)
    d = discover(root, scale=s)
    assert (d.task, d.scale, d.layout) == ("sr", s, f"HR/ + LR_bicubic/X{s}/")
    assert [p.name for p in d.pairs] == sorted(CROP_NAMES)
    for pair, lq, gt in iter_pairs(d):
        assert pair.lq.name == f"{pair.name}x{s}.png" and pair.gt.name == f"{pair.name}.png"
        assert lq.shape == (3, 48 // s, 48 // s) and gt.shape == (3, 48 - 48 % s, 48 - 48 % s)
        assert torch.equal(lq, bicubic_lr(crops[pair.name], s))
        assert torch.equal(gt, to_uint8(crops[pair.name][:, : gt.shape[1], : gt.shape[2]]).float() / 255)


def test_single_scale_needs_no_scale_argument(tmp_path, crops):
    root = write_sr(tmp_path / "tiny", "HR", "LR_bicubic/X4", crops, 4)
    assert discover(root).scale == 4


@pytest.mark.parametrize("lr_name", ["{n}.png", "{n}x{s}.png", "{n}_x{s}.png", "{n}-X{s}.png"])
def test_basicsr_layout_and_scale_suffixes(tmp_path, crops, lr_name):
    root = write_sr(tmp_path / "tiny", "GTmod12", "LRbicx4", crops, 4, lr_name=lr_name)
    d = discover(root, scale=4)
    assert (d.task, d.scale, d.layout) == ("sr", 4, "GTmod12/ + LRbicx4/")
    assert [p.name for p in d.pairs] == sorted(CROP_NAMES)
    assert all(p.gt.stem == p.name for p in d.pairs)


def test_hr_only_makes_lr_by_matlab_bicubic(tmp_path, crops):
    root = write_sr(tmp_path / "tiny", "HR", None, crops, 4, hr_size=46)  # 46: mod-crop to 44
    d = discover(root, scale=4)
    assert d.layout.startswith("HR-only") and d.scale == 4 and len(d) == 3
    for pair, lq, gt in iter_pairs(d):
        assert pair.lq is None
        hr = read_image(pair.gt)[:, :44, :44]
        assert torch.equal(gt, hr)
        assert lq.shape == (3, 11, 11) and lq.dtype == torch.float32
        assert torch.equal(lq, to_uint8(imresize(hr, 1 / 4)).float() / 255)


def test_flat_folder_of_hr_images_with_scale(tmp_path, crops):
    for n, img in crops.items():
        write_image(tmp_path / "flat" / f"{n}.png", img)
    d = discover(tmp_path / "flat", scale=2)
    assert d.layout.startswith("HR-only") and len(d) == 3
    with pytest.raises(McirError, match="flat folder of images.*--scale.*--task denoise") as exc:
        discover(tmp_path / "flat")
    assert str(tmp_path / "flat") in str(exc.value)


def test_hr_only_without_scale_is_an_error(tmp_path, crops):
    root = write_sr(tmp_path / "tiny", "HR", None, crops, 4)
    with pytest.raises(McirError, match="give --scale"):
        discover(root)


def test_several_scales_without_scale_lists_them(tmp_path, crops):
    root = tmp_path / "multi"
    for s in (2, 4):
        write_sr(root, "HR", f"LR_bicubic/X{s}", crops, s)
    with pytest.raises(McirError, match=r"several scales \(x2, x4\).*--scale") as exc:
        discover(root)
    assert str(root) in str(exc.value)
    assert discover(root, scale=2).scale == 2 and discover(root, scale=4).scale == 4


def test_mod_crop_keeps_top_left(tmp_path, crops):
    """HR 50x50 with LR 12x12 at x4: HR is cropped to 48x48 from the top-left corner."""
    hr = read_image(shared_path("data", "sr", "Set5", "HR", "bird.png"))[:, :50, :50]
    write_image(tmp_path / "t" / "HR" / "bird.png", hr)
    write_image(tmp_path / "t" / "LR_bicubic" / "X4" / "birdx4.png", bicubic_lr(hr[:, :48, :48], 4))
    d = discover(tmp_path / "t")
    lq, gt = load_pair(d, d.pairs[0])
    assert lq.shape == (3, 12, 12) and gt.shape == (3, 48, 48)
    assert torch.equal(gt, to_uint8(hr[:, :48, :48]).float() / 255)
    assert torch.equal(mod_crop(hr, 4), hr[:, :48, :48]) and mod_crop(hr, 5).shape == (3, 50, 50)


def test_lr_size_beyond_mod_crop_is_an_error(tmp_path, crops):
    hr = crops["bird"]
    write_image(tmp_path / "t" / "HR" / "bird.png", hr)  # 48x48: x4 LR must be 12x12
    write_image(tmp_path / "t" / "LR_bicubic" / "X4" / "birdx4.png", bicubic_lr(hr, 4)[:, :11, :])
    d = discover(tmp_path / "t")
    with pytest.raises(McirError, match=r"size 12x11 x4 does not match its ground truth bird.png \(48x48\)") as exc:
        load_pair(d, d.pairs[0])
    assert "birdx4.png" in str(exc.value) and "\n" not in str(exc.value)


# --------------------------------------------------------------------- paired layouts


@pytest.mark.parametrize(
    "lq_dir, gt_dir, task",
    [
        ("hazy", "GT", "dehaze"),
        ("Hazy", "gt", "dehaze"),
        ("hazy", "clear", "dehaze"),
        ("input", "target", "restore"),
        ("blur", "sharp", "deblur"),
        ("rain", "norain", "derain"),
        ("lq", "gt", "restore"),
        ("LQ", "HQ", "restore"),
        ("Input", "TARGET", "restore"),
    ],
)
def test_paired_layouts(tmp_path, crops, lq_dir, gt_dir, task):
    root = write_paired(tmp_path / "pairs", lq_dir, gt_dir, crops)
    d = discover(root)
    assert (d.task, d.scale, d.layout) == (task, 1, f"{lq_dir}/ + {gt_dir}/")
    assert [p.name for p in d.pairs] == sorted(CROP_NAMES)
    for pair, lq, gt in iter_pairs(d):
        assert pair.lq.parent.name == lq_dir and pair.gt.parent.name == gt_dir
        assert lq.shape == gt.shape == (3, 48, 48)
    assert discover(root, task="derain").task == "derain"  # --task overrides the layout's


def test_reside_hazy_ids_pair_with_gt_id(tmp_path, crops):
    img = crops["baby"]
    write_image(tmp_path / "sots" / "GT" / "1400.png", img)
    write_image(tmp_path / "sots" / "GT" / "1401.png", crops["bird"])
    for k in (1, 2, 3):
        write_image(tmp_path / "sots" / "hazy" / f"1400_{k}.png", img * 0.5 + 0.5)
    write_image(tmp_path / "sots" / "hazy" / "1401_7.png", crops["bird"] * 0.5)
    d = discover(tmp_path / "sots")
    assert d.task == "dehaze"
    assert [(p.name, p.gt.name) for p in d.pairs] == [
        ("1400_1", "1400.png"), ("1400_2", "1400.png"), ("1400_3", "1400.png"), ("1401_7", "1401.png")
    ]


def test_unpaired_names_are_named(tmp_path, crops):
    root = write_paired(tmp_path / "p", "hazy", "GT", crops)
    write_image(root / "hazy" / "zebra.png", crops["baby"])
    write_image(root / "hazy" / "aardvark.png", crops["baby"])
    with pytest.raises(McirError, match=r"2 of 5 inputs have no ground truth.*aardvark.png, zebra.png") as exc:
        discover(root)
    assert str(root / "hazy") in str(exc.value)


def test_sr_names_that_do_not_pair(tmp_path, crops):
    root = write_sr(tmp_path / "t", "HR", "LR_bicubic/X4", crops, 4, lr_name="{n}_lr.png")
    with pytest.raises(McirError, match="first unmatched: baby_lr.png, bird_lr.png, butterfly_lr.png"):
        discover(root)


# ------------------------------------------------------------------------ bad folders


def test_missing_folder(tmp_path):
    with pytest.raises(McirError, match="folder not found") as exc:
        discover(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(exc.value)


def test_not_a_folder(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(McirError, match="not a folder"):
        discover(tmp_path / "f.txt")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(McirError, match="matches no known layout.*it holds: empty") as exc:
        discover(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(exc.value)


def test_folder_matching_no_layout_lists_layouts(tmp_path):
    root = tmp_path / "odd"
    (root / "pictures").mkdir(parents=True)
    (root / "notes.txt").write_text("hi")
    with pytest.raises(McirError) as exc:
        discover(root)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(root))
    for layout in ("HR/ + LR_bicubic/X{s}/", "GTmod12/ + LRbicx{s}/", "HR-only", "hazy/ + gt/",
                   "input/ + target/", "blur/ + sharp/", "rain/ + norain/", "lq/ + hq/"):
        assert layout in msg
    assert "notes.txt, pictures" in msg


def test_empty_gt_folder(tmp_path, crops):
    write_image(tmp_path / "p" / "hazy" / "a.png", crops["baby"])
    (tmp_path / "p" / "GT").mkdir()
    with pytest.raises(McirError, match="no images in the ground-truth folder"):
        discover(tmp_path / "p")


def test_truncated_image_is_named(tmp_path, crops):
    root = write_paired(tmp_path / "p", "hazy", "GT", crops)
    bad = root / "GT" / "bird.png"
    bad.write_bytes(bad.read_bytes()[:300])
    d = discover(root)  # discovery reads no pixels
    with pytest.raises(McirError) as exc:
        list(iter_pairs(d))
    assert str(bad) in str(exc.value) and "\n" not in str(exc.value)


def test_channel_mismatch(tmp_path, crops):
    write_image(tmp_path / "p" / "GT" / "a.png", crops["baby"])
    write_image(tmp_path / "p" / "hazy" / "a.png", crops["baby"][:1])
    d = discover(tmp_path / "p")
    with pytest.raises(McirError, match="1 channels, but its ground truth has 3"):
        load_pair(d, d.pairs[0])


# ------------------------------------------------------------------------ denoising


def test_clean_folder_for_denoising(tmp_path, crops):
    for n, img in crops.items():
        write_image(tmp_path / "clean" / f"{n}.png", img[:1])
    d = discover(tmp_path / "clean", task="denoise")
    assert (d.task, d.scale, len(d)) == ("denoise", 1, 3)
    with pytest.raises(McirError, match="--noise-sigma"):
        load_pair(d, d.pairs[0])
    a = [lq for _, lq, _ in iter_pairs(d, noise_sigma=25, noise_seed=3)]
    b = [lq for _, lq, _ in iter_pairs(d, noise_sigma=25, noise_seed=3)]
    c = [lq for _, lq, _ in iter_pairs(d, noise_sigma=25, noise_seed=4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])
    _, lq, gt = next(iter_pairs(d, noise_sigma=25))
    noise_std = float((lq - gt).std() * 255)
    assert 20 < noise_std < 30  # not rounded, not clipped
    assert lq.min() < 0 or lq.max() > 1


def test_add_noise_is_not_clipped():
    g = torch.Generator().manual_seed(0)
    out = add_noise(torch.zeros(1, 64, 64), 50, g)
    assert out.min() < 0 and abs(float(out.std()) * 255 - 50) < 3


# -------------------------------------------------------------- real shared folders


@pytest.mark.parametrize("s", [2, 3, 4])
def test_real_set5(s):
    d = discover(shared_path("data", "sr", "Set5"), scale=s)
    assert (d.name, d.task, d.scale, len(d)) == ("Set5", "sr", s, 5)
    assert d.layout == f"HR/ + LR_bicubic/X{s}/"
    assert [p.name for p in d.pairs] == ["baby", "bird", "butterfly", "head", "woman"]


def test_real_set5_without_scale_lists_scales():
    with pytest.raises(McirError, match=r"several scales \(x2, x3, x4, x8\)"):
        discover(shared_path("data", "sr", "Set5"))


def test_real_set14():
    d = discover(shared_path("data", "sr", "Set14"), scale=4)
    assert (d.task, d.scale, len(d)) == ("sr", 4, 14)


def test_real_sots():
    d = discover(shared_path("data", "dehaze", "SOTS_indoor_subset10"))
    assert (d.task, d.scale, len(d)) == ("dehaze", 1, 10)
    assert all(p.lq.name == p.gt.name for p in d.pairs)


def test_real_rain100l():
    d = discover(shared_path("data", "derain", "Rain100L_subset3"))
    # input/ + target/ is Restormer's layout for every task: the folder's name says deraining
    assert (d.task, len(d), d.layout) == ("derain", 3, "input/ + target/")
    assert discover(d.root, task="restore").task == "restore"


def test_real_gopro():
    d = discover(shared_path("data", "deblur", "GOPRO_examples2"))
    assert (d.task, len(d)) == ("deblur", 2)


def test_real_set12_denoise():
    d = discover(shared_path("data", "denoise", "Set12_gray"), task="denoise")
    assert (d.task, d.scale, len(d)) == ("denoise", 1, 12)
    assert all(p.lq is None for p in d.pairs)
    _, lq, gt = next(iter_pairs(d, noise_sigma=25))
    assert gt.shape == (1, 256, 256) and lq.shape == gt.shape


def test_missing_scale_is_made_from_hr(tmp_path, crops):
    """HR/ + LR_bicubic/X2/ asked for x4: the x4 inputs are made from HR by MATLAB bicubic
    (the operator of the published LR files), and the layout says so."""
    root = write_sr(tmp_path / "x2", "HR", "LR_bicubic/X2", crops, 2)
    d = discover(root, scale=4)
    assert d.scale == 4 and d.layout.startswith("HR-only") and all(p.lq is None for p in d.pairs)
