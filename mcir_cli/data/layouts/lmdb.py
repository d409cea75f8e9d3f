"""BasicSR's LMDB datasets: a GT and an LQ database side by side, paired by key.

`scripts/data_preparation/create_lmdb.py` makes, for DIV2K, `DIV2K_train_HR_sub.lmdb` and
`DIV2K_train_LR_bicubic_X{s}_sub.lmdb` (the same keys: `0001_s001`, ...); BasicSR's
option files pair such databases as `dataroot_gt` / `dataroot_lq` (GoPro:
`sharp_crops.lmdb` / `blur_crops.lmdb`; SIDD: `gt_crops.lmdb` / `input_crops.lmdb`). One
database alone is a folder of images (`_core.list_images`): HR with --scale, clean images
with --task denoise.
"""

from __future__ import annotations

import re
from pathlib import Path

from mcir_cli.data.layouts._core import Folder, Match, _paired, _tokens, layout, task_from_names
from mcir_cli.data.layouts.sr import _sr_build
from mcir_cli.data.lmdb_images import LMDB_SUFFIX, is_lmdb
from mcir_cli.errors import McirError

GT_WORDS = frozenset({"hr", "gt", "sharp", "target", "clean", "groundtruth", "norain"})
LQ_WORDS = frozenset({"lr", "lq", "blur", "input", "noisy", "rain", "hazy", "bicubic", "degraded"})


def _kind(db: Path) -> str | None:
    """'gt', 'lq' or None, from the database's name as BasicSR's scripts spell them."""
    words = set(_tokens(Path(db.name[: -len(LMDB_SUFFIX)])))
    gt, lq = bool(words & GT_WORDS), bool(words & LQ_WORDS)
    return "gt" if gt and not lq else "lq" if lq and not gt else None


def _scale(db: Path) -> int | None:
    m = re.search(r"(?:^|[_\-.])x(\d+)(?:$|[_\-.])", db.name[: -len(LMDB_SUFFIX)].lower())
    return int(m.group(1)) if m else None


@layout("lmdb", "BasicSR LMDBs: <set>_HR[_sub].lmdb + <set>_LR_bicubic_X{s}[_sub].lmdb (or GT + LQ .lmdb)")
def basicsr_lmdb(f: Folder) -> Match | None:
    """GT and LQ LMDB databases side by side, as `create_lmdb.py` leaves them."""
    dbs = [d for d in f.subs.values() if is_lmdb(d)]
    gts = [d for d in dbs if _kind(d) == "gt"]
    lqs = [d for d in dbs if _kind(d) == "lq"]
    if not gts or not lqs:
        return None
    if len(gts) > 1:
        raise McirError(f"holds several ground-truth LMDBs ({', '.join(sorted(d.name for d in gts))}): "
                        "point --data at one (with --scale, LR is made from it)", f.path)
    gt = gts[0]
    scaled = {s: d for d in lqs if (s := _scale(d))}
    if scaled:
        name = f"{gt.name}/ + <LQ>_X{{s}}.lmdb/ (BasicSR LMDB, paired by key)"
        per_scale = {s: [(gt, d)] for s, d in scaled.items()}

        def describe(dirs: list[tuple[Path, Path]]) -> str:
            return " + ".join(f"{g.name}/ + {q.name}/" for g, q in dirs) + " (BasicSR LMDB, paired by key)"

        return Match(name, _sr_build(f.path, name, per_scale, [gt], describe=describe), tuple(sorted(per_scale)))
    if len(lqs) > 1:
        raise McirError(f"holds several input LMDBs ({', '.join(sorted(d.name for d in lqs))}): "
                        "point --data at a folder with one", f.path)
    name = f"{lqs[0].name}/ + {gt.name}/ (BasicSR LMDB, paired by key)"
    return Match(name, lambda s: _paired(f.path, lqs[0], gt, name, task_from_names(f.path)))
