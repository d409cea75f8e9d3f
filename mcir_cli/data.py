"""Datasets: finding image pairs in a folder, loading them, and cutting training patches.

Benchmark folders come in a handful of layouts (SwinIR/EDSR `HR/` + `LR_bicubic/X4/`,
BasicSR `GTmod12/` + `LRbicx4/`, paired `hazy/` + `GT/` and friends, or clean images
only). `discover` recognises them, pairs files by stem and says precisely what failed
when a folder fits none.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mcir_cli.errors import McirError
from mcir_cli.imageio import IMAGE_EXTENSIONS, read_image
from mcir_cli.resize import imresize

# (lq folder, gt folder, task) for paired layouts; matched case-insensitively.
PAIRED_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("hazy", "gt", "dehaze"),
    ("hazy", "clear", "dehaze"),
    ("input", "target", "restore"),
    ("blur", "sharp", "deblur"),
    ("rain", "norain", "derain"),
    ("lq", "gt", "restore"),
    ("lq", "hq", "restore"),
)
SR_LAYOUTS = ("HR/ + LR_bicubic/X{s}/", "GTmod12/ + LRbicx{s}/", "HR-only (LR made by MATLAB bicubic)")


@dataclass(frozen=True)
class Pair:
    """One benchmark item. `lq` is None when the degraded image is synthesised."""

    name: str
    gt: Path
    lq: Path | None


@dataclass(frozen=True)
class Dataset:
    name: str
    root: Path
    layout: str
    task: str  # sr | dehaze | derain | deblur | denoise | restore
    scale: int
    pairs: tuple[Pair, ...]

    def __len__(self) -> int:
        return len(self.pairs)


def list_images(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _subdirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}


def _strip_scale_suffix(stem: str, scale: int) -> str:
    return re.sub(rf"[_-]?[xX]{scale}$", "", stem)


def _pair_by_stem(
    gt_dir: Path, lq_dir: Path, scale: int, layout: str, tolerate_id_prefix: bool = False
) -> tuple[Pair, ...]:
    gts = {p.stem: p for p in list_images(gt_dir)}
    lqs = list_images(lq_dir)
    if not gts:
        raise McirError("no images in the ground-truth folder", gt_dir)
    if not lqs:
        raise McirError("no images in the degraded-input folder", lq_dir)
    pairs, unmatched = [], []
    for lq in lqs:
        stem = _strip_scale_suffix(lq.stem, scale) if scale > 1 else lq.stem
        gt = gts.get(stem) or gts.get(lq.stem)
        if gt is None and tolerate_id_prefix:  # RESIDE: hazy 1400_1.png -> GT 1400.png
            gt = gts.get(stem.split("_")[0])
        if gt is None:
            unmatched.append(lq.name)
        else:
            pairs.append(Pair(stem, gt, lq))
    if unmatched:
        raise McirError(
            f"{len(unmatched)} of {len(lqs)} inputs have no ground truth of the same name in "
            f"{gt_dir.name}/ (layout {layout}); first unmatched: {', '.join(unmatched[:3])}",
            lq_dir,
        )
    used = {p.gt for p in pairs}
    unused = sorted(p.name for p in gts.values() if p not in used)
    if unused and not tolerate_id_prefix:  # a benchmark image without its input is dropped silently otherwise
        raise McirError(
            f"{len(unused)} of {len(gts)} ground-truth images have no input of the same name in "
            f"{lq_dir.name}/ (layout {layout}); first: {', '.join(unused[:3])}",
            gt_dir,
        )
    return tuple(sorted(pairs, key=lambda p: p.name))


def _sr_scales(root: Path, subs: dict[str, Path]) -> dict[int, tuple[Path, Path, str]]:
    """Scales available in an SR folder: {s: (gt_dir, lq_dir, layout)}."""
    found: dict[int, tuple[Path, Path, str]] = {}
    if "hr" in subs and "lr_bicubic" in subs:
        for d in subs["lr_bicubic"].iterdir():
            m = re.fullmatch(r"[xX](\d+)", d.name)
            if d.is_dir() and m:
                found[int(m.group(1))] = (subs["hr"], d, "HR/ + LR_bicubic/X{s}/")
    if "gtmod12" in subs:
        for name, d in subs.items():
            m = re.fullmatch(r"lrbicx(\d+)", name)
            if m:
                found[int(m.group(1))] = (subs["gtmod12"], d, "GTmod12/ + LRbicx{s}/")
    return found


def discover(root: str | Path, scale: int | None = None, task: str | None = None) -> Dataset:
    """Recognise a benchmark folder's layout and pair its images.

    `scale` is required for SR folders holding several scales; `task` disambiguates a
    flat folder of clean images (denoise: noise is added; sr: LR is made by bicubic).
    """
    root = Path(root)
    if not root.exists():
        raise McirError("folder not found", root)
    if not root.is_dir():
        raise McirError("not a folder", root)
    subs = _subdirs(root)
    name = root.name

    for lq_name, gt_name, layout_task in PAIRED_LAYOUTS:
        if lq_name in subs and gt_name in subs:
            layout = f"{subs[lq_name].name}/ + {subs[gt_name].name}/"
            pairs = _pair_by_stem(
                subs[gt_name], subs[lq_name], 1, layout, tolerate_id_prefix=layout_task == "dehaze"
            )
            return Dataset(name, root, layout, task or layout_task, 1, pairs)

    sr = _sr_scales(root, subs)
    if sr:
        if scale is None:
            if len(sr) > 1:
                raise McirError(
                    f"holds several scales (x{', x'.join(map(str, sorted(sr)))}): give --scale", root
                )
            scale = next(iter(sr))
        if scale not in sr:
            if "hr" in subs:  # make the missing scale from HR
                import logging

                logging.getLogger("mcir").info(
                    "%s: no x%d inputs (has x%s): LR made from HR/ by MATLAB bicubic",
                    root, scale, ", x".join(map(str, sorted(sr))),
                )
                return _hr_only(name, root, subs["hr"], scale)
            raise McirError(f"no x{scale} inputs (has x{', x'.join(map(str, sorted(sr)))})", root)
        gt_dir, lq_dir, layout = sr[scale]
        pairs = _pair_by_stem(gt_dir, lq_dir, scale, layout.format(s=scale))
        return Dataset(name, root, layout.format(s=scale), "sr", scale, pairs)

    hr_dir = subs.get("hr") or subs.get("gt") or subs.get("gtmod12")
    if hr_dir is not None and list_images(hr_dir):
        if task == "denoise":
            return _clean_only(name, root, hr_dir)
        return _hr_only(name, root, hr_dir, scale)

    if list_images(root):
        if task == "denoise":
            return _clean_only(name, root, root)
        if task in (None, "sr") and scale is not None and scale > 1:
            return _hr_only(name, root, root, scale)
        raise McirError(
            "a flat folder of images: for SR give --scale (LR is made by MATLAB bicubic), "
            "for denoising give --task denoise --noise-sigma S",
            root,
        )

    tried = ", ".join([*SR_LAYOUTS, *(f"{a}/ + {b}/" for a, b, _ in PAIRED_LAYOUTS)])
    contents = ", ".join(sorted(p.name for p in root.iterdir())[:5]) or "empty"
    raise McirError(f"matches no known layout (tried: {tried}); it holds: {contents}", root)


def _hr_only(name: str, root: Path, hr_dir: Path, scale: int | None) -> Dataset:
    if not scale or scale < 2:
        raise McirError("HR images only: give --scale so LR images can be made", root)
    pairs = tuple(Pair(p.stem, p, None) for p in list_images(hr_dir))
    return Dataset(name, root, "HR-only (LR made by MATLAB bicubic)", "sr", scale, pairs)


def _clean_only(name: str, root: Path, folder: Path) -> Dataset:
    pairs = tuple(Pair(p.stem, p, None) for p in list_images(folder))
    return Dataset(name, root, "clean images (Gaussian noise added)", "denoise", 1, pairs)


def mod_crop(img: Tensor, scale: int) -> Tensor:
    """Crop H and W down to multiples of `scale`, keeping the top-left corner."""
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def add_noise(clean: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
    """AWGN with σ on the 0–255 scale, float, not rounded or clipped (KAIR's test protocol)."""
    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    return (clean.double() + noise * (sigma / 255.0)).float()


def load_pair(
    dataset: Dataset,
    pair: Pair,
    noise_sigma: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Read one (lq, gt) pair as CHW tensors in [0, 1], aligned by scale."""
    gt = read_image(pair.gt)
    s = dataset.scale
    if pair.lq is None:
        if dataset.task == "denoise":
            if noise_sigma is None:
                raise McirError("denoising needs --noise-sigma", dataset.root)
            return add_noise(gt, noise_sigma, generator or torch.Generator().manual_seed(0)), gt
        gt = mod_crop(gt, s)
        # MATLAB's imresize on uint8 returns uint8: quantise like the published LR files.
        lq = (imresize(gt, 1 / s).clamp(0, 1) * 255).round() / 255
        return lq.float(), gt
    lq = read_image(pair.lq)
    if lq.shape[0] != gt.shape[0]:
        raise McirError(f"{lq.shape[0]} channels, but its ground truth has {gt.shape[0]}", pair.lq)
    lh, lw = lq.shape[-2:]
    gh, gw = gt.shape[-2:]
    if gh // s != lh or gw // s != lw:
        raise McirError(
            f"size {lw}x{lh} x{s} does not match its ground truth {pair.gt.name} ({gw}x{gh}) "
            "even after mod-crop",
            pair.lq,
        )
    return lq, gt[..., : lh * s, : lw * s]


def iter_pairs(
    dataset: Dataset, noise_sigma: float | None = None, noise_seed: int = 0
) -> Iterator[tuple[Pair, Tensor, Tensor]]:
    """All pairs of a dataset, in name order; noise is drawn from one seeded stream."""
    gen = torch.Generator().manual_seed(noise_seed)
    for pair in dataset.pairs:
        lq, gt = load_pair(dataset, pair, noise_sigma, gen)
        yield pair, lq, gt


def discover_all(roots: Sequence[str | Path], scale: int | None, task: str | None) -> list[Dataset]:
    datasets = [discover(r, scale, task) for r in roots]
    names = [d.name for d in datasets]
    for d in datasets:  # two folders with the same base name get their parent as prefix
        if names.count(d.name) > 1:
            object.__setattr__(d, "name", f"{d.root.parent.name}/{d.name}")
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
    ) -> None:
        from mcir_cli.imageio import image_size, is_grey

        self.patch, self.length, self.seed = int(patch), int(length), int(seed)
        # the model's input channels: grey images among colour ones become 3 equal
        # channels (as in evaluation); colour images for a grey model are an error
        self.channels = channels
        self.noise_sigma, self.augment = noise_sigma, augment
        self.scale = datasets[0].scale
        self.task = datasets[0].task
        if any(d.scale != self.scale for d in datasets):
            raise McirError("training folders of different scales cannot be mixed")
        if self.task == "denoise" and noise_sigma is None:
            raise McirError("denoising training on clean images needs --noise-sigma")
        items: list[tuple[Dataset, Pair]] = []
        too_small: list[str] = []
        pixels = 0
        for d in datasets:
            for pair in d.pairs:
                w, h = image_size(pair.lq or pair.gt)
                if pair.lq is None:
                    w, h = w // self.scale, h // self.scale
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
        if whole_lr and self.task != "denoise" and self.scale > 1:
            return load_pair(d, pair)  # MATLAB bicubic of the mod-cropped image
        return None, read_image(pair.gt)

    def _generator(self, index: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 0x9E3779B1 + index) % (2**63))

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        g = self._generator(index)
        k = int(torch.randint(len(self.items), (1,), generator=g))
        lq_full, gt_full = self._cache[k] if self._cache is not None else self._load(k)
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
        elif synth:
            lq = bicubic_lr_patch(gt_full, s, top, left, p)
        else:
            lq = lq_full[..., top : top + p, left : left + p]
        if self.channels == 3 and lq.shape[0] == 1:
            lq, gt = lq.expand(3, -1, -1), gt.expand(3, -1, -1)
        if self.augment:
            t = int(torch.randint(8, (1,), generator=g))
            lq, gt = dihedral(lq, t), dihedral(gt, t)
        return lq.float().contiguous(), gt.float().contiguous()
