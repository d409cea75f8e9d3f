"""Images stored in LMDB databases as BasicSR writes them (`create_lmdb.py`).

BasicSR's `make_lmdb_from_imgs` (basicsr/utils/lmdb_util.py) makes a folder `NAME.lmdb/`
with `data.mdb` + `lock.mdb` (the LMDB) and `meta_info.txt`, one line per image:
`<key>.png (h,w,c) <compression level>`; each value is the image PNG-encoded by OpenCV
under the key (the file name without `.png`, ASCII). Its paired datasets
(`paired_paths_from_lmdb`) pair an LQ and a GT database by key.

mcir addresses such an image by a path that does not exist on disk, `NAME.lmdb/<key>.png`
(`lmdb_image_paths`), so layouts pair them like files; `image_bytes` gives `imageio` the
encoded bytes of such a path. Reading needs the optional `lmdb` package.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from mcir_cli.errors import McirError

LMDB_SUFFIX = ".lmdb"
META_FILE = "meta_info.txt"
# BasicSR's line: `0001_s001.png (480,480,3) 1`
_META_LINE = re.compile(r"(?P<name>\S+)\s+\((?P<h>\d+),\s*(?P<w>\d+),\s*(?P<c>\d+)\)\s+(?P<level>\d+)")

_envs: dict[tuple[int, str], Any] = {}  # (pid, folder) -> open environment: one per process
_lock = threading.Lock()


def _close_all() -> None:
    """Before a fork (DataLoader workers): an LMDB environment must not cross one, and
    py-lmdb refuses to open a path its process (the forked copy included) holds open."""
    with _lock:
        for env in _envs.values():
            env.close()
        _envs.clear()


os.register_at_fork(before=_close_all)


def is_lmdb(folder: Path) -> bool:
    """Whether `folder` is an LMDB database folder (`NAME.lmdb/` holding `data.mdb`)."""
    return folder.name.lower().endswith(LMDB_SUFFIX) and (folder / "data.mdb").is_file()


def _lmdb_root(path: Path) -> Path | None:
    """The `.lmdb` folder a virtual image path lies in (keys may hold '/'), or None;
    names only, no file-system calls, so that ordinary image paths pay nothing."""
    for parent in path.parents:
        if parent.name.lower().endswith(LMDB_SUFFIX):
            return parent
    return None


def lmdb_image_paths(folder: Path) -> list[Path]:
    """The images of an LMDB folder as virtual paths `folder/<name>`, in meta_info.txt's
    order sorted by name; one-line errors for a missing or malformed meta_info.txt."""
    meta = folder / META_FILE
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise McirError(f"an LMDB without {META_FILE} (BasicSR's create_lmdb.py writes one: "
                        "`<key>.png (h,w,c) <level>` per image)", folder) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise McirError(f"cannot read {META_FILE} ({type(exc).__name__})", folder) from None
    names = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        m = _META_LINE.fullmatch(line.strip())
        if m is None:
            raise McirError(f"line {number} is not BasicSR's `<key>.png (h,w,c) <level>`: {line.strip()[:80]!r}",
                            meta)
        names.append(m.group("name"))
    if not names:
        raise McirError(f"{META_FILE} lists no images", meta)
    return sorted(folder / n for n in names)


def _env(folder: Path) -> Any:
    try:
        import lmdb
    except ImportError:
        raise McirError("reading an LMDB dataset needs the lmdb package: pip install lmdb", folder) from None
    # one environment per database and process: lmdb refuses a second one on the same file
    # (two paths to it, a symlink); forks close them first (`_close_all`)
    key = (os.getpid(), str(folder.resolve()))
    with _lock:
        if key not in _envs:
            try:  # BasicSR's LmdbBackend opens the same way: read-only, no lock file written
                _envs[key] = lmdb.open(str(folder), readonly=True, lock=False, readahead=False, meminit=False)
            except lmdb.Error as exc:
                raise McirError(f"not a readable LMDB ({str(exc).splitlines()[0][:120]})", folder) from None
        return _envs[key]


def image_bytes(path: Path) -> bytes | None:
    """The encoded image stored under a virtual path `NAME.lmdb/<key>.png`, or None when
    `path` is not inside an LMDB folder (an ordinary file)."""
    root = _lmdb_root(path)
    if root is None or not is_lmdb(root):
        return None
    key = path.relative_to(root).as_posix()
    key = key[: -len(Path(key).suffix)] if Path(key).suffix else key  # `<key>.png` -> `<key>`
    with _env(root).begin(write=False) as txn:
        value = txn.get(key.encode("ascii", "replace"))
    if value is None:
        raise McirError(f"no image under the key {key!r} in the LMDB ({META_FILE} lists it)", root)
    return bytes(value)
