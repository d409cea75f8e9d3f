"""Dehazing, deraining, deblurring and denoising layouts as their datasets ship."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from mcir_cli.data.imageio import IMAGE_EXTENSIONS, image_size
from mcir_cli.data.layouts._core import (
    Folder,
    Found,
    Match,
    Pair,
    _id_keys,
    _paired,
    _strip_scale,
    _unique,
    layout,
    list_images,
    pair_up,
    task_from_names,
)

# --------------------------------------------------------------------------- dehazing


@layout("reside", "hazy/ + gt/ or clear/ (RESIDE)")
def reside(f: Folder) -> Match | None:
    """RESIDE as released: ITS `hazy/1_1_0.90179.png` -> `clear/1.png`, OTS
    `hazy/0001_0.8_0.2.jpg` -> `clear/0001.jpg`, SOTS `indoor/hazy/1400_1.png` ->
    `indoor/gt/1400.png`, `outdoor/hazy/0001_0.8_0.2.jpg` -> `outdoor/gt/0001.png`; and
    DehazeFormer's `RESIDE-IN|RESIDE-6K/{train,test}/{GT,hazy}` (same names). A clear image
    larger than its hazy ones (SOTS-indoor GT 640x480 in some releases) is centre-cropped,
    as FFA-Net's loader does. `trans/` (ITS transmission maps) is not used."""
    hazy, gt = f.sub("hazy"), f.sub("gt", "clear")
    if hazy is None or gt is None:
        return None
    name = f"{hazy.name}/ + {gt.name}/"

    def build(scale: int | None) -> Found:
        found = _paired(f.path, hazy, gt, name, "dehaze", keys=_id_keys, all_gt_used=False)
        return replace(found, gt_crop="center")

    return Match(name, build)


# --------------------------------------------------------------------------- deraining


@layout("jorder", "rain/ + norain/ or rain/X2/ + norain/ (JORDER)")
def jorder(f: Folder) -> Match | None:
    """Rain100L/H and Rain200L/H as JORDER ships them (`rain_data_train_Light/rain/X2/
    norain-1x2.png` with `norain/norain-1.png`; the `x2` is a file-name leftover, the
    images are the same size), or with the rainy images directly in `rain/`."""
    rain, norain = f.sub("rain"), f.sub("norain")
    if rain is None or norain is None:
        return None
    x2 = next((d for d in rain.iterdir() if d.is_dir() and d.name.lower() == "x2"), None)
    lq_dir = x2 if x2 is not None and not list_images(rain) else rain
    name = f"{rain.name}/{x2.name + '/' if lq_dir is x2 else ''} + {norain.name}/"

    def strip(p: Path) -> str:  # norain-1x2 -> norain-1
        return _strip_scale(p.stem, 2)

    return Match(name, lambda s: _paired(f.path, lq_dir, norain, name, "derain",
                                         keys=lambda p: (strip(p), p.stem), name=strip))


def _numbered(paths: Iterable[Path], prefix: str) -> list[Path]:
    return [p for p in paths if re.fullmatch(rf"{prefix}-?\d+", p.stem, re.I)]


@layout("prenet", "rain-N + norain-N images, or norain-N + rainy/rain-N (PReNet)")
def prenet(f: Folder) -> Match | None:
    """PReNet's copies of Rain100L/H: training sets with `rain-1.png` and `norain-1.png`
    in one folder (`RainTrainH` lacks 546 rainy images on purpose: their clean images are
    not used), test sets with `norain-001.png` beside `rainy/rain-001.png`."""
    gts = _numbered(f.images, "norain")
    rainy = f.sub("rainy")
    lqs = _numbered(f.images, "rain") + (_numbered(list_images(rainy), "rain") if rainy is not None else [])
    if not gts or not lqs:
        return None
    name = "norain-N + rain-N" if rainy is None else "norain-N + rainy/rain-N"
    number = lambda p: "norain-" + re.sub(r"^\D+", "", p.stem)  # noqa: E731
    lq_dir = rainy if rainy is not None else f.path

    def build(scale: int | None) -> Found:
        pairs, notes = pair_up(lqs, gts, layout=name, lq_dir=lq_dir, gt_dir=f.path,
                               keys=lambda p: (number(p),), rule="named norain-N", all_gt_used=False)
        return Found(f.path, name, "derain", 1, pairs, notes=notes)

    return Match(name, build)


@layout("ddn", "rainy_image/ + ground_truth/ (DDN-Data)")
def ddn(f: Folder) -> Match | None:
    """DDN-Data (Fu et al. 2017) as PReNet reads it: `rainy_image/901_1.jpg` ..
    `901_14.jpg` share `ground_truth/901.jpg`."""
    rainy, gt = f.sub("rainy_image"), f.sub("ground_truth")
    if rainy is None or gt is None:
        return None
    name = f"{rainy.name}/ + {gt.name}/"
    return Match(name, lambda s: _paired(f.path, rainy, gt, name, "derain", keys=_id_keys,
                                         rule="named <id>", all_gt_used=False))


def _side_by_side(f: Folder, task: str | None = None) -> bool:
    """DID-MDN's files: each image holds input | target side by side (width = 2 x height)."""
    if not f.images or f.subs:
        return False
    if task != "derain" and not any("did-mdn" in p.lower() or p.lower() in ("train2018new", "trainnew")
                                    for p in f.path.resolve().parts):
        return False
    return all(w == 2 * h for w, h in map(image_size, f.images))


def did_mdn(f: Folder) -> Found:
    pairs = _unique([Pair(p.stem, p, p) for p in f.images], f.path)
    return Found(f.path, "rainy | clean side by side in one image (DID-MDN)", "derain", 1, pairs, side_by_side=True)


@layout("did-mdn", "rainy|clean side-by-side images under a DID-MDN folder")
def did_mdn_layout(f: Folder) -> Match | None:
    """DID-MDN (Zhang & Patel 2018): `DID-MDN-training/Rain_Heavy/train2018new/1.jpg`, each
    file 1024x512 with the rainy input on the left and the clean target on the right (its
    loader crops (0, 0, w/2, h) as input and (w/2, 0, w, h) as target)."""
    return Match("rainy | clean side by side (DID-MDN)", lambda s: did_mdn(f)) if _side_by_side(f) else None


@layout("spa", "rain/ + gt/ or real_world/ + real_world_gt/ (SPA-Data)")
def spa(f: Folder) -> Match | None:
    """SPA-Data (Wang et al. 2019): the test set `real_test_1000/rain/000.png` ->
    `real_test_1000/gt/000gt.png`; the training set `real_world/000/000-0/000-0_1_1.png` ->
    `real_world_gt/000/000_1_1.png` (frame 0 of video 000, patch position 1, 1); the
    shipped lists `real_world.txt` / `real_test_1000.txt` are read as pair lists."""
    rain, gt = f.sub("rain"), f.sub("gt")
    if rain is not None and gt is not None:
        name = f"{rain.name}/ + {gt.name}/ (SPA-Data test)"
        return Match(name, lambda s: _paired(f.path, rain, gt, name, "derain",
                                             keys=lambda p: (p.stem + "gt", p.stem), rule="named <N>gt"))
    world, world_gt = f.sub("real_world"), f.sub("real_world_gt")
    if world is None or world_gt is None:
        return None
    name = "real_world/ + real_world_gt/ (SPA-Data training)"

    def key(p: Path) -> tuple[str, ...]:
        m = re.fullmatch(r"(\d+)-\d+_(.+)", p.stem)
        return (f"{p.parent.parent.name}/{m.group(1)}_{m.group(2)}",) if m else ()

    def build(scale: int | None) -> Found:
        lqs = sorted(p for p in world.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        gts = sorted(p for p in world_gt.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        pairs, notes = pair_up(lqs, gts, layout=name, lq_dir=world, gt_dir=world_gt, keys=key,
                               gt_key=lambda g: f"{g.parent.name}/{g.stem}", rule="named <video>_<x>_<y>",
                               all_gt_used=False)
        return Found(f.path, name, "derain", 1, pairs, notes=notes)

    return Match(name, build)


# --------------------------------------------------------------------------- deblurring and the rest


# (input folder, target folder, task): published same-name pairs; None = from the folder's names
SAME_NAME: tuple[tuple[str, str, str | None], ...] = (
    ("input", "target", None),  # Restormer/NAFNet/MPRNet: GoPro, HIDE, RealBlur, Rain13K, Rain100L/H, ...
    ("input_crops", "target_crops", None),  # Restormer's training crops (GoPro, SIDD)
    ("blur_crops", "sharp_crops", "deblur"),  # NAFNet's GoPro crops (before LMDB)
    ("input_crops", "gt_crops", "denoise"),  # NAFNet's SIDD crops (before LMDB)
    ("blur", "sharp", "deblur"),  # one GoPro scene
    ("lq", "gt", "restore"),
    ("lq", "hq", "restore"),
)
PAIRED_LAYOUTS = tuple((a, b, t or "restore") for a, b, t in SAME_NAME)


@layout("same-name", "input/ + target/, blur/ + sharp/, lq/ + gt/, lq/ + hq/, *_crops/")
def same_name(f: Folder) -> Match | None:
    """Folders of inputs and targets with the same file names: the flattened GoPro of
    Restormer and NAFNet (`GoPro/test/input/GOPR0384_11_00-000001.png` +
    `target/`), their deraining and SIDD folders, one GoPro scene (`blur/` + `sharp/`)."""
    for lq, gt, task in SAME_NAME:
        if lq in f.subs and gt in f.subs:
            name = f"{f.subs[lq].name}/ + {f.subs[gt].name}/"
            t = task or task_from_names(f.path)
            return Match(name, lambda s, a=f.subs[lq], b=f.subs[gt], t=t: _paired(f.path, a, b, name, t))
    return None


def _gopro_scenes(f: Folder) -> list[tuple[Path, Path, Path]] | None:
    scenes = []
    for d in f.subs.values():
        sub = {p.name.lower(): p for p in d.iterdir() if p.is_dir()}
        blur = sub.get("blur") or sub.get("blur_gamma")
        if blur is None or "sharp" not in sub:
            return None
        scenes.append((d, blur, sub["sharp"]))
    return sorted(scenes) or None


@layout("gopro", "<scene>/blur/ + <scene>/sharp/ (GoPro)")
def gopro(f: Folder) -> Match | None:
    """GoPro as unzipped: `GOPRO_Large/train/GOPR0372_07_00/blur/000047.png` +
    `sharp/000047.png` (also `blur_gamma/`, used only where `blur/` is absent). Frame
    names repeat across scenes, so a pair is named `<scene>-<frame>`, as the flattened
    Restormer/NAFNet copies name them."""
    scenes = _gopro_scenes(f) if f.subs and not f.images else None
    if scenes is None:
        return None
    name = "<scene>/blur/ + <scene>/sharp/ (GoPro)"

    def build(scale: int | None) -> Found:
        return _per_scene(f.path, name, "deblur", (
            (list_images(blur), list_images(sharp), blur, sharp, {"name": lambda p, sc=scene.name: f"{sc}-{p.stem}"})
            for scene, blur, sharp in scenes))

    return Match(name, build)


def _per_scene(root: Path, name: str, task: str,
               scenes: Iterable[tuple[list[Path], list[Path], Path, Path, dict]]) -> Found:
    """One dataset from many scene folders, each paired on its own (names kept unique)."""
    pairs: list[Pair] = []
    for lqs, gts, lq_dir, gt_dir, kw in scenes:
        pairs += pair_up(lqs, gts, layout=name, lq_dir=lq_dir, gt_dir=gt_dir, **kw)[0]
    return Found(root, name, task, 1, _unique(pairs, root))


def _sidd_scenes(f: Folder) -> list[Path] | None:
    data = f.sub("data")
    base = Folder(data) if data is not None and not any(_is_sidd(d) for d in f.subs.values()) else f
    scenes = [d for d in base.subs.values() if _is_sidd(d)]
    return sorted(scenes) or None


def _is_sidd(d: Path) -> bool:
    return any("NOISY" in p.name and p.suffix.lower() in IMAGE_EXTENSIONS for p in d.iterdir())


@layout("sidd", "[Data/]<scene>/*NOISY*, *GT* (SIDD)")
def sidd(f: Folder) -> Match | None:
    """SIDD-Medium/Small sRGB as released: `SIDD_Medium_Srgb/Data/
    0001_001_S6_00100_00060_3200_L/0001_NOISY_SRGB_010.PNG` + `0001_GT_SRGB_010.PNG` (and
    `_011`; SIDD-Small: `NOISY_SRGB_010.PNG` + `GT_SRGB_010.PNG`). A pair is named
    `<scene>_<k>`."""
    scenes = _sidd_scenes(f) if f.subs else None
    if scenes is None:
        return None
    name = "<scene>/*_NOISY_SRGB_<k> + *_GT_SRGB_<k> (SIDD)"

    def scene(d: Path) -> tuple[list[Path], list[Path], Path, Path, dict]:
        files = list_images(d)
        noisy = [p for p in files if "NOISY" in p.name]
        clean = [p for p in files if "_GT_" in p.name or p.name.startswith("GT_")]
        return noisy, clean, d, d, {"keys": lambda p: (p.stem.replace("NOISY", "GT"),), "rule": "named *_GT_*",
                                    "name": lambda p: f"{d.name}_{p.stem.rsplit('_', 1)[-1]}"}

    def build(scale: int | None) -> Found:
        return _per_scene(f.path, name, "denoise", map(scene, scenes))

    return Match(name, build)
