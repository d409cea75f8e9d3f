"""Users' photos for `mcir restore`: read upright with alpha and metadata, written back
in the format asked for with their bit depth, alpha and metadata.

Reading (pixels through `imageio.decode_image`, the one decoder of the project):
- the EXIF orientation is applied to the pixels, and the orientation tag of the EXIF
  written back is reset to 1 (upright), so viewers do not rotate the result again;
- the ICC profile, EXIF, XMP and PNG text chunks are kept, as bytes (a CMYK file's ICC
  profile describes CMYK and is dropped: the pixels become RGB); a TIFF's own tags are
  not EXIF and are not carried, its ICC profile and resolution are;
- 16-bit PNG/TIFF (and float TIFF) are 16-bit photos, everything else 8-bit.

Writing: 8-bit files through Pillow; 16-bit PNG through **pypng** (Pillow cannot write
16-bit colour PNG; pypng is small, pure Python, writes 16-bit grey/RGB/RGBA, and lets
the iCCP, eXIf, iTXt/tEXt and pHYs chunks be written beside the pixels); 16-bit TIFF
through tifffile (already installed with scikit-image; writes the ICC profile tag).
The resolution (DPI) is multiplied by the model's scale: the printed size stays.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import Tensor

from mcir_cli._helpers.fsutil import atomic_write
from mcir_cli.data.imageio import decode_image, open_image, to_uint8

# the formats `mcir restore` writes, by the names Pillow gives them
FORMAT_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp"}
_EXIF_HEADER = b"Exif\x00\x00"
_XMP_KEY = "XML:com.adobe.xmp"  # where PNG files keep XMP (an iTXt chunk)
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class PhotoMeta:
    """What a photo carries besides its pixels, kept from input to output."""

    format: str  # Pillow's name of the input's format: PNG, JPEG, WEBP, TIFF, BMP, ...
    bits: int = 8  # bits per sample of the input: 8 or 16
    icc: bytes | None = None
    exif: bytes | None = None  # with the "Exif\0\0" header, orientation reset to 1
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    text: dict[str, str] = field(default_factory=dict)  # PNG text chunks (XMP apart)


@dataclass
class Photo:
    """An upright image: C x H x W float32 in [0, 1] (C = 1 grey or 3 RGB), its alpha
    (1 x H x W) if it has one, and its metadata."""

    pixels: Tensor
    alpha: Tensor | None
    meta: PhotoMeta

    @property
    def grey(self) -> bool:
        return self.pixels.shape[0] == 1


# ------------------------------------------------------------------------------ reading


def _upright(arr: np.ndarray, orientation: int) -> np.ndarray:
    """H x W x C pixels as the EXIF orientation (1-8) says to display them."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr)) if orientation in ops else arr


def _orientation_reset(exif: bytes) -> bytes:
    """EXIF bytes with IFD0's orientation tag set to 1, every other byte as it was (a
    re-serialised EXIF could lose maker notes); unparseable EXIF is returned unchanged."""
    body = exif[len(_EXIF_HEADER):] if exif.startswith(_EXIF_HEADER) else exif
    order = {b"II": "<", b"MM": ">"}.get(body[:2])
    try:
        if order is not None:
            (ifd,) = struct.unpack(order + "I", body[4:8])
            (count,) = struct.unpack(order + "H", body[ifd : ifd + 2])
            for at in range(ifd + 2, ifd + 2 + 12 * count, 12):
                tag, kind = struct.unpack(order + "HH", body[at : at + 4])
                if tag == _ORIENTATION and kind == 3:  # SHORT, value in the entry itself
                    body = body[: at + 8] + struct.pack(order + "H", 1) + body[at + 10 :]
    except struct.error:
        pass
    return _EXIF_HEADER + body


def _metadata(img: Image.Image, bits: int) -> PhotoMeta:
    info = img.info
    text = {k: v for k, v in (getattr(img, "text", None) or {}).items() if isinstance(v, str) and k != _XMP_KEY}
    xmp = info.get("xmp")
    exif = info.get("exif") if img.format != "TIFF" else None
    dpi = info.get("dpi")
    return PhotoMeta(
        format=img.format or "PNG",
        bits=bits,
        icc=None if img.mode == "CMYK" else info.get("icc_profile") or None,
        exif=_orientation_reset(exif) if exif else None,
        xmp=xmp.encode("utf-8") if isinstance(xmp, str) else xmp or None,
        dpi=(float(dpi[0]), float(dpi[1])) if dpi else None,
        text=text,
    )


def read_photo(path: str | Path) -> Photo:
    """An image file as an upright `Photo`; a file that is not a readable image is a
    one-line `McirError` naming it."""
    path = Path(path)
    with open_image(path) as img:
        arr, bits = decode_image(img, path, keep_alpha=True)
        arr = _upright(arr, int(img.getexif().get(_ORIENTATION, 1) or 1))
        meta = _metadata(img, bits)
    tensor = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))
    if tensor.shape[0] in (2, 4):
        return Photo(tensor[:-1].contiguous(), tensor[-1:].contiguous(), meta)
    return Photo(tensor, None, meta)


# ------------------------------------------------------------------------------ writing


def _levels(photo: Photo, bits: int, alpha: bool) -> np.ndarray:
    """H x W x C integer levels (uint8 or uint16), alpha last."""
    x = photo.pixels if photo.alpha is None or not alpha else torch.cat([photo.pixels, photo.alpha])
    if bits == 8:
        return to_uint8(x).cpu().numpy().transpose(1, 2, 0)
    return torch.round(x.detach().clamp(0, 1) * 65535.0).to(torch.int32).cpu().numpy().astype(np.uint16).transpose(1, 2, 0)


def _png_text_chunk(key: str, value: str) -> tuple[bytes, bytes]:
    try:
        return b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")
    except UnicodeEncodeError:  # iTXt: uncompressed, no language tag, no translated key
        return b"iTXt", key.encode("latin-1", "replace") + b"\0\0\0\0\0" + value.encode("utf-8")


def _png16(levels: np.ndarray, meta: PhotoMeta, dpi: tuple[float, float] | None) -> bytes:
    """A 16-bit PNG (pypng) with the metadata chunks inserted after IHDR."""
    import png

    h, w, c = levels.shape
    ppm = {"x_pixels_per_unit": round(dpi[0] / 0.0254), "y_pixels_per_unit": round(dpi[1] / 0.0254),
           "unit_is_meter": True} if dpi else {}
    writer = png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16, compression=6, **ppm)
    rows = levels.astype(">u2").reshape(h, w * c).view(np.uint8)
    buf = io.BytesIO()
    writer.write_packed(buf, iter(rows))
    chunks = list(png.Reader(bytes=buf.getvalue()).chunks())
    extra = []
    if meta.icc:
        extra.append((b"iCCP", b"ICC profile\0\0" + zlib.compress(meta.icc)))
    if meta.exif:
        extra.append((b"eXIf", meta.exif[len(_EXIF_HEADER):]))
    if meta.xmp:
        extra.append((b"iTXt", _XMP_KEY.encode() + b"\0\0\0\0\0" + meta.xmp))
    extra += [_png_text_chunk(k, v) for k, v in meta.text.items()]
    out = io.BytesIO()
    png.write_chunks(out, chunks[:1] + extra + chunks[1:])
    return out.getvalue()


def _tiff16(tmp: Path, levels: np.ndarray, meta: PhotoMeta, dpi: tuple[float, float] | None) -> None:
    import tifffile

    c = levels.shape[-1]
    tifffile.imwrite(
        tmp, levels if c > 1 else levels[..., 0], photometric="rgb" if c >= 3 else "minisblack",
        extrasamples=("unassalpha",) if c in (2, 4) else None, iccprofile=meta.icc,
        resolution=dpi, resolutionunit="INCH" if dpi else None, compression="zlib",
    )


def _pillow_options(fmt: str, meta: PhotoMeta, dpi: tuple[float, float] | None, quality: int | None) -> dict:
    """Pillow's save options that carry the metadata each format can hold."""
    opts: dict = {}
    if fmt in ("PNG", "JPEG", "WEBP", "TIFF") and meta.icc:
        opts["icc_profile"] = meta.icc
    if fmt in ("PNG", "JPEG", "WEBP") and meta.exif:
        opts["exif"] = meta.exif
    if fmt in ("JPEG", "WEBP") and meta.xmp:
        opts["xmp"] = meta.xmp
    if fmt in ("PNG", "JPEG", "TIFF", "BMP") and dpi:
        opts["dpi"] = dpi
    if fmt == "PNG" and (meta.text or meta.xmp):
        info = PngImagePlugin.PngInfo()
        for key, value in meta.text.items():
            info.add_text(key, value)
        if meta.xmp:
            info.add_itxt(_XMP_KEY, meta.xmp.decode("utf-8", "replace"))
        opts["pnginfo"] = info
    if fmt == "JPEG":
        opts["quality"] = quality or 95
    if fmt == "WEBP":
        opts.update({"quality": quality} if quality else {"lossless": True})
    return opts


def write_photo(path: str | Path, photo: Photo, fmt: str, quality: int | None = None, scale: int = 1) -> Path:
    """Write `photo` atomically as `fmt` (a `FORMAT_SUFFIXES` key): 16 bits where the
    input had them and the format holds them (PNG, TIFF), alpha where the format has it
    (not JPEG), and the metadata each format can carry."""
    keep16 = photo.meta.bits == 16 and fmt in ("PNG", "TIFF")
    levels = _levels(photo, 16 if keep16 else 8, alpha=fmt != "JPEG")
    dpi = (photo.meta.dpi[0] * scale, photo.meta.dpi[1] * scale) if photo.meta.dpi else None
    if keep16 and fmt == "PNG":
        data = _png16(levels, photo.meta, dpi)
        return atomic_write(path, lambda tmp: tmp.write_bytes(data))
    if keep16:
        return atomic_write(path, lambda tmp: _tiff16(tmp, levels, photo.meta, dpi))
    pil = Image.fromarray(levels[..., 0] if levels.shape[-1] == 1 else levels)
    options = _pillow_options(fmt, photo.meta, dpi, quality)
    return atomic_write(path, lambda tmp: pil.save(tmp, format=fmt, **options))
