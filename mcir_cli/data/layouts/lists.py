"""Pair lists: `--data pairs.txt`, the escape hatch for any other pairing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mcir_cli.data.imageio import image_size
from mcir_cli.data.layouts._core import Found, Pair, _unique, task_from_names
from mcir_cli.errors import McirError

# --------------------------------------------------------------------------- pair lists


PAIR_LIST_SUFFIXES = (".txt", ".lst", ".tsv", ".list")


def read_pair_list(path: Path, task: str | None = None) -> Found:
    """A list file of pairs, one `lq<TAB>gt` (or `lq gt`) per line, paths relative to the
    file; blank lines and `#` comments are skipped. A path written from the list's own
    root (`/real_world/...`, as SPA-Data's lists do) is read relative to the file when it
    is not found as written. The scale comes from the first pair's sizes."""
    base = path.parent

    def resolve(text: str, line: int) -> Path:
        p = Path(text)
        for cand in ((base / p) if not p.is_absolute() else p, base / text.lstrip("/")):
            if cand.is_file():
                return cand
        raise McirError(f"line {line}: {text} not found (each line is `lq<TAB>gt`, paths relative to the list)", path)

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
