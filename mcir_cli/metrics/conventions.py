"""How a measurement is taken, BasicSR's conventions (`basicsr/metrics/psnr_ssim.py`), exactly:
- both images are uint8 levels (here: clamp to [0, 1], x255, round half to even as
  `np.round` in `tensor2img`, in float32 as there);
- optionally the border is cropped (`crop_border` px on every side);
- optionally only the BT.601 luma is scored: Y = 16 + 65.481 R + 128.553 G + 24.966 B on
  [0, 1] inputs, result on the 0-255 scale, unrounded. BasicSR computes that in float32
  (`to_y_channel` casts to float32, `bgr2ycbcr` casts back to float32); this module does
  the same casts so that its Y values are bit-identical, then works in float64.
Grey images (1 channel) are scored on that channel whatever `y_channel` says.

`Conventions` states them (and each task's defaults); `scored_levels` applies them to a pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Conventions", "quantize", "rgb_to_y", "scored_levels"]

_SR_TASKS = {"sr"}
# "restore": paired folders of no named task (data.PAIRED_LAYOUTS), scored as RGB
_OTHER_TASKS = {"dehaze", "derain", "deblur", "denoise", "jpeg", "restore"}
_PSNRB_TASKS = {"jpeg"}  # PSNR-B is a JPEG measure (8x8 blocks)


@dataclass(frozen=True)
class Conventions:
    """How images are scored (BasicSR's `test_y_channel`, `crop_border`, uint8 levels)."""

    y_channel: bool
    crop_border: int
    quantize: str = "uint8"
    psnrb: bool = False  # also PSNR-B (JPEG artifact removal)
    grey: bool = False  # a one-channel model: images scored on their stored grey channel (no Y)

    def __post_init__(self) -> None:
        if self.crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border}")
        if self.quantize != "uint8":
            raise ValueError(f"only uint8 quantisation is supported, got {self.quantize!r}")

    def as_dict(self) -> dict:
        d = {"y_channel": self.y_channel, "crop_border": self.crop_border, "quantize": self.quantize}
        d = {**d, "psnrb": True} if self.psnrb else d  # results without PSNR-B (or grey) read as before
        return {**d, "grey": True} if self.grey else d

    def describe(self) -> str:
        channel = "Y channel (BT.601)" if self.y_channel else "RGB"
        if self.psnrb:  # JPEG test sets are often grey (Classic5): say how those are scored
            channel += " (grey images: their stored grey values)"
        elif self.grey:
            channel = "grey (the stored channel, no Y conversion)"
        border = f"border {self.crop_border} px cropped" if self.crop_border else "no border crop"
        text = f"{channel}, {border}, uint8-quantised (BasicSR)"
        if self.psnrb:
            on = "on the Y scored" if self.y_channel else "on the restored image's rounded Y"
            text += f"; PSNR-B as FBCNN's calculate_psnrb (blocking factor {on})"
        return text

    @classmethod
    def for_task(cls, task: str, scale: int = 1, y_channel: bool | None = None,
                 crop_border: int | None = None, grey: bool = False) -> Conventions:
        """Defaults of the papers: SR on Y with border = scale; other tasks on RGB, no
        crop. `y_channel`/`crop_border` override them (the CLI's --y-channel/--rgb and
        --crop-border); the one place these defaults live."""
        task = task.lower()
        if task in _SR_TASKS:
            y, border = True, int(scale)
        elif task in _OTHER_TASKS:
            y, border = False, 0
        else:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(_SR_TASKS | _OTHER_TASKS)}")
        return cls(y_channel=y if y_channel is None else y_channel,
                   crop_border=border if crop_border is None else crop_border, psnrb=task in _PSNRB_TASKS,
                   grey=grey)


def quantize(img: torch.Tensor) -> torch.Tensor:
    """[0, 1] image -> float64 uint8 levels 0..255 (clamp, x255, round half to even).

    Like BasicSR's `tensor2img`, the arithmetic is done in float32 (float64 inputs stay
    float64); it decides values that sit on a rounding tie, e.g. float32(0.5 / 255) -> 0.
    """
    x = img.detach()
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    return torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.float64)


def rgb_to_y(img255: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB levels on the 0-255 scale (channel dim -3), unrounded, float64.

    Bit-identical to BasicSR's `to_y_channel`: x = float32(level) / 255 in float32;
    y = 24.966 B + 128.553 G + 65.481 R + 16 in float64 (np.dot order, B first);
    y / 255 cast to float32; times 255 in float32.
    """
    if img255.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects 3 channels, got shape {tuple(img255.shape)}")
    x = img255.to(torch.float32) / 255.0
    x = x.to(torch.float64)
    r, g, b = x.unbind(-3)
    y = b * 24.966 + g * 128.553 + r * 65.481 + 16.0
    y = (y / 255.0).to(torch.float32) * 255.0
    return y.to(torch.float64).unsqueeze(-3)


def scored_levels(restored: torch.Tensor, gt: torch.Tensor, conventions: Conventions) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The pair as it is scored: uint8 levels (NCHW, float64), border cropped, Y when the
    conventions say so and the images are colour; and whether the input was one CHW image."""
    if restored.shape != gt.shape:
        raise ValueError(f"restored and ground truth differ in shape: {tuple(restored.shape)} vs {tuple(gt.shape)}")
    if restored.dim() not in (3, 4):
        raise ValueError(f"expected a CHW or NCHW tensor, got shape {tuple(restored.shape)}")
    single = restored.dim() == 3
    a = quantize(restored if not single else restored.unsqueeze(0))
    b = quantize(gt if not single else gt.unsqueeze(0)).to(a.device)
    c = conventions.crop_border
    if c:
        if a.shape[-2] <= 2 * c or a.shape[-1] <= 2 * c:
            raise ValueError(f"image {tuple(a.shape[-2:])} too small for crop_border {c}")
        a = a[..., c:-c, c:-c]
        b = b[..., c:-c, c:-c]
    if conventions.y_channel and a.shape[1] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    elif a.shape[1] not in (1, 3):
        raise ValueError(f"expected 1 or 3 channels, got {a.shape[1]}")
    return a, b, single
