"""Published dataset layouts, each recognised from the folder a user naturally points at.

Every layout is one `@layout` function below: it looks at a folder (file names, and image
headers where a layout is told by sizes; never pixels) and returns a `Match` (what it is,
which scales it holds, how to pair its images) or None. `match` runs them all. Two matches
are an ambiguity; no match tries the split rule (`train/` + `test/`: train is used, the
others are named), then a folder of datasets (`SOTS/indoor`, `SOTS/outdoor`: each must be
given), then the fallbacks (HR only, clean images). What fails is one line naming the
folder, what it holds and what was expected. docs/datasets.md lists the sources.

`Found` is what a recognised folder yields: image pairs with unique names, the task, the
scale, the layout's name and notes (what was chosen and what was left out).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mcir_cli.errors import McirError
from mcir_cli.imageio import IMAGE_EXTENSIONS

__all__ = ["Found", "LAYOUTS", "Match", "Pair", "infer_scale", "list_images", "match", "recognise"]


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
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class Folder:
    """A folder as discovery sees it: subfolders by lower-case name, images, everything."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries = sorted(path.iterdir())
        self.subs = {p.name.lower(): p for p in self.entries if p.is_dir() and not p.name.startswith(".")}
        self.images = [p for p in self.entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]

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


# --------------------------------------------------------------------------- SR


def _sr_scale_dirs(container: Path, sub: bool = False) -> dict[int, Path]:
    """{s: folder} of the `X{s}/` (or BasicSR's `X{s}_sub/`) folders in an LR folder."""
    found = {}
    for d in container.iterdir():
        m = re.fullmatch(r"[xX](\d+)(_sub)?", d.name)
        if d.is_dir() and m and bool(m.group(2)) == sub:
            found[int(m.group(1))] = d
    return found


def _sr_build(root: Path, layout: str, per_scale: dict[int, list[tuple[Path, Path]]],
              hr_dirs: list[Path], notes: Sequence[str] = (), scale_notes: dict[int, list[str]] | None = None,
              describe: Callable[[list[tuple[Path, Path]]], str] | None = None) -> Callable[[int | None], Found]:
    """Pairs of an SR folder at one scale; a scale it lacks is made from HR (MATLAB bicubic)."""
    scales = tuple(sorted(per_scale))

    def build(scale: int | None) -> Found:
        if scale is None and not scales:
            return hr_only(root, hr_dirs, None)  # says to give --scale
        if scale is None:
            if len(scales) != 1:
                raise McirError(f"holds several scales (x{', x'.join(map(str, scales))}): give --scale", root)
            scale = scales[0]
        if scale not in per_scale:
            if not hr_dirs:
                raise McirError(f"no x{scale} inputs (has x{', x'.join(map(str, scales)) or ' none'})", root)
            note = (f"no x{scale} inputs (has x{', x'.join(map(str, scales))}): " if scales else "") + \
                f"LR made from {'/, '.join(d.name for d in hr_dirs)}/ by MATLAB bicubic"
            found = hr_only(root, hr_dirs, scale)
            return replace(found, scales=scales, notes=(*notes, note))
        pairs: list[Pair] = []
        extra = [*notes, *(scale_notes or {}).get(scale, [])]
        name = describe(per_scale[scale]) if describe else layout.format(s=scale)
        for gt_dir, lq_dir in per_scale[scale]:
            got, n = pair_up(list_images(lq_dir), list_images(gt_dir), layout=name,
                             lq_dir=lq_dir, gt_dir=gt_dir, keys=lambda p: (_strip_scale(p.stem, scale), p.stem),
                             name=lambda p: _strip_scale(p.stem, scale))
            pairs += got
            extra += n
        return Found(root, name, "sr", scale, _unique(pairs, root), scales, tuple(extra))

    return build


def hr_only(root: Path, hr_dirs: Sequence[Path], scale: int | None) -> Found:
    """HR images only: LR made by MATLAB-exact bicubic at load time."""
    if not scale or scale < 2:
        raise McirError("HR images only: give --scale so LR images can be made", root)
    pairs = [Pair(p.stem, p, None) for d in hr_dirs for p in list_images(d)]
    return Found(root, "HR-only (LR made by MATLAB bicubic)", "sr", scale, _unique(pairs, root))


@layout("sr-benchmark", "HR/ + LR_bicubic/X{s}/ or GTmod12/ + LRbicx{s}/")
def sr_benchmark(f: Folder) -> Match | None:
    """Set5, Set14, B100, Urban100, Manga109 as the EDSR/KAIR/SwinIR test sets ship them
    (`HR/baby.png`, `LR_bicubic/X4/babyx4.png`) and as BasicSR's (`GTmod12/baby.png`,
    `LRbicx4/baby.png`)."""
    per_scale: dict[int, list[tuple[Path, Path]]] = {}
    names: dict[int, str] = {}
    if "hr" in f.subs and "lr_bicubic" in f.subs:
        for s, d in _sr_scale_dirs(f.subs["lr_bicubic"]).items():
            per_scale[s], names[s] = [(f.subs["hr"], d)], "HR/ + LR_bicubic/X{s}/"
    gtmod = next((f.subs[n] for n in sorted(f.subs) if re.fullmatch(r"gtmod\d+", n)), None)
    if gtmod is not None:
        for n, d in f.subs.items():
            m = re.fullmatch(r"lrbicx(\d+)", n)
            if m:
                per_scale[int(m.group(1))], names[int(m.group(1))] = [(gtmod, d)], f"{gtmod.name}/ + LRbicx{{s}}/"
    if not per_scale:
        return None
    layouts = set(names.values())
    name = layouts.pop() if len(layouts) == 1 else "HR/ + LR_bicubic/X{s}/ and GTmod12/ + LRbicx{s}/"
    hr = [f.subs["hr"]] if "hr" in f.subs else []  # a missing scale is made from HR/ only
    return Match(name, _sr_build(f.path, name, per_scale, hr), tuple(sorted(per_scale)))


_HR_DIR = re.compile(r"(?P<p>.+?)_hr(?P<sub>_sub)?", re.I)
_VALID = re.compile(r"valid|(^|_)val($|_)|test", re.I)


@layout("div2k", "<set>_HR/ + <set>_LR_bicubic|unknown/X{s}/ (DIV2K, Flickr2K, DF2K)")
def div2k_family(f: Folder) -> Match | None:
    """DIV2K as its zips unpack (`DIV2K_train_HR/0001.png`,
    `DIV2K_train_LR_bicubic/X4/0001x4.png`, `DIV2K_train_LR_unknown/X4/...`, the
    `DIV2K_valid_*` twins), Flickr2K (`Flickr2K_HR/000001.png`,
    `Flickr2K_LR_bicubic/X4/000001x4.png`), DF2K (`DF2K_HR/` + `DF2K_LR_bicubic/`, or
    DIV2K's and Flickr2K's folders side by side) and BasicSR's sub-images (`*_HR_sub/` +
    `X{s}_sub/`). Training sets are used together (DIV2K train + Flickr2K = DF2K); a
    validation set only when the folder holds nothing else, never mixed in."""
    groups: dict[str, dict[bool, Path]] = {}
    for n, d in f.subs.items():
        m = _HR_DIR.fullmatch(n)
        if m:
            groups.setdefault(m.group("p"), {})[bool(m.group("sub"))] = d
    if not groups:
        return None
    sets: dict[str, tuple[Path, dict[str, dict[int, Path]]]] = {}
    notes: list[str] = []
    for p, hrs in sorted(groups.items()):
        sub = False not in hrs  # the full-size images win over BasicSR's sub-images
        if len(hrs) == 2:
            notes.append(f"{hrs[True].name}/ not used (the full-size images are)")
        lr = {kind: _sr_scale_dirs(c, sub) for kind in ("bicubic", "unknown")
              if (c := f.subs.get(f"{p}_lr_{kind}")) is not None}
        sets[p] = (hrs[sub], {k: v for k, v in lr.items() if v})
    if not any(lr for _, lr in sets.values()) and not any(f.subs.get(f"{p}_lr_{k}") for p in sets
                                                          for k in ("bicubic", "unknown")):
        if not all(re.match(r"(div2k|flickr2k|df2k)", p) for p in sets):
            return None  # some other *_HR folder: not this family
    train = [p for p in sets if not _VALID.search(p)]
    used = train or list(sets)
    if len(used) < len(sets):
        left = ", ".join(f"{sets[p][0].name.rsplit('_', 1)[0]}_*" for p in sets if p not in used)
        notes.append(f"{left} not used: a validation set is never mixed into training; give it as its own "
                     "--data/--val")
    per_scale: dict[int, list[tuple[Path, Path]]] = {}
    scale_notes: dict[int, list[str]] = {}
    common = set.intersection(*({s for kind in sets[p][1].values() for s in kind} for p in used))
    for s in sorted(common):
        for p in used:
            hr, lr = sets[p]
            kind = "bicubic" if s in lr.get("bicubic", {}) else "unknown"
            if kind == "bicubic" and s in lr.get("unknown", {}):
                scale_notes.setdefault(s, []).append(
                    f"{lr['bicubic'][s].parent.name}/X{s} used; for the unknown degradation give --data "
                    f"{f.path.name}/{lr['unknown'][s].parent.name}/X{s}")
            per_scale.setdefault(s, []).append((hr, lr[kind][s]))
    hr_dirs = [sets[p][0] for p in used]
    name = " + ".join(f"{h.name}/ + {h.name[:-3] if h.name.lower().endswith('_hr') else h.name}_LR_*/X{{s}}/"
                      for h in hr_dirs)

    def describe(dirs: list[tuple[Path, Path]]) -> str:
        return " + ".join(f"{hr.name}/ + {lq.parent.name}/{lq.name}/" for hr, lq in dirs)

    build = _sr_build(f.path, name, per_scale, hr_dirs, notes, scale_notes, describe)
    return Match(name, build, tuple(sorted(per_scale)), tuple(notes))


@layout("sr-lr-folder", "an LR folder (<set>_LR_<kind>[/X{s}]) beside its HR folder")
def sr_lr_folder(f: Folder) -> Match | None:
    """An LR folder pointed at directly, to choose it over the default: e.g.
    `DIV2K/DIV2K_train_LR_unknown` or `.../X4`, `DIV2K/DIV2K_valid_LR_bicubic/X4`,
    `Set5/LR_bicubic/X4`. Its HR folder is found beside it, as the dataset ships."""
    m = re.fullmatch(r"[xX](\d+)", f.path.name)
    lr_dirs = {int(m.group(1)): f.path} if m else None
    container = f.path.parent if m else f.path
    if lr_dirs is None:
        lr_dirs = _sr_scale_dirs(container)
        if not lr_dirs:
            return None
    c = re.fullmatch(r"(?P<p>.+?)_lr_[a-z]+|lr_bicubic", container.name.lower())
    if c is None:
        return None
    hr_name = f"{c.group('p')}_hr" if c.group("p") else "hr"
    hr = next((d for d in container.parent.iterdir() if d.is_dir() and d.name.lower() == hr_name), None)
    if hr is None:
        return None
    name = f"{container.name}/X{{s}}/ with ../{hr.name}/"
    per_scale = {s: [(hr, d)] for s, d in lr_dirs.items()}
    return Match(name, _sr_build(f.path, name, per_scale, [hr]), tuple(sorted(per_scale)))


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
    from mcir_cli.imageio import image_size

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


# --------------------------------------------------------------------------- pair lists


PAIR_LIST_SUFFIXES = (".txt", ".lst", ".tsv", ".list")


def read_pair_list(path: Path, task: str | None = None) -> Found:
    """A list file of pairs, one `lq<TAB>gt` (or `lq gt`) per line, paths relative to the
    file; blank lines and `#` comments are skipped. A path written from the list's own
    root (`/real_world/...`, as SPA-Data's lists do) is read relative to the file when it
    is not found as written. The scale comes from the first pair's sizes."""
    from mcir_cli.imageio import image_size

    base = path.parent

    def resolve(text: str, line: int) -> Path:
        p = Path(text)
        for cand in ((base / p) if not p.is_absolute() else p, base / text.lstrip("/")):
            if cand.is_file():
                return cand
        raise McirError(f"line {line}: {text} not found", path)

    pairs = []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise McirError("not a folder, and not a text list of pairs", path) from None
    for i, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != 2:
            raise McirError(
                f"not a folder, and not a list of pairs: line {i} holds {len(fields)} path(s), "
                "expected `lq<TAB>gt` (or `lq gt`)", path)
        lq, gt = resolve(fields[0].strip(), i), resolve(fields[1].strip(), i)
        pairs.append(Pair(lq.stem, gt, lq))
    if not pairs:
        raise McirError("not a folder, and an empty list of pairs", path)
    names = [p.name for p in pairs]
    if len(set(names)) < len(names):  # e.g. GoPro frames: name by the path inside the list's folder
        pairs = [replace(p, name="-".join(p.lq.relative_to(base).with_suffix("").parts))
                 if p.lq.is_relative_to(base) else p for p in pairs]
    (lw, lh), (gw, gh) = image_size(pairs[0].lq), image_size(pairs[0].gt)
    scale = round(gw / lw) if lw else 1
    if scale < 2 or gw // scale != lw or gh // scale != lh:  # not an SR list (or not a clean one)
        scale = 1
    found_task = task or ("sr" if scale > 1 else task_from_names(base, "restore"))
    return Found(path, "list of pairs (lq gt per line)", found_task, scale, _unique(pairs, path),
                 (scale,) if scale > 1 else ())


# --------------------------------------------------------------------------- recognition


SPLITS_TRAIN = ("train", "training", "trainset", "train_data")
SPLITS_OTHER = ("test", "testing", "val", "valid", "validation", "eval", "testset", "test_data")


def _matches(f: Folder) -> list[tuple[Layout, Match]]:
    return [(lay, m) for lay in LAYOUTS if (m := lay.detect(f)) is not None]


def _with_note(m: Match, note: str) -> Match:
    def build(scale: int | None) -> Found:
        found = m.build(scale)
        return replace(found, notes=(note, *found.notes))

    return replace(m, build=build, notes=(note, *m.notes))


def match(root: str | Path) -> Match:
    """The one layout `root` (a folder or a list file) fits, or a one-line error."""
    root = Path(root)
    if not root.exists():
        raise McirError("folder not found", root)
    if root.is_file():
        if root.suffix.lower() in PAIR_LIST_SUFFIXES:
            return Match("list of pairs", lambda s: read_pair_list(root))
        raise McirError("not a folder (a list of pairs must end in .txt, .lst, .tsv or .list)", root)
    f = Folder(root)
    found = _matches(f)
    if len(found) > 1:
        raise McirError(
            "matches several layouts (" + "; ".join(f"{m.name}" for _, m in found) + "): point at one "
            "of its subfolders or give the pairs as a list file (lq<TAB>gt per line)",
            root,
        )
    if found:
        return found[0][1]
    lmdb = [n for n in f.subs if n.endswith(".lmdb")]
    if lmdb:
        raise McirError(
            f"holds LMDB databases ({', '.join(f.subs[n].name for n in sorted(lmdb))}): mcir reads image "
            "folders; point at the image folders the LMDB was made from", root)
    splits = {n: f.subs[n] for n in (*SPLITS_TRAIN, *SPLITS_OTHER) if n in f.subs}
    split_matches = {n: m for n, d in splits.items() if len(ms := _matches(Folder(d))) == 1 for m in [ms[0][1]]}
    if split_matches:
        train = next((n for n in SPLITS_TRAIN if n in split_matches), None)
        if train is None and len(split_matches) > 1:
            raise McirError(
                f"holds the splits {', '.join(splits[n].name + '/' for n in split_matches)}: point at one", root)
        use = train or next(iter(split_matches))
        others = [splits[n].name + "/" for n in split_matches if n != use]
        note = f"{splits[use].name}/ used" + (
            f"; {', '.join(others)} not used (give it as its own --data/--val)" if others else "")
        m = split_matches[use]
        return _with_note(replace(m, name=f"{splits[use].name}/{m.name}"), note)
    inner = {d.name: ms[0][1].name for d in f.subs.values() if len(ms := _matches(Folder(d))) == 1}
    if inner:
        listed = ", ".join(f"{k}/ ({v})" for k, v in sorted(inner.items())[:4])
        more = f" and {len(inner) - 4} more" if len(inner) > 4 else ""
        if len(inner) == 1:
            raise McirError(f"holds a dataset in a subfolder, {listed}: point --data at it", root)
        raise McirError(
            f"holds {len(inner)} datasets, not one: {listed}{more}; give each as its own --data", root)
    raise _NoLayout(f)


class _NoLayout(McirError):
    """No layout fits: the fallbacks (HR only, clean images) may still apply."""

    def __init__(self, f: Folder) -> None:
        self.folder = f
        tried = "; ".join(lay.expects for lay in LAYOUTS)
        super().__init__(
            f"matches no known layout (tried: {tried}; HR-only: HR/ or images with --scale; clean "
            f"images with --task denoise; a list file of lq gt pairs; see docs/datasets.md); it holds: "
            f"{f.holds()}",
            f.path,
        )


def recognise(root: str | Path, scale: int | None = None, task: str | None = None) -> Found:
    """Pairs, task, scale and layout of `root`; `scale` picks one of several SR scales (or
    asks for LR made from HR); `task` overrides the layout's and tells a flat folder of
    clean images what to become (denoise: noise is added; sr: LR made by bicubic)."""
    try:
        m = match(root)
    except _NoLayout as exc:
        return _fallback(exc, scale, task)
    found = m.build(scale)
    if task and found.task != "sr":
        found = replace(found, task=task)
    return found


def _fallback(exc: _NoLayout, scale: int | None, task: str | None) -> Found:
    f = exc.folder
    hr_dir = f.sub("hr", "gt", "gtmod12")
    if hr_dir is not None and list_images(hr_dir):
        if task == "denoise":
            return _clean(f.path, hr_dir)
        return hr_only(f.path, [hr_dir], scale)
    if f.images:
        if _side_by_side(f, task):
            return did_mdn(f)
        if task == "denoise":
            return _clean(f.path, f.path)
        if task in (None, "sr") and scale is not None and scale > 1:
            return hr_only(f.path, [f.path], scale)
        raise McirError(
            "a flat folder of images: for SR give --scale (LR is made by MATLAB bicubic), "
            "for denoising give --task denoise --noise-sigma S (DID-MDN's side-by-side pairs: "
            "--task derain)",
            f.path,
        )
    raise exc


def _clean(root: Path, folder: Path) -> Found:
    pairs = tuple(Pair(p.stem, p, None) for p in list_images(folder))
    return Found(root, "clean images (Gaussian noise added)", "denoise", 1, pairs)


def scales_of(root: str | Path) -> tuple[int, ...]:
    """The SR scales a folder holds (empty for non-SR folders, HR-only folders and folders
    that fit no layout), without pairing anything."""
    try:
        m = match(root)
    except McirError:
        return ()
    if m.name == "list of pairs":
        return m.build(None).scales
    return m.scales


def infer_scale(paths: Sequence[str | Path]) -> int | None:
    """The one scale the given data folders hold together, or None when they hold none or
    several (then the scale must be given). For a multi-scale preset (`--model
    swinir-light`) trained on `DIV2K/` with only `X4/` LR images: 4."""
    found = {s for p in paths for s in scales_of(p)}
    return found.pop() if len(found) == 1 else None
