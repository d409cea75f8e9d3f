"""Super-resolution layouts: the SR test sets, DIV2K/Flickr2K/DF2K, an LR folder beside its HR."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from mcir_cli.data.layouts._core import Folder, Found, Match, Pair, _strip_scale, _unique, layout, list_images, pair_up
from mcir_cli.errors import McirError

# --------------------------------------------------------------------------- SR


_SCALE_DIR = re.compile(r"[xX](\d+)(_sub)?")  # X4/, or BasicSR's X4_sub/
_LRBICX = re.compile(r"lrbicx(\d+)")  # BasicSR's test sets: LRbicx4/ (lower-cased)


def _sr_scale_dirs(container: Path, sub: bool = False) -> dict[int, Path]:
    """{s: folder} of the `X{s}/` (or BasicSR's `X{s}_sub/`) folders in an LR folder."""
    found = {}
    for d in container.iterdir():
        m = _SCALE_DIR.fullmatch(d.name)
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
            degraded = sorted({_lr_kind(lq) for dirs in per_scale.values() for _, lq in dirs} - {"bicubic"})
            if degraded:  # bicubic LR made from HR would score (or train on) another benchmark
                raise McirError(f"no x{scale} inputs (has x{', x'.join(map(str, scales))}, from "
                                f"{', '.join(degraded)}/): its LR images are not bicubic, so x{scale} LR made "
                                f"from HR by bicubic would be another benchmark; give x{scale} inputs of the "
                                "same degradation, or the HR folder alone for bicubic", root)
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
        kinds = sorted({_lr_kind(lq) for _, lq in per_scale[scale]} - {"bicubic"})
        return Found(root, name, "sr", scale, _unique(pairs, root), scales, tuple(extra),
                     degradation=", ".join(kinds) or "bicubic")

    return build


def _lr_kind(lq_dir: Path) -> str:
    """"bicubic" for an LR folder of bicubic downscales (`LR_bicubic/X4`, `LRbicx4`,
    `DIV2K_train_LR_bicubic/X4_sub`), else the folder that names its degradation
    (`LR_realesrgan`, `DIV2K_train_LR_unknown`)."""
    for d in (lq_dir, lq_dir.parent):
        if "bicubic" in d.name.lower() or _LRBICX.fullmatch(d.name.lower()):
            return "bicubic"
    return lq_dir.parent.name if _SCALE_DIR.fullmatch(lq_dir.name) else lq_dir.name


def hr_only(root: Path, hr_dirs: Sequence[Path], scale: int | None) -> Found:
    """HR images only: LR made by MATLAB-exact bicubic at load time."""
    if not scale or scale < 2:
        raise McirError("HR images only: give --scale so LR images can be made", root)
    pairs = [Pair(p.stem, p, None) for d in hr_dirs for p in list_images(d)]
    return Found(root, "HR-only (LR made by MATLAB bicubic)", "sr", scale, _unique(pairs, root),
                 degradation="bicubic")


@layout("sr-benchmark", "HR/ + LR_bicubic/X{s}/ or GTmod12/ + LRbicx{s}/")
def sr_benchmark(f: Folder) -> Match | None:
    """Set5, Set14, B100, Urban100, Manga109 as the EDSR/KAIR/SwinIR test sets ship them
    (`HR/baby.png`, `LR_bicubic/X4/babyx4.png`) and as BasicSR's (`GTmod12/baby.png`,
    `LRbicx4/baby.png`)."""
    per_scale: dict[int, list[tuple[Path, Path]]] = {}
    names: dict[int, str] = {}
    for kind in ("lr_bicubic", "lr_realesrgan"):  # LR_realesrgan: `mcir data degrade`'s copies
        if "hr" in f.subs and kind in f.subs:
            for s, d in _sr_scale_dirs(f.subs[kind]).items():
                per_scale[s], names[s] = [(f.subs["hr"], d)], f"HR/ + {f.subs[kind].name}/X{{s}}/"
    gtmod = next((f.subs[n] for n in sorted(f.subs) if re.fullmatch(r"gtmod\d+", n)), None)
    if gtmod is not None:
        for n, d in f.subs.items():
            m = _LRBICX.fullmatch(n)
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
