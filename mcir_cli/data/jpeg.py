"""JPEG compression artifact removal: the codec, the quality flags, datasets per quality.

The field's test and training scripts (FBCNN `main_test_fbcnn_{color,gray}.py` and
`data/dataset_jpeg.py`, KAIR) make the degraded input with OpenCV:
`cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, q])` then `cv2.imdecode` (colour
through BGR, grey as one channel). mcir encodes with Pillow, which wraps the same
libjpeg(-turbo) with the same defaults: IJG quantisation tables scaled by q, 4:2:0 chroma
subsampling, baseline Huffman coding, no optimisation. `tests/data/test_jpeg.py` shows the
decoded images equal OpenCV's, byte for byte, at q = 10, 40 and 90 (grey and colour, odd
sizes too), so OpenCV is only a test dependency.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from mcir_cli.data.imageio import to_uint8
from mcir_cli.errors import McirError

if TYPE_CHECKING:
    from mcir_cli.data.datasets import Dataset

QUALITY_MIN, QUALITY_MAX = 1, 100
QUALITY_ARCHITECTURES = {"FBCNN"}  # also predict the quality factor: trained with the recipe's qf_loss
ENCODER = "Pillow/libjpeg, 4:2:0, IJG tables (= OpenCV cv2.imencode, tested)"


@dataclass(frozen=True)
class JpegQuality:
    """A JPEG quality, or a range of them for blind models (each patch draws one,
    uniformly, as integers low..high inclusive)."""

    low: int
    high: int

    @property
    def fixed(self) -> bool:
        return self.low == self.high

    def draw(self, generator: torch.Generator) -> int:
        if self.fixed:
            return self.low
        return self.low + int(torch.randint(self.high - self.low + 1, (1,), generator=generator))

    def __str__(self) -> str:
        return str(self.low) if self.fixed else f"{self.low}-{self.high}"


def _quality(text: str, flag: str) -> int:
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise McirError(f"{flag} takes whole numbers from {QUALITY_MIN} to {QUALITY_MAX} (got {text.strip()!r})")
    q = int(text)
    if not QUALITY_MIN <= q <= QUALITY_MAX:
        raise McirError(f"{flag} {q} is outside the JPEG quality range {QUALITY_MIN}–{QUALITY_MAX}")
    return q


def parse_quality(text: str | int | JpegQuality, flag: str = "--jpeg-quality") -> JpegQuality:
    """`10` (one quality) or `10-95` (a range, for blind models)."""
    if isinstance(text, JpegQuality):
        return text
    parts = str(text).split("-")
    if len(parts) > 2:
        raise McirError(f"{flag} takes a quality (10) or a range (10-95), got {text!r}")
    low, high = _quality(parts[0], flag), _quality(parts[-1], flag)
    if low > high:
        raise McirError(f"{flag} {text}: the low end of the range exceeds its high end")
    return JpegQuality(low, high)


def check_task(task: str | None) -> None:
    """--jpeg-quality belongs to --task jpeg (or a task the model or folder decides)."""
    if task not in (None, "jpeg"):
        raise McirError(f"--jpeg-quality is for --task jpeg, not --task {task}")


def parse_qualities(text: str, flag: str = "--jpeg-quality") -> tuple[int, ...]:
    """`10,20,30,40` (evaluate: one table row per quality), in the order given, no repeats."""
    qualities = tuple(_quality(p, flag) for p in str(text).split(","))
    if len(set(qualities)) != len(qualities):
        raise McirError(f"{flag} {text}: a quality is given twice")
    return qualities


def benchmark_qualities(training: str | None) -> tuple[int, ...] | None:
    """The quality clean benchmark images are scored at for a model trained at
    `training` (`mcir study`, validation): the quality, or the range's low end (FBCNN
    validates its blind model at q = 10)."""
    return (parse_quality(training).low,) if training else None


def compress(img: Tensor, quality: int) -> Tensor:
    """Encode a CHW image in [0, 1] (1 or 3 channels) as JPEG at `quality` and decode it:
    uint8 levels in, the decoded levels / 255 out (float32, same shape)."""
    arr = to_uint8(img).cpu().numpy()
    pil = Image.fromarray(arr[0]) if arr.shape[0] == 1 else Image.fromarray(arr.transpose(1, 2, 0))
    buf = io.BytesIO()
    # OpenCV's defaults, spelled out: 4:2:0, standard tables, no optimize/progressive
    pil.save(buf, format="JPEG", quality=int(quality), subsampling="4:2:0", optimize=False, progressive=False)
    with Image.open(io.BytesIO(buf.getvalue())) as dec:
        out = np.asarray(dec.convert("L" if arr.shape[0] == 1 else "RGB"))
    out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    return torch.from_numpy(out.copy()).float() / 255.0


def compressed_input(dataset: Dataset, gt: Tensor) -> Tensor:
    """The input of a clean image of a JPEG dataset: `gt` encoded at the dataset's quality."""
    if dataset.jpeg_quality is None:
        raise McirError("clean images for JPEG artifact removal need --jpeg-quality", dataset.root)
    return compress(gt, dataset.jpeg_quality)


def compressed_patch(gt: Tensor, quality: JpegQuality, g: torch.Generator, augment: bool) -> tuple[int, Tensor, Tensor]:
    """(q, input, target) of a clean training patch, as FBCNN's dataset_jpeg makes them:
    the patch augmented first, then encoded at a quality drawn from the range (its 8x8
    grid starts at the patch's corner)."""
    from mcir_cli.data.datasets import dihedral  # lazy: cycle, datasets imports jpeg

    if augment:
        gt = dihedral(gt, int(torch.randint(8, (1,), generator=g)))
    q = quality.draw(g)
    return q, compress(gt, q), gt


def with_qualities(datasets: list[Dataset], qualities: tuple[int, ...] | None) -> list[Dataset]:
    """One dataset per (folder, quality) for clean-image JPEG folders, named
    `<folder>/q<q>` (a row each in every table; saved images under `<folder>/q<q>/`).
    Paired folders keep their pairs as given (never compressed again): a note says so."""
    out: list[Dataset] = []
    for d in datasets:
        clean = d.task == "jpeg" and any(p.lq is None for p in d.pairs)
        if not clean:
            if qualities and d.task == "jpeg":
                out.append(replace(d, notes=(*d.notes, f"pairs used as given (their inputs are never compressed "
                                                      f"again): --jpeg-quality does not apply to {d.name}")))
            else:
                out.append(d)
            continue
        if not qualities:
            raise McirError("clean images for JPEG artifact removal need --jpeg-quality (e.g. 10 or 10,20,30,40)",
                            d.root)
        out.extend(replace(d, name=f"{d.name}/q{q}", jpeg_quality=q) for q in qualities)
    return out


def record_inputs(result: dict[str, Any], datasets: list[Dataset]) -> None:
    """Into a result: what the JPEG rows' inputs were made with, and what discovery said
    about JPEG folders (pairs used as given; targets stored as JPEG)."""
    qualities = sorted({d.jpeg_quality for d in datasets if d.jpeg_quality is not None})
    if qualities:
        result["jpeg"] = {"qualities": qualities, "encoder": ENCODER,
                          "datasets": {d.name: d.jpeg_quality for d in datasets if d.jpeg_quality is not None}}
    notes = [f"{d.name.split('/q')[0]}: {n}" for d in datasets if d.task == "jpeg" for n in d.notes]
    if notes:
        result.setdefault("notes", []).extend(dict.fromkeys(notes))
