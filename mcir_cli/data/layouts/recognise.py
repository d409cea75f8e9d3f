"""Recognition: every layout tried on a folder, splits, folders of datasets, fallbacks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from mcir_cli.data.layouts._core import LAYOUTS, Folder, Found, Layout, Match, Pair, list_images
from mcir_cli.data.layouts.lists import PAIR_LIST_SUFFIXES, read_pair_list
from mcir_cli.data.layouts.restoration import _side_by_side, did_mdn
from mcir_cli.data.layouts.sr import hr_only
from mcir_cli.data.lmdb_images import is_lmdb
from mcir_cli.errors import McirError

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
    if len(found) > 1 and any(lay.key == "lmdb" for lay, _ in found):  # image folders beside their LMDBs
        dbs = ", ".join(sorted(d.name for n, d in f.subs.items() if n.endswith(".lmdb")))
        found = [(lay, _with_note(m, f"the image folders are used; the LMDBs ({dbs}) are not (point --data at "
                                  "a folder holding only them)")) for lay, m in found if lay.key != "lmdb"]
    if len(found) > 1:
        raise McirError(
            "matches several layouts (" + "; ".join(f"{m.name}" for _, m in found) + "): point at one "
            "of its subfolders or give the pairs as a list file (lq<TAB>gt per line)",
            root,
        )
    if found:
        return found[0][1]
    lmdb = [n for n in f.subs if n.endswith(".lmdb")]
    broken = [f.subs[n].name for n in sorted(lmdb) if not is_lmdb(f.subs[n])]
    if broken:
        raise McirError(f"{broken[0]}/ holds no data.mdb: not an LMDB database (BasicSR's create_lmdb.py "
                        "writes data.mdb and meta_info.txt)", root)
    if lmdb:
        raise McirError(
            f"holds LMDB databases ({', '.join(f.subs[n].name for n in sorted(lmdb))}) but no GT + LQ pair of "
            "them: point --data at one (HR images: add --scale; clean images: --task denoise)", root)
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
            f"images with --task denoise or jpeg; a list file of lq gt pairs; see docs/datasets.md); it holds: "
            f"{f.holds()}",
            f.path,
        )


def recognise(root: str | Path, scale: int | None = None, task: str | None = None) -> Found:
    """Pairs, task, scale and layout of `root`; `scale` picks one of several SR scales (or
    asks for LR made from HR); `task` overrides the layout's and tells a flat folder of
    clean images what to become (denoise: noise is added; jpeg: compressed; sr: LR made by bicubic)."""
    try:
        m = match(root)
    except _NoLayout as exc:
        return _fallback(exc, scale, task)
    found = m.build(scale)
    if task and found.task != "sr":
        found = replace(found, task=task)
    if task == "jpeg":
        found = replace(found, notes=(*found.notes, "JPEG: the pairs are used as given; their inputs are never "
                                                    "compressed again (--jpeg-quality does not apply)"))
    return found


def _fallback(exc: _NoLayout, scale: int | None, task: str | None) -> Found:
    f = exc.folder
    hr_dir = f.sub("hr", "gt", "gtmod12")
    if hr_dir is not None and list_images(hr_dir):
        if task in _CLEAN_TASKS:
            return _clean(f.path, hr_dir, task)
        return hr_only(f.path, [hr_dir], scale)
    if f.images:
        if _side_by_side(f, task):
            return did_mdn(f)
        if task in _CLEAN_TASKS:
            return _clean(f.path, f.path, task)
        if task in (None, "sr") and scale is not None and scale > 1:
            return hr_only(f.path, [f.path], scale)
        raise McirError(
            "a flat folder of images: for SR give --scale (LR is made by MATLAB bicubic), "
            "for denoising --task denoise, for JPEG --task jpeg (evaluate and retrain also need "
            "--noise-sigma S or --jpeg-quality Q), for DID-MDN's side-by-side pairs --task derain",
            f.path,
        )
    raise exc


# tasks whose inputs are made from clean images: what is done to them
_CLEAN_TASKS = {"denoise": "Gaussian noise added", "jpeg": "JPEG-compressed on the fly"}


def _clean(root: Path, folder: Path, task: str) -> Found:
    images = list_images(folder)
    pairs = tuple(Pair(p.stem, p, None) for p in images)
    stored = sum(p.suffix.lower() in (".jpg", ".jpeg") for p in images)
    notes = ()
    if task == "jpeg" and stored:
        notes = (f"{stored} of the clean images are stored as JPEG: their own compression stays in the "
                 "targets (they are compressed again for the inputs)",)
    return Found(root, f"clean images ({_CLEAN_TASKS[task]})", task, 1, pairs, notes=notes)


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
