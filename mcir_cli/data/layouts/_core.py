"""Layout types, the registry and what every layout shares: folders, pairing by name."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mcir_cli.data.imageio import IMAGE_EXTENSIONS
from mcir_cli.data.lmdb_images import is_lmdb, lmdb_image_paths
from mcir_cli.errors import McirError


@dataclass(frozen=True)
class Pair:
    """One benchmark item. `lq` is None when the degraded image is synthesised."""

    name: str
    gt: Path
    lq: Path | None


@dataclass(frozen=True)
class Found:
    """A recognised folder: what `data.discover` turns into a `Dataset`."""

    root: Path  # the folder the pairs come from (a split folder for `DIV2K/`-style roots)
    layout: str
    task: str
    scale: int
    pairs: tuple[Pair, ...]
    scales: tuple[int, ...] = ()  # every scale an SR folder holds
    notes: tuple[str, ...] = ()
    gt_crop: str = "top-left"  # "center": a larger ground truth is centre-cropped (RESIDE)
    side_by_side: bool = False  # input | target in one file (DID-MDN)
    degradation: str = ""  # SR: "bicubic", or the LR folder naming another (LR_realesrgan)


@dataclass(frozen=True)
class Match:
    """A layout that fits a folder, before any pairing: `build(scale)` pairs the images."""

    name: str  # the published layout, e.g. "DIV2K: DIV2K_train_HR/ + DIV2K_train_LR_bicubic/X{s}/"
    build: Callable[[int | None], Found]
    scales: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    key: str
    expects: str  # what the folder must look like (in "matches no known layout" errors)
    detect: Callable[[Folder], Match | None]


LAYOUTS: list[Layout] = []


def layout(key: str, expects: str) -> Callable[[Callable[[Folder], Match | None]], Callable[[Folder], Match | None]]:
    """Register a layout recogniser where it is defined."""

    def register(fn: Callable[[Folder], Match | None]) -> Callable[[Folder], Match | None]:
        LAYOUTS.append(Layout(key, expects, fn))
        return fn

    return register


# --------------------------------------------------------------------------- folders


def list_images(folder: Path) -> list[Path]:
    """The images of a folder, or of an LMDB folder as BasicSR writes it (virtual paths
    `NAME.lmdb/<key>.png`, read through `mcir_cli.data.lmdb_images`)."""
    if is_lmdb(folder):
        return lmdb_image_paths(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class Folder:
    """A folder as discovery sees it: subfolders by lower-case name, images, everything."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = sorted(path.iterdir())
        self.subs = {p.name.lower(): p for p in self.entries if p.is_dir() and not p.name.startswith(".")}
        self.images = list_images(path)

    def sub(self, *names: str) -> Path | None:
        return next((self.subs[n] for n in names if n in self.subs), None)

    def holds(self) -> str:
        names = [p.name + ("/" if p.is_dir() else "") for p in self.entries]
        more = f" (+{len(names) - 5} more)" if len(names) > 5 else ""
        return (", ".join(names[:5]) + more) if names else "empty"


def _strip_scale(stem: str, scale: int) -> str:
    return re.sub(rf"[_-]?[xX]{scale}$", "", stem) if scale > 1 else stem


def _tokens(*paths: Path) -> list[str]:
    return [t for p in paths for t in re.split(r"[^a-z0-9]+", p.name.lower()) if t]


def task_from_names(root: Path, default: str = "restore") -> str:
    """The task a generic paired folder (`input/ + target/`) holds, from its own and its
    parent's names as the Restormer/NAFNet/MPRNet releases spell them (GoPro, Rain100L, ...)."""
    for t in _tokens(root, root.parent):
        if t.startswith(("gopro", "hide", "realblur")):
            return "deblur"
        if t.startswith("rain") or t in ("test100", "test1200", "test2800"):
            return "derain"
        if t.startswith("sidd"):
            return "denoise"
        if t in ("its", "ots", "sots") or t.startswith(("reside", "haze", "dehaze")):
            return "dehaze"
    return default


def pair_up(
    lqs: Sequence[Path],
    gts: Sequence[Path],
    *,
    layout: str,
    lq_dir: Path,
    gt_dir: Path,
    keys: Callable[[Path], Iterable[str]] = lambda p: (p.stem,),
    name: Callable[[Path], str] = lambda p: p.stem,
    gt_key: Callable[[Path], str] = lambda p: p.stem,
    rule: str = "of the same name",
    all_gt_used: bool = True,
) -> tuple[tuple[Pair, ...], tuple[str, ...]]:
    """Pair each input with the ground truth whose `gt_key` is the first of `keys(input)`
    found. An input without a ground truth is an error; so is a ground truth without an
    input when `all_gt_used` (a benchmark must not be scored on part of it in silence),
    otherwise a note. Names must come out unique. Returns (pairs, notes)."""
    if not gts:
        raise McirError("no images in the ground-truth folder", gt_dir)
    if not lqs:
        raise McirError("no images in the degraded-input folder", lq_dir)
    index: dict[str, Path] = {}
    for g in gts:
        index.setdefault(gt_key(g), g)
    pairs, unmatched = [], []
    for lq in lqs:
        gt = next((index[k] for k in keys(lq) if k in index), None)
        if gt is None:
            unmatched.append(lq.name)
        else:
            pairs.append(Pair(name(lq), gt, lq))
    if unmatched:
        raise McirError(
            f"{len(unmatched)} of {len(lqs)} inputs have no ground truth {rule} in {gt_dir.name}/ "
            f"(layout {layout}); first unmatched: {', '.join(unmatched[:3])}",
            lq_dir,
        )
    used = {p.gt for p in pairs}
    unused = sorted(g.name for g in gts if g not in used)
    notes: tuple[str, ...] = ()
    if unused and all_gt_used:
        raise McirError(
            f"{len(unused)} of {len(gts)} ground-truth images have no input {rule} in {lq_dir.name}/ "
            f"(layout {layout}); first: {', '.join(unused[:3])}",
            gt_dir,
        )
    if unused:
        notes = (f"{len(unused)} of {len(gts)} ground-truth images in {gt_dir.name}/ have no input "
                 f"(first: {', '.join(unused[:3])}); they are not used",)
    return _unique(pairs, lq_dir), notes


def _unique(pairs: list[Pair], where: Path) -> tuple[Pair, ...]:
    seen: dict[str, Pair] = {}
    for p in pairs:
        if p.name in seen:
            raise McirError(
                f"two inputs get the same name {p.name!r} ({seen[p.name].lq} and {p.lq}); "
                "give the pairs as a list file (lq<TAB>gt per line)",
                where,
            )
        seen[p.name] = p
    return tuple(sorted(pairs, key=lambda p: p.name))


def _id_keys(p: Path) -> tuple[str, ...]:
    """The same stem, else the id before the first '_' (RESIDE `1400_3.png` -> `1400`,
    OTS `0001_0.8_0.2.jpg` -> `0001`, DDN `901_14.jpg` -> `901`)."""
    return (p.stem, p.stem.split("_")[0])


def _paired(root: Path, lq_dir: Path, gt_dir: Path, layout: str, task: str, **kw) -> Found:
    pairs, notes = pair_up(list_images(lq_dir), list_images(gt_dir), layout=layout, lq_dir=lq_dir,
                           gt_dir=gt_dir, **kw)
    return Found(root, layout, task, 1, pairs, notes=notes)
