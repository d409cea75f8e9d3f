"""Image I/O: any image file -> float32 CHW tensor in [0, 1] (RGB order), and back.

Reading goes through Pillow. Rules:
- greyscale (L, I;16*, I, F) -> 1 x H x W; everything else -> 3 x H x W RGB;
- an alpha channel (RGBA, LA, palette with transparency) is dropped with a warning that
  names the file (`decode_image(..., keep_alpha=True)` keeps it, last, for `mcir restore`);
- 16-bit images are scaled by 65535 (Pillow reduces 16-bit *colour* PNG/TIFF to 8 bits,
  so those are decoded here: PNG with a small decoder, TIFF with `tifffile`);
- palette, CMYK, YCbCr, ... -> RGB;
- unreadable, truncated or non-image files raise `McirError` naming the file (a TIFF
  Pillow cannot decode, such as float32 colour, says its sample type).
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from mcir_cli._helpers.fsutil import atomic_write
from mcir_cli.data.lmdb_images import image_bytes
from mcir_cli.errors import McirError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})

# Truncated files must fail loudly, never decode as half-grey images.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_GREY_MODES = {"L", "I", "F", "1"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _warn_alpha(path: Path) -> None:
    warnings.warn(f"{path}: alpha channel dropped (images are scored as RGB)", stacklevel=3)


def _scale_float(arr: np.ndarray) -> np.ndarray:
    """Mode F (32-bit float) pixels: taken as [0, 1] if they fit, else as 0-255 or
    0-65535 levels, then clipped to [0, 1]."""
    arr = arr.astype(np.float32)
    peak = float(np.nanmax(arr)) if arr.size else 0.0
    if peak > 255.0:
        arr = arr / 65535.0
    elif peak > 1.0:
        arr = arr / 255.0
    return np.clip(np.nan_to_num(arr), 0.0, 1.0)


def _to_float(arr: np.ndarray) -> np.ndarray:
    """Integer/float pixel array -> float32 in [0, 1] by its dtype's range."""
    if arr.dtype == np.uint8 or arr.dtype == bool:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.dtype(">u2"), np.dtype("<u2")):
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.integer):
        # Pillow's mode "I" holds 16-bit PNG/TIFF data on some versions.
        return np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
    return _scale_float(arr)


def _source(path: Path) -> Path | io.BytesIO:
    """What Pillow opens: the file, or the encoded bytes of an image in an LMDB
    (`NAME.lmdb/<key>.png`, BasicSR's datasets; see `mcir_cli.data.lmdb_images`)."""
    data = image_bytes(path)
    return path if data is None else io.BytesIO(data)


def _read_bytes(src: Path | io.BytesIO, n: int = -1) -> bytes:
    if isinstance(src, io.BytesIO):
        return src.getvalue()[: None if n < 0 else n]
    with open(src, "rb") as fh:
        return fh.read(n)


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file, or None if not a PNG."""
    try:
        head = _read_bytes(_source(path), 33)
    except OSError:
        return None
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _paeth(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    p = a + b - c
    pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
    return np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))


def _decode_png16_colour(path: Path) -> np.ndarray:
    """Decode a non-interlaced 16-bit RGB/RGBA/grey+alpha PNG to uint16 H x W x C.

    Pillow keeps only the high byte of such files; this keeps all 16 bits."""
    data = _read_bytes(_source(path))
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ValueError("truncated chunk")
        if ctype == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        pos += 12 + length
    else:
        raise ValueError("missing IEND chunk (file truncated)")
    if header is None:
        raise ValueError("missing IHDR chunk")
    width, height, depth, colour, _, _, interlace = header
    if depth != 16 or interlace:
        raise ValueError("only non-interlaced 16-bit PNGs are decoded here")
    channels = {2: 3, 6: 4, 4: 2, 0: 1}[colour]
    bpp = 2 * channels
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    if len(raw) != height * (stride + 1):
        raise ValueError("pixel data has the wrong length (file truncated)")
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: running sum per byte lane, modulo 256
            cur = np.cumsum(line.reshape(width, bpp), axis=0).reshape(-1) & 0xFF
        elif kind == 2:  # Up
            cur = (line + prev) & 0xFF
        elif kind in (3, 4):  # Average / Paeth: sequential along the row
            cur = np.empty(stride, dtype=np.int32)
            left = np.zeros(bpp, dtype=np.int32)
            upleft = np.zeros(bpp, dtype=np.int32)
            for x in range(width):
                sl = slice(x * bpp, (x + 1) * bpp)
                up = prev[sl]
                pred = (left + up) >> 1 if kind == 3 else _paeth(left, up, upleft)
                left = (line[sl] + pred) & 0xFF
                cur[sl] = left
                upleft = up
        else:
            raise ValueError(f"unknown PNG filter type {kind}")
        out[y] = cur
        prev = cur
    pixels = out.astype(np.uint8).reshape(height, width, channels, 2)
    return (pixels[..., 0].astype(np.uint16) << 8) | pixels[..., 1].astype(np.uint16)


def _read_tiff16_colour(path: Path) -> np.ndarray:
    arr = tifffile.imread(path)
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar configuration
    return arr


def _array_from_pil(img: Image.Image, path: Path, keep_alpha: bool = False) -> np.ndarray:
    """Decoded Pillow image -> float32 H x W x C array in [0, 1] (C = 1 or 3; 2 or 4 with
    the alpha channel last when `keep_alpha`)."""
    mode = img.mode
    if mode == "P":
        has_alpha = "transparency" in img.info or img.palette is not None and img.palette.mode == "RGBA"
        img = img.convert("RGBA" if has_alpha else "RGB")
        mode = img.mode
    elif mode == "PA":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        grey = mode in ("LA", "La")
        if not keep_alpha:
            _warn_alpha(path)
        img = img.convert(("L" if grey else "RGB") + ("A" if keep_alpha else ""))
        mode = img.mode
    if mode == "1":
        img = img.convert("L")
        mode = "L"
    if mode in _GREY_MODES or mode.startswith("I;16"):
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            arr = arr.astype(np.uint16)
        return _to_float(arr)[..., None]
    if mode not in ("RGB", "RGBA", "LA"):
        img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX, ...
    return _to_float(np.asarray(img))


def _unreadable(path: Path) -> str:
    """Why Pillow could not identify a file: a TIFF whose samples it cannot decode (float
    colour, 32-bit integers; tifffile tells which), or not an image at all."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            kind = f"{page.dtype} TIFF, {page.samplesperpixel} sample(s) per pixel"
    except Exception:  # not a TIFF (or not one tifffile reads either)
        return "not an image file Pillow can read"
    return (f"{kind}: mcir reads 8/16-bit images and one-channel float32 TIFFs; save it as a 16-bit "
            "PNG or TIFF (levels 0-65535)")


@contextlib.contextmanager
def _decode_errors(path: Path) -> Iterator[None]:
    """Every way a file can fail to be an image, as a `McirError` naming the file."""
    try:
        yield
    except FileNotFoundError:
        raise McirError("file not found", path) from None
    except IsADirectoryError:
        raise McirError("is a folder, not an image file", path) from None
    except UnidentifiedImageError:
        raise McirError(_unreadable(path), path) from None
    except (OSError, ValueError, SyntaxError, zlib.error, struct.error, KeyError) as exc:
        raise McirError(f"cannot decode image (truncated or corrupt?): {exc}", path) from None
    except Image.DecompressionBombError as exc:
        raise McirError(f"image too large: {exc}", path) from None


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """An opened Pillow image with its pixels loaded (truncation is found here, as a
    `McirError` naming the file); errors in the caller's block pass through unchanged."""
    path = Path(path)
    with _decode_errors(path):
        img = Image.open(_source(path))
    with img:
        with _decode_errors(path):
            img.load()
        yield img


def _wide_colour(img: Image.Image, path: Path) -> np.ndarray | None:
    """16-bit colour (or grey + alpha) pixels that Pillow reduces to 8 bits, decoded here;
    None for every other image."""
    fmt, mode = img.format, img.mode
    if mode in ("RGB", "RGBA", "LA") and fmt == "PNG":
        head = _png_header(path)
        if head is not None and head[0] == 16:
            return _decode_png16_colour(path)
    elif mode in ("RGB", "RGBA") and fmt == "TIFF" and img.tag_v2.get(258, (8,))[0] == 16:
        return _read_tiff16_colour(path)
    return None


def decode_image(img: Image.Image, path: Path, keep_alpha: bool = False) -> tuple[np.ndarray, int]:
    """An opened image's pixels as float32 H x W x C in [0, 1] (C = 1 or 3, plus the alpha
    channel last when `keep_alpha`) and the file's bits per sample (8, or 16 for 16-bit
    and float files)."""
    with _decode_errors(path):
        arr = _wide_colour(img, path)
        if arr is None:
            wide = img.mode in ("I", "F") or img.mode.startswith("I;16")
            return _array_from_pil(img, path, keep_alpha), 16 if wide else 8
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[-1] in (2, 4) and not keep_alpha:
            _warn_alpha(path)
            arr = arr[..., :-1]
        return _to_float(arr.astype(np.uint16)), 16


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file as a float32 C x H x W tensor in [0, 1], RGB (C = 3) or grey
    (C = 1). Raises `McirError` naming the file if it cannot be decoded."""
    path = Path(path)
    with open_image(path) as img:
        array, _ = decode_image(img, path)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1), dtype=np.float32))


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] float tensor -> uint8 levels: clamp, x255, round half to even (as np.round)."""
    return torch.round(img.detach().clamp(0.0, 1.0) * 255.0).to(torch.uint8)


def write_image(path: str | Path, img: torch.Tensor) -> Path:
    """Save a C x H x W tensor in [0, 1] (C = 1 or 3) as an 8-bit image (format by suffix,
    PNG when there is none), atomically."""
    path = Path(path)
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    if img.dim() != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"write_image expects a 1xHxW or 3xHxW tensor, got shape {tuple(img.shape)}")
    arr = to_uint8(img).cpu().numpy()
    pil = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))
    suffix = path.suffix.lower()
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP", ".webp": "WEBP"}.get(
        suffix, "PNG"
    )
    options = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    return atomic_write(path, lambda tmp: pil.save(tmp, format=fmt, **options))


GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, read from its header only (no pixel decoding)."""
    return _header(path).size


def is_grey(path: str | Path) -> bool:
    """Whether an image file holds one channel (read from its header; palette = colour)."""
    return _header(path).mode in GREY_MODES


def _header(path: str | Path) -> Image.Image:
    path = Path(path)
    try:
        with Image.open(_source(path)) as img:
            return img
    except FileNotFoundError:
        raise McirError("file not found", path) from None
    except UnidentifiedImageError:
        raise McirError(_unreadable(path), path) from None
    except OSError as exc:
        raise McirError(f"cannot read image header: {exc}", path) from None
    except Image.DecompressionBombError as exc:  # read up front for every image of a benchmark
        raise McirError(f"image too large: {exc}", path) from None
