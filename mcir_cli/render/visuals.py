"""Pictures that show where a retrained model differs: comparison strips and divergence
heat maps (Pillow + numpy + torch), and the per-image Δ charts of a comparison (drawn by
`charts.py` with matplotlib). Drawing only: finding and re-running the models is
`visual_sources.py`'s job.

Layout of `comparison_strip` (all sizes in pixels, H x W = GT size, c = crop size):

    +--------+-----+--------+-----+--------+-----+--------+-----+--------+   LABEL_H
    | LQ up  | SEP |  base  | SEP |  new   | SEP |   GT   | SEP | |n-b|  |   H
    +--------+-----+--------+-----+--------+-----+--------+-----+--------+
                                   SEP                                        SEP
    caption of the zoom row ("x3 crops at ...")                               LABEL_H
    [crop*zoom] SEP [crop*zoom] SEP [crop*zoom] SEP [crop*zoom] SEP [crop*zoom]  c*zoom

    width  = max(5*W + 4*SEP, 5*c*zoom + 4*SEP)
    height = LABEL_H + H + SEP + LABEL_H + c*zoom
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from mcir_cli._helpers.fsutil import atomic_write
from mcir_cli.render import charts

if TYPE_CHECKING:  # drawing needs no comparison code at run time
    from mcir_cli.compare.results import Comparison

SEP = 4  # gap between panels (and between the two rows)
LABEL_H = 16  # height of a text band
MAX_CROP = 48  # largest zoom-crop side
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
BOX = (0, 255, 255)  # outline of the zoomed region on the full panels

_FONT: Any = None


def _font() -> Any:
    global _FONT
    if _FONT is None:
        _FONT = ImageFont.load_default()
    return _FONT


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, max_w: int,
          fill: tuple[int, int, int] = TEXT) -> None:
    """Draw `text` (ASCII-safe) at xy, shortened with '..' to fit `max_w` pixels."""
    text = text.encode("latin-1", "replace").decode("latin-1")
    font = _font()
    if max_w <= 0:
        return
    if draw.textlength(text, font=font) > max_w:
        while text and draw.textlength(text + "..", font=font) > max_w:
            text = text[:-1]
        text = text + ".." if text else ""
    if text:
        draw.text(xy, text, font=font, fill=fill)


# --------------------------------------------------------------------------- arrays


def _to_hwc(img: Any) -> np.ndarray:
    """CHW / HW / 1CHW tensor or array in [0, 1] -> float64 HxWxC (C = 1 or 3) in [0, 1]."""
    if isinstance(img, torch.Tensor):
        arr = img.detach().to("cpu", torch.float64).numpy()
    else:
        arr = np.asarray(img, dtype=np.float64)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {arr.shape[0]}")
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected a CHW image, got shape {tuple(arr.shape)}")
    if arr.shape[0] == 4:  # drop alpha
        arr = arr[:3]
    if arr.shape[0] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {arr.shape[0]}")
    return np.clip(np.nan_to_num(arr.transpose(1, 2, 0)), 0.0, 1.0)


def _rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _to_pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(_rgb(arr) * 255.0).astype(np.uint8), mode="RGB")


def divergence_map(base: Any, new: Any) -> np.ndarray:
    """H x W float64: |new - base| averaged over channels (grey vs RGB: grey is repeated).
    Exactly zero where the two images are identical."""
    return _divergence_hwc(_to_hwc(base), _to_hwc(new))


def _divergence_hwc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"images differ in size: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}")
    if a.shape[2] != b.shape[2]:
        a, b = _rgb(a), _rgb(b)
    return np.abs(b - a).mean(axis=2)


def auto_heat_scale(div: np.ndarray) -> float:
    """The value mapped to full intensity when no scale is given: the 99.5th percentile of
    the map (so one outlier pixel does not hide the rest), or its maximum if that is 0;
    0 for an all-zero map."""
    div = np.asarray(div, dtype=np.float64)
    if div.size == 0:
        return 0.0
    s = float(np.percentile(div, 99.5))
    return s if s > 0 else float(div.max())


def _colormap(t: np.ndarray) -> np.ndarray:
    """t in [0, 1] -> RGB uint8 along black -> red -> yellow -> white (0 -> black)."""
    t = np.clip(t, 0.0, 1.0)
    rgb = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)
    return np.round(rgb * 255.0).astype(np.uint8)


def heatmap_image(div: np.ndarray, scale: float | None = None) -> Image.Image:
    """Colour a divergence map: value / scale (amplification 1/scale) through
    black -> red -> yellow -> white. `scale=None` uses `auto_heat_scale`. An all-zero map
    (or scale 0) gives an all-black image."""
    div = np.asarray(div, dtype=np.float64)
    if div.ndim != 2:
        raise ValueError(f"expected an H x W map, got shape {div.shape}")
    s = auto_heat_scale(div) if scale is None else float(scale)
    t = div / s if s > 0 else np.zeros_like(div)
    return Image.fromarray(_colormap(t), mode="RGB")


def crop_size(height: int, width: int) -> int:
    """Side of the zoom crop: min(48, H/4, W/4), at least 1."""
    return max(1, min(MAX_CROP, height // 4, width // 4))


def largest_difference_box(div: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the size x size window with the largest summed
    divergence (integral image); the top-left-most on ties, (0, 0, size, size) for a zero
    map."""
    div = np.asarray(div, dtype=np.float64)
    h, w = div.shape
    size = max(1, min(size, h, w))
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = div.cumsum(0).cumsum(1)
    sums = (integral[size:, size:] - integral[:-size, size:] - integral[size:, :-size]
            + integral[:-size, :-size])
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(left), int(top), int(left) + size, int(top) + size


# --------------------------------------------------------------------------- strip


def comparison_strip(lq: Any, base: Any, new: Any, gt: Any,
                     crop_box: tuple[int, int, int, int] | None = None, zoom: int = 3,
                     labels: Sequence[str] = ("LQ (upscaled)", "baseline", "retrained", "GT"),
                     heat_scale: float | None = None) -> Image.Image:
    """LQ (nearest-upscaled to GT size) | baseline | retrained | GT | heat map of
    |retrained - baseline|, each labelled, above zoomed crops of the region where the two
    models differ most (or `crop_box` = (left, top, right, bottom) in GT pixels). Inputs
    are CHW float tensors in [0, 1]; grey (1-channel) images are shown as grey. See the
    module docstring for the exact layout. `heat_scale`: the |difference| shown at full
    intensity (default `auto_heat_scale`; pass one value to make several strips
    comparable)."""
    if zoom < 1:
        raise ValueError("zoom must be >= 1")
    if len(labels) != 4:
        raise ValueError("labels needs 4 entries: LQ, baseline, retrained, GT")
    lq_arr, b, n, g = _strip_arrays(lq, base, new, gt)
    h, w = g.shape[:2]
    div = _divergence_hwc(b, n)
    scale = auto_heat_scale(div) if heat_scale is None else float(heat_scale)
    heat = heatmap_image(div, scale)
    box, where = _zoom_box(div, crop_box, labels)
    cw, ch = box[2] - box[0], box[3] - box[1]

    panels = [_to_pil(lq_arr), _to_pil(b), _to_pil(n), _to_pil(g), heat]
    crops = [p.crop(box).resize((cw * zoom, ch * zoom), Image.Resampling.NEAREST) for p in panels]

    top_w = 5 * w + 4 * SEP
    zoom_w = 5 * cw * zoom + 4 * SEP
    width = max(top_w, zoom_w)
    height = LABEL_H + h + SEP + LABEL_H + ch * zoom
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    heat_label = f"|{labels[2]} - {labels[1]}| " + (f"x{1 / scale:.3g}" if scale > 0 else "(identical)")
    panel_labels = [*labels, heat_label]
    outline = (cw, ch) != (w, h)
    for i, (panel, label) in enumerate(zip(panels, panel_labels)):
        x = i * (w + SEP)
        canvas.paste(panel, (x, LABEL_H))
        _text(draw, (x + 2, 2), label, w - 2)
        if outline:
            _outline(draw, box, x, LABEL_H, w, h)
    y0 = LABEL_H + h + SEP
    _text(draw, (2, y0 + 2), f"x{zoom} crops at ({box[0]},{box[1]})-({box[2]},{box[3]}), {where}",
          width - 4)
    for i, crop in enumerate(crops):
        canvas.paste(crop, (i * (cw * zoom + SEP), y0 + LABEL_H))
    return canvas


def outputs_strip(lq: Any, outputs: Sequence[Any], labels: Sequence[str], zoom: int = 3) -> Image.Image:
    """Images without ground truth: LQ (nearest-upscaled) | each model's output, labelled,
    above zoomed crops of the region where the first two outputs differ most. Inputs are
    CHW tensors in [0, 1]; every output has the size of the first."""
    outs = [_to_hwc(o) for o in outputs]
    h, w = outs[0].shape[:2]
    if any(o.shape[:2] != (h, w) for o in outs):
        raise ValueError("the outputs differ in size")
    lq_arr = _strip_arrays(lq, outputs[0], outputs[0], outputs[0])[0]
    box = largest_difference_box(_divergence_hwc(outs[0], outs[-1]), crop_size(h, w))
    cw, ch = box[2] - box[0], box[3] - box[1]
    panels = [_to_pil(a) for a in (lq_arr, *outs)]
    n = len(panels)
    width = max(n * w, n * cw * zoom) + (n - 1) * SEP
    canvas = Image.new("RGB", (width, LABEL_H + h + SEP + LABEL_H + ch * zoom), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y0 = LABEL_H + h + SEP
    for i, (panel, label) in enumerate(zip(panels, ("LQ (upscaled, no GT)", *labels))):
        canvas.paste(panel, (i * (w + SEP), LABEL_H))
        _text(draw, (i * (w + SEP) + 2, 2), label, w - 2)
        crop = panel.crop(box).resize((cw * zoom, ch * zoom), Image.Resampling.NEAREST)
        canvas.paste(crop, (i * (cw * zoom + SEP), y0 + LABEL_H))
    _text(draw, (2, y0 + 2), f"x{zoom} crops at ({box[0]},{box[1]})-({box[2]},{box[3]}), largest "
          f"|{labels[-1]} - {labels[0]}|", width - 4)
    return canvas


def _strip_arrays(lq: Any, base: Any, new: Any, gt: Any) -> tuple[np.ndarray, ...]:
    """(LQ, base, new, GT) as H x W x C arrays of GT size: the outputs checked against
    the GT, the LQ nearest-upscaled to it."""
    g, b, n = _to_hwc(gt), _to_hwc(base), _to_hwc(new)
    h, w = g.shape[:2]
    for name, arr in (("baseline", b), ("retrained", n)):
        if arr.shape[:2] != (h, w):
            raise ValueError(f"{name} output is {arr.shape[1]}x{arr.shape[0]}, GT is {w}x{h}")
    lq_arr = _to_hwc(lq)
    if lq_arr.shape[:2] != (h, w):
        t = torch.from_numpy(lq_arr.transpose(2, 0, 1).copy())[None]
        lq_arr = F.interpolate(t, size=(h, w), mode="nearest")[0].numpy().transpose(1, 2, 0)
    return lq_arr, b, n, g


def _zoom_box(div: np.ndarray, crop_box: tuple[int, int, int, int] | None,
              labels: Sequence[str]) -> tuple[tuple[int, int, int, int], str]:
    """The zoomed region and how it was chosen: where the models differ most, or the
    caller's `crop_box` (checked to lie inside the image)."""
    h, w = div.shape
    if crop_box is None:
        return largest_difference_box(div, crop_size(h, w)), f"largest |{labels[2]} - {labels[1]}|"
    left, top, right, bottom = (int(v) for v in crop_box)
    if not (0 <= left < right <= w and 0 <= top < bottom <= h):
        raise ValueError(f"crop_box {crop_box} is not inside the {w}x{h} image")
    return (left, top, right, bottom), "chosen region"


def _outline(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], x0: int, y0: int,
             w: int, h: int) -> None:
    """Mark `box` on a panel at (x0, y0) with lines just outside it; a side on the panel's
    edge is not drawn, so no pixel inside the box is ever covered."""
    l, t, r, b = box
    top, bottom = max(t - 1, 0), min(b, h - 1)
    left, right = max(l - 1, 0), min(r, w - 1)
    if l >= 1:
        draw.line((x0 + l - 1, y0 + top, x0 + l - 1, y0 + bottom), fill=BOX)
    if r <= w - 1:
        draw.line((x0 + r, y0 + top, x0 + r, y0 + bottom), fill=BOX)
    if t >= 1:
        draw.line((x0 + left, y0 + t - 1, x0 + right, y0 + t - 1), fill=BOX)
    if b <= h - 1:
        draw.line((x0 + left, y0 + b, x0 + right, y0 + b), fill=BOX)


# --------------------------------------------------------------------------- charts


def largest_delta_images(per_image_deltas: dict[str, float], k: int) -> list[str]:
    """The k image names with the largest |delta| (NaN ignored; ties by name)."""
    if k <= 0:
        return []
    items = [(name, float(d)) for name, d in per_image_deltas.items() if not math.isnan(float(d))]
    items.sort(key=lambda nd: (-abs(nd[1]), nd[0]))
    return [name for name, _ in items[:k]]


# --------------------------------------------------------------------------- saving


_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP"}


def save_image(img: Image.Image, path: str | Path) -> Path:
    """Write `img` atomically (temp file + rename); the format follows the suffix
    (PNG when unknown)."""
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: img.save(tmp, format=fmt))


def slug(text: str) -> str:
    """`text` as a safe file-name part (runs of other characters become "_"; no leading
    dot, so a dataset named ".." cannot climb out of --visuals)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_").lstrip(".") or "x"


def write_delta_charts(comparison: Comparison, out_dir: str | Path, metric: str = "psnr") -> list[Path]:
    """For a `results.Comparison`: one Δ chart per later model and dataset (`charts.delta_figure`:
    per-image bars named by image, the mean Δ and its bootstrap 95 % CI from the
    comparison's stats), `delta_<metric>_<dataset>.png` (two models) or
    `delta_<metric>_<dataset>_<label>.png`. Returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for label in comparison.models[1:]:
        for ds in comparison.datasets:
            deltas = comparison.image_deltas(ds, label, metric)
            stat = comparison.stat(ds, label, metric)
            name = f"delta_{metric}_{slug(ds)}"
            if len(comparison.models) > 2:
                name += f"_{slug(label)}"
            fig = charts.delta_figure(list(deltas), list(deltas.values()), metric=metric.upper(),
                                      unit="dB" if metric == "psnr" else "",
                                      title=f"{ds}: {metric.upper()} {label} − {comparison.baseline}, per image",
                                      mean=stat.mean_delta, ci=(stat.ci_low, stat.ci_high))
            written.append(charts.save_figure(fig, out_dir / f"{name}.png"))
    return written
