"""Datasets: finding image pairs in a folder, loading them, and cutting training patches.

Datasets are read as published (DIV2K, the SR test sets, RESIDE, Rain100/200, GoPro,
SIDD, ...): `mcir_cli.data.layouts` recognises each layout and pairs its files; `discover`
turns that into a `Dataset`, `load_pair` reads one pair aligned, `PatchDataset` cuts
training patches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mcir_cli._helpers.fsutil import is_inside
from mcir_cli.data.imageio import image_size, is_grey, read_image
from mcir_cli.data.jpeg import compressed_input, compressed_patch
from mcir_cli.data.layouts import PAIRED_LAYOUTS, Pair, infer_scale, list_images, recognise
from mcir_cli.data.realesrgan.kernels import draw_kernels
from mcir_cli.data.realesrgan.settings import RealESRGANSettings
from mcir_cli.data.resize import imresize
from mcir_cli.errors import McirError

if TYPE_CHECKING:
    from mcir_cli.data.jpeg import JpegQuality

__all__ = ["PAIRED_LAYOUTS", "Dataset", "Pair", "PatchDataset", "discover", "discover_all", "infer_scale",
           "iter_pairs", "list_images", "load_gt", "load_pair"]


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    layout: str
    task: str  # sr | dehaze | derain | deblur | denoise | jpeg | restore
    scale: int
    pairs: tuple[Pair, ...]
    notes: tuple[str, ...] = ()  # what discovery chose or left out (said when it is found)
    gt_crop: str = "top-left"  # "center": a larger ground truth is centre-cropped to its input (RESIDE)
    side_by_side: bool = False  # input | target in one file (DID-MDN)
    jpeg_quality: int | None = None  # clean images compressed at this quality (jpeg.with_qualities)
    degradation: str = ""  # SR: "bicubic", or the LR folder naming another (LR_realesrgan)

    def __len__(self) -> int:
        return len(self.pairs)


def folder_name(folder: Path) -> str:
    """A folder's own name; for `.`, `..` or a path ending so (`A/S5/sub/..`), the name
    of the folder it resolves to: never a name that leads out of an output folder."""
    return folder.name if folder.name not in ("", ".", "..") else folder.resolve().name


def discover(root: str | Path, scale: int | None = None, task: str | None = None) -> Dataset:
    """Recognise a dataset folder's layout (see `mcir_cli.data.layouts`) and pair its images.

    `scale` is required for SR folders holding several scales; `task` disambiguates a
    flat folder of clean images (denoise: noise is added; sr: LR is made by bicubic).
    `root` may also be a list file of pairs (`lq<TAB>gt` per line).
    """
    root = Path(root)
    found = recognise(root, scale, task)
    for note in found.notes:
        logging.getLogger("mcir").info("%s: %s", root, note)
    name = root.stem if root.is_file() else folder_name(root)
    return Dataset(name, root, found.layout, found.task, found.scale, found.pairs,
                   found.notes, found.gt_crop, found.side_by_side, degradation=found.degradation)


def mod_crop(img: Tensor, scale: int) -> Tensor:
    """Crop H and W down to multiples of `scale`, keeping the top-left corner."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def add_noise(clean: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """AWGN with σ on the 0–255 scale, float, not rounded or clipped (KAIR's test protocol)."""
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    return (clean.double() + noise * (sigma / 255.0)).float()


def load_gt(dataset: Dataset, pair: Pair, size: tuple[int, int] | None = None) -> Tensor:
    """The ground truth of a pair as `load_pair` aligns it to an output of `size` (H, W):
    the right half of a side-by-side file, centre-cropped where the layout says so
    (RESIDE), top-left (mod-)cropped for SR."""
    gt = read_image(pair.gt)
    if dataset.side_by_side:  # DID-MDN: input on the left half, target on the right
        half = gt.shape[-1] // 2
        gt = gt[..., half : 2 * half]
    return gt if size is None else _align(dataset, gt, size)


def _align(dataset: Dataset, gt: Tensor, size: tuple[int, int]) -> Tensor:
    (h, w), (gh, gw) = size, gt.shape[-2:]
    if _centred(dataset, gt, h, w):
        top, left = (gh - h) // 2, (gw - w) // 2
        return gt[..., top : top + h, left : left + w]
    return gt[..., :h, :w] if dataset.scale > 1 else gt


def _centred(dataset: Dataset, gt: Tensor, h: int, w: int) -> bool:
    """FFA-Net's loader: CenterCrop(clear, hazy.size) (SOTS-indoor GT 640x480, hazy 620x460)."""
    return dataset.gt_crop == "center" and dataset.scale == 1 and gt.shape[-2] >= h and gt.shape[-1] >= w


def load_pair(
    dataset: Dataset,
    pair: Pair,
    noise_sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Read one (lq, gt) pair as CHW tensors in [0, 1], aligned by scale."""
    gt = load_gt(dataset, pair)
    s = dataset.scale
    if pair.lq is None:
        if dataset.task == "denoise":
            if noise_sigma is None:
                raise McirError("denoising needs --noise-sigma", dataset.root)
            return add_noise(gt, noise_sigma, generator or torch.Generator().manual_seed(0)), gt
        if dataset.task == "jpeg":
            return compressed_input(dataset, gt), gt
        gt = mod_crop(gt, s)
        # MATLAB's imresize on uint8 returns uint8: quantise like the published LR files.
        lq = (imresize(gt, 1 / s).clamp(0, 1) * 255).round() / 255
        return lq.float(), gt
    lq = read_image(pair.lq)
    if dataset.side_by_side:
        lq = lq[..., : lq.shape[-1] // 2]
    if lq.shape[0] != gt.shape[0]:
        raise McirError(f"{lq.shape[0]} channels, but its ground truth has {gt.shape[0]}", pair.lq)
    lh, lw = lq.shape[-2:]
    problem = size_mismatch(dataset, pair, (lw, lh), (gt.shape[-1], gt.shape[-2]))
    if problem:
        raise McirError(problem, pair.lq)
    return lq, _align(dataset, gt, (lh * s, lw * s))


def size_mismatch(dataset: Dataset, pair: Pair, lq_wh: tuple[int, int], gt_wh: tuple[int, int]) -> str | None:
    """Why an input of lq_wh cannot be paired with its ground truth of gt_wh (both after
    a side-by-side split), or None: SR takes the GT mod-cropped to lq x scale; the other
    tasks the same size, or a larger GT centre-cropped where the layout says so."""
    (lw, lh), (gw, gh), s = lq_wh, gt_wh, dataset.scale
    centred = dataset.gt_crop == "center" and s == 1 and gh >= lh and gw >= lw
    if centred or (gh // s == lh and gw // s == lw):
        return None
    return (f"size {lw}x{lh} x{s} does not match its ground truth {pair.gt.name} ({gw}x{gh}) "
            "even after mod-crop")


def pair_size_problems(dataset: Dataset) -> list[tuple[Pair, str]]:
    """Every pair whose sizes `load_pair` would refuse, from the file headers alone."""
    problems = []
    for pair in dataset.pairs:
        gw, gh = image_size(pair.gt)
        if pair.lq is None:
            if dataset.scale > 1 and (gw < dataset.scale or gh < dataset.scale):
                problems.append((pair, f"ground truth {gw}x{gh} is too small for x{dataset.scale}"))
            continue
        lw, lh = image_size(pair.lq)
        if dataset.side_by_side:
            gw, lw = gw // 2, lw // 2
        problem = size_mismatch(dataset, pair, (lw, lh), (gw, gh))
        if problem:
            problems.append((pair, problem))
    return problems


def iter_pairs(
    dataset: Dataset, noise_sigma: float | None = None, noise_seed: int = 0
) -> Iterator[tuple[Pair, Tensor, Tensor]]:
    """All pairs of a dataset, in name order; noise is drawn from one seeded stream."""
    gen = torch.Generator().manual_seed(noise_seed)
    for pair in dataset.pairs:
        lq, gt = load_pair(dataset, pair, noise_sigma, gen)
        yield pair, lq, gt


def overlapping(train: Sequence[str | Path], held_out: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(training folder, held-out folder) pairs where one lies inside the other (links
    resolved): scores on such a folder are scores on training images."""
    return [(str(a), str(b)) for b in held_out for a in train if is_inside(a, b) or is_inside(b, a)]


def discover_all(roots: Sequence[str | Path], scale: int | None, task: str | None) -> list[Dataset]:
    datasets = [discover(r, scale, task) for r in roots]
    names = [d.name for d in datasets]
    for d in datasets:  # two folders with the same base name get their parent as prefix
        if names.count(d.name) > 1:
            parent = d.root.parent if d.root.name not in ("", ".", "..") else d.root.resolve().parent
            object.__setattr__(d, "name", f"{folder_name(parent)}/{d.name}")
    return datasets


# --------------------------------------------------------------------------- training


def dihedral(img: Tensor, k: int) -> Tensor:
    """The k-th of the 8 dihedral transforms (k in 0..7): rotate k % 4 quarter turns,
    then flip horizontally if k >= 4."""
    out = torch.rot90(img, k % 4, dims=(-2, -1))
    return out.flip(-1) if k >= 4 else out


def bicubic_lr_patch(hr: Tensor, scale: int, top: int, left: int, patch: int) -> Tensor:
    """LR pixels [top:top+patch, left:left+patch] of MATLAB `imresize(hr, 1/scale)`,
    computed from an HR crop with a margin wider than the antialiased kernel (±2·scale
    HR pixels), so the patch equals the same crop of the whole-image LR exactly (the
    published LR files are made from whole images)."""
    hr = mod_crop(hr, scale)
    H, W = hr.shape[-2] // scale, hr.shape[-1] // scale
    m = 4  # LR pixels of margin = 4·scale HR pixels
    t0, l0 = max(0, top - m), max(0, left - m)
    t1, l1 = min(H, top + patch + m), min(W, left + patch + m)
    crop = hr[..., t0 * scale : t1 * scale, l0 * scale : l1 * scale]
    lr = (imresize(crop, 1 / scale).clamp(0, 1) * 255).round() / 255
    return lr[..., top - t0 : top - t0 + patch, left - l0 : left - l0 + patch]


class PatchDataset(torch.utils.data.Dataset):
    """Random aligned training patches, a pure function of (seed, index).

    Sample `i` draws its image, crop and augmentation from a generator seeded with
    (seed, i), so a run resumes (or is sharded across ranks) bit-exactly by index alone,
    whatever the number of DataLoader workers. `patch` is the input (LR) patch size.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        patch: int,
        length: int,
        seed: int = 0,
        noise_sigma: float | None = None,
        augment: bool = True,
        cache: bool | str = "auto",
        cache_limit_bytes: int = 4 << 30,
        channels: int | None = None,
        jpeg_quality: JpegQuality | None = None,
        quality_target: bool = False,
        degradation: RealESRGANSettings | None = None,
    ) -> None:
        self.patch, self.length, self.seed = int(patch), int(length), int(seed)
        # the model's input channels: grey images among colour ones become 3 equal
        # channels (as in evaluation); colour images for a grey model are an error
        self.channels = channels
        self.noise_sigma, self.augment, self.jpeg_quality = noise_sigma, augment, jpeg_quality
        # FBCNN's quality-factor loss: each sample also gives (100 - q) / 100 (NaN: a given pair)
        self.quality_target = quality_target
        self.scale = datasets[0].scale
        self.task = datasets[0].task
        if any(d.scale != self.scale for d in datasets):
            raise McirError("training folders of different scales cannot be mixed")
        self.degradation = degradation
        if degradation is not None:
            datasets = _clean_sources(datasets, channels)
        if self.task == "denoise" and noise_sigma is None:
            raise McirError("denoising training on clean images needs --noise-sigma")
        if self.task == "jpeg" and jpeg_quality is None and any(p.lq is None for d in datasets for p in d.pairs):
            raise McirError("JPEG training on clean images needs --jpeg-quality (e.g. 10, or 10-95 for a blind model)")
        items: list[tuple[Dataset, Pair]] = []
        too_small: list[str] = []
        pixels = 0
        for d in datasets:
            for pair in d.pairs:
                w, h = image_size(pair.lq or pair.gt)
                if pair.lq is None:
                    w, h = w // self.scale, h // self.scale
                if d.side_by_side:
                    w //= 2
                if min(w, h) < self.patch:
                    too_small.append(f"{(pair.lq or pair.gt).name} ({w}x{h})")
                    continue
                if channels == 1 and not is_grey(pair.lq or pair.gt):
                    raise McirError("colour training image, but the model takes grey input", pair.lq or pair.gt)
                items.append((d, pair))
                pixels += w * h * (1 + self.scale**2)
        if not items:
            raise McirError(
                f"no training image is large enough for --patch {self.patch} (input pixels); "
                f"largest inputs: {', '.join(too_small[:3])}",
                datasets[0].root,
            )
        if too_small:
            import logging

            logging.getLogger("mcir").warning(
                "%d training images smaller than the %d px patch are skipped: %s",
                len(too_small), self.patch, ", ".join(too_small[:3]),
            )
        self.items = items
        use_cache = cache is True or (cache == "auto" and pixels * 3 * 4 < cache_limit_bytes)
        self._cache: list[tuple[Tensor | None, Tensor]] | None = None
        if use_cache:  # decoded once in the main process; forked workers share the pages
            self._cache = [self._load(i, whole_lr=True) for i in range(len(items))]

    def __len__(self) -> int:
        return self.length

    def _load(self, k: int, whole_lr: bool = False) -> tuple[Tensor | None, Tensor]:
        """(lq, gt) of item k; lq is None when it is made per patch (noise, or bicubic
        of an HR crop). `whole_lr` makes an HR-only item's LR once for the whole image
        (for the cache): its crops equal `bicubic_lr_patch`, and patches become cheap."""
        d, pair = self.items[k]
        if pair.lq is not None:
            return load_pair(d, pair)
        if whole_lr and self.task != "denoise" and self.scale > 1 and self.degradation is None:
            return load_pair(d, pair)  # MATLAB bicubic of the mod-cropped image
        return None, read_image(pair.gt)

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 0x9E3779B1 + index) % (2**63))

    def __getitem__(self, index: int) -> tuple[Tensor, ...] | tuple[dict[str, Tensor], Tensor]:
        g = self._generator(index)
        quality = math.nan
        k = int(torch.randint(len(self.items), (1,), generator=g))
        lq_full, gt_full = self._cache[k] if self._cache is not None else self._load(k)
        if self.degradation is not None:
            return self._hr_crop(gt_full, g)
        s, p = self.scale, self.patch
        synth = lq_full is None
        src = gt_full if synth else lq_full
        h, w = src.shape[-2:]
        if synth and s > 1:
            h, w = h // s, w // s
        top = int(torch.randint(h - p + 1, (1,), generator=g))
        left = int(torch.randint(w - p + 1, (1,), generator=g))
        gt = gt_full[..., top * s : (top + p) * s, left * s : (left + p) * s]
        if synth and self.task == "denoise":
            lq = add_noise(gt, self.noise_sigma or 0.0, g)
        elif synth and self.task == "jpeg":
            assert self.jpeg_quality is not None
            quality, lq, gt = compressed_patch(gt, self.jpeg_quality, g, self.augment)
        elif synth:
            lq = bicubic_lr_patch(gt_full, s, top, left, p)
        else:
            lq = lq_full[..., top : top + p, left : left + p]
        if self.channels == 3 and lq.shape[0] == 1:
            lq, gt = lq.expand(3, -1, -1), gt.expand(3, -1, -1)
        if self.augment and not (synth and self.task == "jpeg"):
            t = int(torch.randint(8, (1,), generator=g))
            lq, gt = dihedral(lq, t), dihedral(gt, t)
        lq, gt = lq.float().contiguous(), gt.float().contiguous()
        return (lq, gt, torch.tensor((100 - quality) / 100)) if self.quality_target else (lq, gt)


    def _hr_crop(self, hr: Tensor, g: torch.Generator) -> tuple[dict[str, Tensor], Tensor]:
        """`--degradation realesrgan`: an HR crop of crop_pad_size (at least the training
        patch; smaller images reflect-padded), flipped horizontally half the time (Real-ESRGAN's
        use_hflip, no rotation), with its kernels and the seed of its noise
        (`degradations.Degrader` makes the input from them)."""
        s, settings = self.scale, self.degradation
        size = max(-(-settings.crop_pad_size // s) * s, self.patch * s)
        hr = hr.expand(3, -1, -1) if hr.shape[0] == 1 else hr
        h, w = hr.shape[-2:]
        short = (0, max(0, size - w), 0, max(0, size - h))
        if any(short):
            hr = torch.nn.functional.pad(hr[None], short, mode="reflect" if max(short) < min(h, w) else "replicate")[0]
        top = int(torch.randint(hr.shape[-2] - size + 1, (1,), generator=g))
        left = int(torch.randint(hr.shape[-1] - size + 1, (1,), generator=g))
        crop = hr[..., top : top + size, left : left + size]
        if self.augment and int(torch.randint(2, (1,), generator=g)):
            crop = crop.flip(-1)
        draws = draw_kernels(settings, g)[0]
        draws["seed"] = torch.randint(2**62, (), generator=g)
        return draws, crop.float().contiguous()


def _clean_sources(datasets: Sequence[Dataset], channels: int | None) -> list[Dataset]:
    """The ground truths of SR training folders, the only thing an on-the-fly degradation
    uses (LR files beside them are left out, and it says so)."""
    from dataclasses import replace

    if channels == 1:
        raise McirError("--degradation realesrgan makes colour inputs; the model takes grey input")
    out = []
    for d in datasets:
        if d.task != "sr" or d.scale < 2:
            raise McirError(f"--degradation realesrgan trains super-resolution (x2 or more); this folder is "
                            f"{d.task} x{d.scale}", d.root)
        if any(p.lq is not None for p in d.pairs):
            logging.getLogger("mcir").info("%s: its LR files are not used: --degradation realesrgan makes the "
                                           "inputs from the HR images", d.root)
        out.append(replace(d, pairs=tuple(Pair(p.name, p.gt, None) for p in d.pairs)))
    return out


class RankIndices(torch.utils.data.Sampler):
    """Sample indices of one rank, made lazily: for step k of `steps` (counted from the
    data position `base`) the rank takes base + (k·W + rank)·B + j, j < B."""

    def __init__(self, base: int, steps: int, batch: int, world: int, rank: int) -> None:
        self.base, self.steps, self.batch, self.world, self.rank = base, steps, batch, world, rank

    def __len__(self) -> int:
        return self.steps * self.batch

    def __iter__(self) -> Iterator[int]:
        B, W = self.batch, self.world
        for k in range(self.steps):
            start = self.base + (k * W + self.rank) * B
            yield from range(start, start + B)
