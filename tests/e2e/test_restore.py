"""`mcir restore` through the CLI, on real weights (IMDN x4, DnCNN grey) and real images
(Set5, Set12 crops; skimage's horse silhouette as a real alpha mask)."""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
import torch
from tests.conftest import one_line_error, shared_path
from PIL import Image, ImageCms, ImageOps
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.data.imageio import read_image, to_uint8
from mcir_cli.models.inference import restore

runner = CliRunner()


@pytest.fixture(scope="module")
def imdn_path():
    return str(shared_path("weights", "IMDN", "IMDN_x4.pth"))


@pytest.fixture(scope="module")
def dncnn_path():
    return str(shared_path("weights", "DnCNN_KAIR", "dncnn_25.pth"))


@pytest.fixture(scope="module")
def imdn(imdn_path):
    from mcir_cli.models.loading import load_model

    return load_model(imdn_path).restorer.eval()


def _crop(name: str, box: tuple[int, int, int, int]) -> Image.Image:
    return Image.open(shared_path("data", "sr", "Set5", "HR", f"{name}.png")).convert("RGB").crop(box)


def _run(*args: str, env: dict[str, str] | None = None) -> str:
    res = runner.invoke(app, ["restore", *args], env=env)
    assert res.exit_code == 0, res.output
    return res.output


def _one_line_error(*args: str) -> str:
    return one_line_error(runner.invoke(app, ["restore", *args]))


def _levels(path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int32)


def _model_levels(net, x: torch.Tensor) -> np.ndarray:
    """What IMDN gives for a CHW image, as 8-bit levels H x W x C."""
    return to_uint8(restore(net, x, 4).clamp(0, 1)).numpy().transpose(1, 2, 0).astype(np.int32)


# ------------------------------------------------------------------------ files and folders


def test_folder_keeps_layout_and_writes_the_models_output(tmp_path, imdn_path, imdn):
    src = tmp_path / "photos"
    (src / "2024").mkdir(parents=True)
    _crop("baby", (100, 100, 124, 124)).save(src / "a.png")
    _crop("bird", (50, 50, 74, 70)).save(src / "2024" / "b.jpg", quality=92)
    out = _run(str(src), "-o", str(tmp_path / "out"), "--checkpoint", imdn_path)
    assert "wrote 2 images" in out and "512 px, the CPU default" in out, out
    a, b = tmp_path / "out" / "a.png", tmp_path / "out" / "2024" / "b.png"
    assert Image.open(b).size == (96, 80) and Image.open(b).format == "PNG"
    expected = _model_levels(imdn, read_image(src / "a.png"))
    assert np.abs(_levels(a) - expected).max() <= 1
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["2024", "a.png", "b.png"]  # no temp files


def test_format_same_and_quality(tmp_path, imdn_path):
    src = tmp_path / "in"
    src.mkdir()
    _crop("head", (100, 100, 120, 120)).save(src / "h.jpg", quality=90)
    _crop("head", (120, 100, 140, 120)).save(src / "w.webp", lossless=True)
    _run(str(src), "-o", str(tmp_path / "same"), "--checkpoint", imdn_path, "--format", "same", "--quality", "80")
    assert Image.open(tmp_path / "same" / "h.jpg").format == "JPEG"
    assert Image.open(tmp_path / "same" / "w.webp").format == "WEBP"
    _run(str(src / "h.jpg"), "-o", str(tmp_path / "q95"), "--checkpoint", imdn_path, "--format", "jpeg")
    assert (tmp_path / "same" / "h.jpg").stat().st_size < (tmp_path / "q95" / "h.jpg").stat().st_size  # 80 < 95
    _run(str(src / "h.jpg"), "-o", str(tmp_path / "one_x4.webp"), "--checkpoint", imdn_path)
    assert Image.open(tmp_path / "one_x4.webp").size == (80, 80)
    err = _one_line_error(str(src), "-o", str(tmp_path / "png"), "--checkpoint", imdn_path, "--quality", "80")
    assert "--quality is for JPEG and WebP" in err and not (tmp_path / "png").exists()


def test_an_image_name_for_several_inputs_is_refused_not_made_a_folder(tmp_path, imdn_path):
    src = tmp_path / "src"
    src.mkdir()
    _crop("head", (120, 100, 140, 120)).save(src / "a.png")
    _crop("bird", (100, 100, 120, 120)).save(src / "b.png")
    err = _one_line_error(str(src / "a.png"), str(src / "b.png"), "-o", str(tmp_path / "out.png"), "--checkpoint",
                          imdn_path)
    assert "2 inputs" in err and "give a folder for -o" in err and "out.png" in err
    err = _one_line_error(str(src), "-o", str(tmp_path / "all.webp"), "--checkpoint", imdn_path)
    assert "a folder input" in err and "give a folder for -o" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # nothing written
    (tmp_path / "made.png").mkdir()  # a folder that happens to have an image's suffix is still a folder
    _run(str(src), "-o", str(tmp_path / "made.png"), "--checkpoint", imdn_path)
    assert sorted(p.name for p in (tmp_path / "made.png").iterdir()) == ["a.png", "b.png"]


# ---------------------------------------------------------------------------------- alpha


def _rgba(tmp_path) -> tuple[Image.Image, np.ndarray]:
    """A Set5 crop with a real alpha mask: the edge of skimage's horse silhouette."""
    from skimage.data import horse

    mask = np.where(horse()[16:40, 288:312], 0, 255).astype(np.uint8)  # the horse opaque
    assert 0.2 < (mask > 0).mean() < 0.8
    rgba = _crop("butterfly", (80, 80, 104, 104))
    rgba.putalpha(Image.fromarray(mask))
    return rgba, mask


def test_alpha_is_restored_separately_and_reattached(tmp_path, imdn_path, imdn):
    rgba, mask = _rgba(tmp_path)
    rgba.save(tmp_path / "rgba.png")
    rgba.convert("RGB").save(tmp_path / "rgb.png")
    _run(str(tmp_path / "rgba.png"), "-o", str(tmp_path / "out.png"), "--checkpoint", imdn_path)
    _run(str(tmp_path / "rgb.png"), "-o", str(tmp_path / "ref.png"), "--checkpoint", imdn_path)
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "RGBA" and out.size == (96, 96)
    levels = np.asarray(out).astype(np.int32)
    assert np.array_equal(levels[..., :3], _levels(tmp_path / "ref.png"))  # colour as without alpha
    # alpha: the model run on the mask as 3 equal channels, flattened as chaiNNer does
    y = restore(imdn, torch.from_numpy(mask / 255.0).float().expand(3, -1, -1), 4).clamp(0, 1)
    lo, hi, mean = y.amin(0), y.amax(0), y.mean(0)
    chainner = to_uint8((hi * mean + lo * (1 - mean)).clamp(0, 1)).numpy().astype(np.int32)
    assert np.abs(levels[..., 3] - chainner).max() <= 1
    nearest = np.kron(mask, np.ones((4, 4), dtype=np.uint8)).astype(np.int32)
    assert np.abs(levels[..., 3] - nearest).mean() < 4  # the same silhouette (measured 1.4 levels)


def test_constant_alpha_is_copied(tmp_path, imdn_path):
    img = _crop("baby", (0, 0, 20, 20))
    img.putalpha(200)
    img.save(tmp_path / "c.png")
    _run(str(tmp_path / "c.png"), "-o", str(tmp_path / "c_x4.png"), "--checkpoint", imdn_path)
    assert np.all(np.asarray(Image.open(tmp_path / "c_x4.png"))[..., 3] == 200)


# --------------------------------------------------------------------- depth and metadata


def test_16bit_png_and_tiff_stay_16bit_with_their_icc_profile(tmp_path, imdn_path, imdn):
    import png
    import tifffile

    from mcir_cli.data.photos import Photo, PhotoMeta, write_photo

    rgb = np.asarray(_crop("bird", (60, 60, 84, 84))).astype(np.uint16) * 257
    rgb[::2, ::3] += 97  # low bits that an 8-bit path would lose
    x = torch.from_numpy(rgb / 65535.0).permute(2, 0, 1).float()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for fmt, name in (("PNG", "p.png"), ("TIFF", "t.tif")):
        write_photo(tmp_path / "in" / name, Photo(x, None, PhotoMeta(fmt, 16, icc=icc)), fmt)
    _run(str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", imdn_path, "--format", "same")
    w, h, rows, info = png.Reader(filename=str(tmp_path / "out" / "p.png")).asDirect()
    assert (w, h, info["bitdepth"], info["planes"]) == (96, 96, 16, 3)
    out = np.vstack([np.asarray(r, dtype=np.int64) for r in rows]).reshape(h, w, 3)
    expected = torch.round(restore(imdn, x, 4).clamp(0, 1) * 65535).permute(1, 2, 0).numpy()
    assert np.abs(out - expected).max() <= 2
    assert np.any(out % 257 != 0)  # not 8-bit levels scaled up
    assert Image.open(tmp_path / "out" / "p.png").info["icc_profile"] == icc
    tiff = tifffile.imread(tmp_path / "out" / "t.tif")
    assert tiff.dtype == np.uint16 and np.abs(tiff.astype(np.int64) - expected).max() <= 2
    assert Image.open(tmp_path / "out" / "t.tif").info["icc_profile"] == icc


def _exif_jpeg(path, img: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112], exif[0x010F], exif[0x0110] = orientation, "mcir-test-camera", "model X"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img.save(path, quality=95, exif=exif, icc_profile=icc, dpi=(300, 300))
    return icc


def test_exif_orientation_applied_metadata_kept(tmp_path, imdn_path):
    img = _crop("head", (90, 90, 114, 106))  # 24 wide, 16 high
    icc = _exif_jpeg(tmp_path / "rot.jpg", img, orientation=6)
    upright = ImageOps.exif_transpose(Image.open(tmp_path / "rot.jpg"))
    upright.save(tmp_path / "upright.png")
    for fmt in ("png", "jpeg"):
        _run(str(tmp_path / "rot.jpg"), "-o", str(tmp_path / fmt), "--checkpoint", imdn_path, "--format", fmt)
    _run(str(tmp_path / "upright.png"), "-o", str(tmp_path / "ref.png"), "--checkpoint", imdn_path)
    for out in (tmp_path / "png" / "rot.png", tmp_path / "jpeg" / "rot.jpg"):
        res = Image.open(out)
        assert res.size == (64, 96)  # rotated: 16 x 24 -> x4
        exif = res.getexif()
        assert exif[0x0112] == 1 and exif[0x010F] == "mcir-test-camera" and exif[0x0110] == "model X"
        assert res.info["icc_profile"] == icc
        assert tuple(round(v) for v in res.info["dpi"]) == (1200, 1200)  # printed size kept
    assert np.array_equal(_levels(tmp_path / "png" / "rot.png"), _levels(tmp_path / "ref.png"))


def test_png_text_and_xmp_kept(tmp_path, imdn_path):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Set5 crop")
    info.add_text("Comment", "grüße 图像")
    (tmp_path / "in").mkdir()
    _crop("baby", (0, 0, 16, 16)).save(tmp_path / "in" / "t.png", pnginfo=info)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><dc:creator>mcir test</dc:creator></x:xmpmeta>'
    _crop("bird", (0, 0, 16, 16)).save(tmp_path / "in" / "x.jpg", xmp=xmp)
    _run(str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--checkpoint", imdn_path)
    out = Image.open(tmp_path / "out" / "t.png")
    out.load()
    assert out.text["Author"] == "Set5 crop" and out.text["Comment"] == "grüße 图像"
    out = Image.open(tmp_path / "out" / "x.png")
    out.load()
    assert out.info["xmp"] == xmp


# ---------------------------------------------------------------------------------- grey


def test_grey_stays_grey_and_grey_models_refuse_colour(tmp_path, imdn_path, dncnn_path, imdn):
    grey = Image.open(shared_path("data", "denoise", "Set12_gray", "01.png")).crop((100, 80, 124, 104))
    grey.save(tmp_path / "g.png")
    _run(str(tmp_path / "g.png"), "-o", str(tmp_path / "sr.png"), "--checkpoint", imdn_path)
    out = Image.open(tmp_path / "sr.png")
    assert out.mode == "L" and out.size == (96, 96)
    y = restore(imdn, read_image(tmp_path / "g.png").expand(3, -1, -1), 4).clamp(0, 1)
    luma = to_uint8((y * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)).numpy()
    assert np.abs(_levels(tmp_path / "sr.png") - luma).max() <= 1
    weights = str(shared_path("weights"))  # the preset finds DnCNN_KAIR/dncnn_25.pth there
    out = _run(str(tmp_path / "g.png"), "-o", str(tmp_path / "dn.png"), "--model", "dncnn-gray",
               env={"MCIR_WEIGHTS": weights})
    assert "dncnn_25 (DnCNN, x1)" in out, out
    assert Image.open(tmp_path / "dn.png").mode == "L" and Image.open(tmp_path / "dn.png").size == (24, 24)
    _crop("baby", (0, 0, 16, 16)).save(tmp_path / "c.png")
    err = _one_line_error(str(tmp_path / "c.png"), "-o", str(tmp_path / "no.png"), "--checkpoint", dncnn_path)
    assert "c.png: RGB image, but the model (DnCNN) takes grey input" in err
    assert not (tmp_path / "no.png").exists()


# -------------------------------------------------------------------------------- tiling


def test_tiled_equals_untiled(tmp_path, dncnn_path, imdn_path):
    """DnCNN (receptive-field radius 17) with overlap 34: equal to the untiled output
    within one 8-bit level (float sums). IMDN's channel attention uses whole-tile
    statistics, so its tiles differ slightly: PSNR tiled vs untiled >= 45 dB (measured
    52.1 dB on this crop, 8-bit levels)."""
    Image.open(shared_path("data", "denoise", "Set12_gray", "02.png")).crop((60, 60, 120, 120)).save(tmp_path / "g.png")
    _run(str(tmp_path / "g.png"), "-o", str(tmp_path / "whole.png"), "--checkpoint", dncnn_path, "--tile", "none")
    out = _run(str(tmp_path / "g.png"), "-o", str(tmp_path / "tiled.png"), "--checkpoint", dncnn_path,
               "--tile", "48", "--tile-overlap", "34", "--tile-batch", "3")
    assert "tile 48 px (--tile), 3 per pass" in out
    whole, tiled = _levels(tmp_path / "whole.png"), _levels(tmp_path / "tiled.png")
    assert np.abs(whole - tiled).max() <= 1 and np.abs(whole - np.asarray(Image.open(tmp_path / "g.png"))).mean() > 3
    _crop("butterfly", (0, 0, 64, 64)).save(tmp_path / "c.png")
    _run(str(tmp_path / "c.png"), "-o", str(tmp_path / "w.png"), "--checkpoint", imdn_path, "--tile", "none")
    _run(str(tmp_path / "c.png"), "-o", str(tmp_path / "t.png"), "--checkpoint", imdn_path,
         "--tile", "32", "--tile-overlap", "16")
    mse = ((_levels(tmp_path / "w.png") - _levels(tmp_path / "t.png")) ** 2).mean()
    assert 0 < mse and 10 * np.log10(255**2 / mse) >= 45


def test_tile_for_budget():
    from mcir_cli.models.inference import tile_for_budget

    # 1 GiB at 4 KiB per pixel, 4 tiles: sqrt(2**30 / 2**12 / 4) = 256
    assert tile_for_budget(2**30, 4096, batch=4) == 256
    assert tile_for_budget(2**30, 4096, batch=1) == 512
    assert tile_for_budget(10, 4096) == 64 and tile_for_budget(2**50, 1) == 4096


# ------------------------------------------------------------------ existing outputs, refusals


def test_refuses_overwrite_and_skip_existing_continues(tmp_path, imdn_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(("baby", "bird", "head")):
        _crop(name, (40, 40, 56, 56)).save(src / f"{i}.png")
    out = tmp_path / "out"
    _run(str(src), "-o", str(out), "--checkpoint", imdn_path)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
    err = _one_line_error(str(src), "-o", str(out), "--checkpoint", imdn_path)
    assert "0.png: output exists and 2 more; --skip-existing" in err
    (out / "1.png").unlink()  # a run stopped before its second image
    res = _run(str(src), "-o", str(out), "--checkpoint", imdn_path, "--skip-existing")
    assert "wrote 1 image" in res and "2 kept" in res
    for name in ("0.png", "2.png"):
        assert (out / name).stat().st_mtime_ns == before[name][1]
    assert (out / "1.png").read_bytes() == before["1.png"][0]
    (out / "2.png").write_bytes(b"stale")
    _run(str(src), "-o", str(out), "--checkpoint", imdn_path, "--overwrite")
    assert (out / "2.png").read_bytes() == before["2.png"][0]


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, imdn_path):
    src = tmp_path / "in"
    src.mkdir()
    _crop("baby", (0, 0, 16, 16)).save(src / "a.png")
    good = (src / "a.png").read_bytes()
    (src / "b.png").write_bytes(good[: len(good) // 2])  # truncated
    out = tmp_path / "out"
    err = _one_line_error(str(src), "-o", str(out), "--checkpoint", imdn_path)
    assert "b.png: cannot decode image" in err and not out.exists()
    (src / "b.png").unlink()
    err = _one_line_error(str(src), "-o", str(src / "restored"), "--checkpoint", imdn_path)
    assert "inside the input folder" in err and not (src / "restored").exists()
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    assert "empty: no images" in _one_line_error(str(tmp_path / "empty"), "-o", str(out), "--checkpoint", imdn_path)
    err = _one_line_error(str(src / "a.png"), "-o", str(src / "a.png"), "--checkpoint", imdn_path)
    assert "would replace an input" in err and (src / "a.png").read_bytes() == good
    assert "--tile must be" in _one_line_error(str(src), "-o", str(out), "--checkpoint", imdn_path, "--tile", "big")
    assert not out.exists()



@pytest.mark.parametrize("in_nc, out_nc, message", [(4, 3, "takes 4 channels and gives 3"),
                                                    (4, 4, "takes 4-channel input")])
def test_models_with_other_channels_are_refused(tmp_path, in_nc, out_nc, message):
    """A tiny ESRGAN (spandrel's class) with 4 input channels: nothing restore can feed."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.save(ESRGAN(in_nc=in_nc, out_nc=out_nc, num_filters=8, num_blocks=1, scale=2).state_dict(),
               tmp_path / "rgbx.pth")
    _crop("baby", (0, 0, 16, 16)).save(tmp_path / "a.png")
    err = _one_line_error(str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--checkpoint", str(tmp_path / "rgbx.pth"))
    assert f"the model (ESRGAN) {message}" in err and not (tmp_path / "o").exists()

def test_api_is_exported(tmp_path, imdn_path):
    from mcir_cli import restore_images

    _crop("bird", (0, 0, 16, 16)).save(tmp_path / "a.png")
    seen = []
    result = restore_images([tmp_path / "a.png"], tmp_path / "o", checkpoint=imdn_path, tile=None,
                            progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert result.written == [tmp_path / "o" / "a.png"] and seen == [("checking", 1, 1), ("restoring", 1, 1)]
    assert result.settings.tile is None and result.model["architecture"] == "IMDN"
