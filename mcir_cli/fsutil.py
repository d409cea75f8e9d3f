"""Atomic file writes and file hashes: a crash never leaves a half-written file."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def writable_target(path: str | Path, what: str = "output") -> Path:
    """Check before any work that `path` can be created: its nearest existing ancestor
    must be a folder where a file can be created (a run's results are not lost at the
    end to a typo)."""
    from mcir_cli.errors import McirError

    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise McirError(f"cannot write the {what}: {parent} is not a folder", path)
    try:  # a real probe: os.access says yes to root on read-only or virtual file systems
        fd, probe = tempfile.mkstemp(prefix=".mcir-probe.", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise McirError(f"cannot write the {what} in {parent} ({exc.strerror or type(exc).__name__})", path) from None
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then rename the temp file onto `path` (same folder, so the
    rename is atomic). The temp file is removed if `write` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp makes 0600 files; results and weights get the mode any new file gets
        # (0644 under the usual umask 022), so collaborators can read them
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
