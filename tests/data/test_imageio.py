"""mcir_cli.data.imageio: reading every kind of image into float32 CHW [0, 1], writing PNGs."""

from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import tifffile
import torch
from tests.conftest import shared_path
from PIL import Image

from mcir_cli.data.imageio import IMAGE_EXTENSIONS, image_size, read_image, to_uint8, write_image
from mcir_cli.errors import McirError

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


def _rgb(h: int = 6, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (h, w, 3)).astype(np.uint8)


def test_extensions():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"} == IMAGE_EXTENSIONS


def test_rgb_png_roundtrip(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.dtype == torch.float32 and img.shape == (3, 6, 7)
    assert torch.equal(to_uint8(img), torch.from_numpy(arr).permute(2, 0, 1))
    write_image(tmp_path / "out" / "b.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "b.png")), arr)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]


def test_grey_png_is_one_channel(tmp_path):
    arr = _rgb()[..., 0]
    Image.fromarray(arr).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.shape == (1, 6, 7)
    assert torch.equal(to_uint8(img)[0], torch.from_numpy(arr))
    write_image(tmp_path / "g2.png", img)
    back = Image.open(tmp_path / "g2.png")
    assert back.mode == "L" and np.array_equal(np.asarray(back), arr)


def test_rgba_drops_alpha_with_warning(tmp_path):
    arr = np.dstack([_rgb(), np.full((6, 7), 128, np.uint8)])
    path = tmp_path / "alpha.png"
    Image.fromarray(arr, "RGBA").save(path)
    with pytest.warns(UserWarning, match="alpha.png"):
        img = read_image(path)
    assert img.shape == (3, 6, 7)
    assert torch.equal(to_uint8(img), torch.from_numpy(arr[..., :3]).permute(2, 0, 1))


def test_la_drops_alpha_with_warning(tmp_path):
    arr = np.dstack([_rgb()[..., 0], np.full((6, 7), 9, np.uint8)])
    Image.fromarray(arr, "LA").save(tmp_path / "la.png")
    with pytest.warns(UserWarning, match="la.png"):
        img = read_image(tmp_path / "la.png")
    assert img.shape == (1, 6, 7)


def test_16bit_grey_png_and_tiff_scaled_by_65535(tmp_path):
    arr = np.full((5, 4), 65535 // 2, np.uint16)
    arr[0, 0], arr[0, 1] = 65535, 0
    for name in ("g16.png", "g16.tif"):
        Image.fromarray(arr).save(tmp_path / name)
        img = read_image(tmp_path / name)
        assert img.shape == (1, 5, 4)
        assert img[0, 1, 1].item() == pytest.approx(0.5, abs=1e-4)  # not clipped at 255
        assert img[0, 0, 0].item() == 1.0 and img[0, 0, 1].item() == 0.0


def _png16_rgb(path, arr: np.ndarray, filter_type: int = 0) -> None:
    """Write a 16-bit RGB PNG (Pillow cannot) with one filter type (0-4) on every row,
    byte by byte in plain Python (independent of the reader's vectorised decoder)."""
    h, w, _ = arr.shape
    rows, prev = [], [0] * (w * 6)
    for y in range(h):
        line = list(arr[y].astype(">u2").tobytes())
        out = []
        for i, byte in enumerate(line):
            a = line[i - 6] if i >= 6 else 0
            b = prev[i]
            c = prev[i - 6] if i >= 6 else 0
            if filter_type == 0:
                pred = 0
            elif filter_type == 1:
                pred = a
            elif filter_type == 2:
                pred = b
            elif filter_type == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
            out.append((byte - pred) & 0xFF)
        rows.append(bytes([filter_type]) + bytes(out))
        prev = line

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
    data += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path.write_bytes(data)


@pytest.mark.parametrize("filter_type", [0, 1, 2, 3, 4])
def test_16bit_rgb_png_keeps_16_bits(tmp_path, filter_type):
    arr = np.random.RandomState(1).randint(0, 65536, (4, 5, 3)).astype(np.uint16)
    arr[1, 2] = 32767
    _png16_rgb(tmp_path / "c16.png", arr, filter_type)
    img = read_image(tmp_path / "c16.png")
    assert img.shape == (3, 4, 5)
    expected = torch.from_numpy(arr.astype(np.float32) / 65535.0).permute(2, 0, 1)
    assert torch.allclose(img, expected, atol=1e-7)


def test_16bit_rgb_tiff(tmp_path):
    arr = np.full((3, 4, 3), 32767, np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", arr)
    img = read_image(tmp_path / "c16.tif")
    assert img.shape == (3, 3, 4)
    assert torch.allclose(img, torch.full_like(img, 32767 / 65535))


def test_a_tiff_pillow_cannot_decode_says_its_sample_type(tmp_path):
    """float32 colour (what an HDR or numpy pipeline writes): one line that says what the
    file is and what to save instead, from the header and from the pixels alike."""
    path = tmp_path / "f32.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((6, 5, 3), dtype=np.float32))
    for read in (read_image, image_size):
        with pytest.raises(McirError, match=r"f32.tif: float32 TIFF, 3 sample\(s\) per pixel: .* 16-bit PNG or TIFF"):
            read(path)
    (tmp_path / "x.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(McirError, match="not an image file Pillow can read"):
        read_image(tmp_path / "x.tif")


def test_palette_image(tmp_path):
    arr = _rgb(8, 8)[..., :3] // 64 * 64  # few colours
    pil = Image.fromarray(arr).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pil.save(tmp_path / "p.png")
    expected = np.asarray(pil.convert("RGB"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no transparency -> no alpha warning
        img = read_image(tmp_path / "p.png")
    assert img.shape == (3, 8, 8)
    assert torch.equal(to_uint8(img), torch.from_numpy(expected.copy()).permute(2, 0, 1))


def test_palette_with_transparency_warns(tmp_path):
    pil = Image.fromarray(_rgb(4, 4) // 128 * 128).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pil.info["transparency"] = 0
    pil.save(tmp_path / "pt.png", transparency=0)
    with pytest.warns(UserWarning, match="pt.png"):
        img = read_image(tmp_path / "pt.png")
    assert img.shape == (3, 4, 4)


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "c.jpg")
    img = read_image(tmp_path / "c.jpg")
    assert img.shape == (3, 6, 7) and img.dtype == torch.float32


def test_truncated_png_names_the_file(tmp_path):
    path = tmp_path / "trunc.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (64, 64, 3)).astype(np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(McirError, match="trunc.png") as info:
        read_image(path)
    assert "\n" not in str(info.value) and info.value.path == path


def test_non_image_file(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("not an image at all")
    with pytest.raises(McirError, match="notes.png"):
        read_image(path)
    with pytest.raises(McirError, match="notes.png"):
        image_size(path)


def test_missing_file(tmp_path):
    with pytest.raises(McirError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_image_size(tmp_path):
    Image.fromarray(_rgb(6, 7)).save(tmp_path / "s.png")
    assert image_size(tmp_path / "s.png") == (7, 6)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.999, 1.0, 2.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 2, 255, 255, 255]
    assert to_uint8(x).dtype == torch.uint8


def test_write_image_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError):
        write_image(tmp_path / "x.png", torch.zeros(2, 4, 4))


def test_real_shared_image():
    path = shared_path("data", "sr", "Set5", "HR", "baby.png")
    img = read_image(path)
    w, h = image_size(path)
    assert img.shape == (3, h, w) and 0.0 <= img.min() and img.max() <= 1.0
