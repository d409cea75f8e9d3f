"""Atomic file writes, paths confined to an output folder, and file hashes.

A crash, a full disk or Ctrl-C never leaves a half-written file: every write goes to a
hidden temp file beside the target, is flushed to disk, then renamed over it; on any
failure the temp file is removed and the previous file stays as it was. A write that
fails for a reason the user can fix (no space left, read-only file system, no
permission) is a one-line `McirError` naming the target file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path

from mcir_cli.errors import McirError


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def writable_target(path: str | Path, what: str = "output") -> Path:
    """Check before any work that `path` can be created: its nearest existing ancestor
    must be a folder where a file can be created (a run's results are not lost at the
    end to a typo)."""
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


# errno -> what a user reads; every other errno is shown by its strerror
_WRITE_REASONS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error (failing disk or network file system?)",
}
# torch.save reports a failed write without its errno ("[enforce fail at
# inline_container.cc:672] . unexpected pos 704 vs 598", "PytorchStreamWriter failed
# writing file data/0: file write failed"); safetensors and others end in "(os error 28)"
_TORCH_WRITE_FAILED = re.compile(r"inline_container\.cc|file write failed|PytorchStreamWriter failed|unexpected pos")
_OS_ERROR_CODE = re.compile(r"\(os error (\d+)\)")


def _probe_write_errno(tmp: Path) -> int | None:
    """The errno a write into `tmp`'s folder gets now (a library that hid it failed
    there a moment ago), or None if 64 KiB can still be written and synced."""
    try:
        with open(tmp, "ab") as fh:
            fh.write(b"\0" * 65536)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc.errno
    return None


def _write_error(path: Path, tmp: Path | None, exc: BaseException) -> McirError | None:
    """A failed write as a one-line error naming the target, or None for an exception
    that is not about the file system (a bug, Ctrl-C: re-raised as it is)."""
    code: int | None = None
    reason: str | None = None
    if isinstance(exc, OSError) and exc.errno is not None:
        code = exc.errno
    elif isinstance(exc, McirError):
        return None
    elif isinstance(exc, Exception) and (m := _OS_ERROR_CODE.search(str(exc))):
        code = int(m.group(1))
    elif isinstance(exc, RuntimeError) and _TORCH_WRITE_FAILED.search(str(exc)):
        code = _probe_write_errno(tmp) if tmp is not None and tmp.exists() else None
        if code is None:
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    if code is None and reason is None:
        return None
    if code is not None:
        reason = _WRITE_REASONS.get(code) or os.strerror(code)
    kept = "; the previous version is kept" if path.exists() else ""
    return McirError(f"cannot write: {reason}{kept}", path)


def _interned(obj: object) -> object:
    """The same structure with every string interned: pickle memoises by object identity,
    so a key read back from a file ("step" of a resumed optimizer) and the same key made by
    code would otherwise pickle to different bytes."""
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        return {_interned(k): _interned(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(_interned(v) for v in obj)
    return obj


def atomic_torch_save(path: str | Path, obj: object) -> Path:
    """torch.save through atomic_write, into an open file: given a path, torch names the
    zip archive's records after it, so the random temp name would make two saves of the
    same object differ byte for byte (and break the bit-exact resume guarantee)."""
    import torch

    canonical = _interned(obj)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(canonical, fh)

    return atomic_write(path, write)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` then rename the temp file onto `path` (same folder, so the
    rename is atomic). On any failure, Ctrl-C included, the temp file is removed and a
    previous `path` is left as it was; a full disk, a read-only or unwritable folder
    raise `McirError` naming `path`."""
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp_path = Path(tmp)
        os.close(fd)
        write(tmp_path)
        # mkstemp makes 0600 files; results and weights get the mode any new file gets
        # (0644 under the usual umask 022), so collaborators can read them
        os.chmod(tmp_path, 0o666 & ~_umask())
        _fsync(tmp_path)  # the data is on disk before the rename makes it the file
        os.replace(tmp_path, path)
    except BaseException as exc:
        error = _write_error(path, tmp_path, exc)
        if tmp_path is not None:
            try:
                tmp_path.unlink(missing_ok=True)
            except OSError:
                pass
        if error is not None:
            raise error from None
        raise
    return path


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, obj: object, *, indent: int = 2, ensure_ascii: bool = True) -> Path:
    """`obj` as JSON, written atomically: `indent` spaces (config.json, results, study
    files: 2; degradation.json: 1; openmodeldb.json: 4, not ASCII-escaped), keys in the
    dict's own order, one trailing newline."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=ensure_ascii) + "\n")


# ----------------------------------------------------------------------- confined paths

# Windows cannot create these names (results folders travel); ':' also makes NTFS streams
_RESERVED_CHARS = frozenset('/\\:*?"<>|')
_RESERVED_STEMS = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                             *(f"LPT{i}" for i in range(1, 10))})
_NAME_MAX = 255  # bytes, one path component on Linux/macOS file systems


def _unsafe_char(ch: str) -> bool:
    # C*: control, format (bidi overrides, zero-width), surrogates, private, unassigned;
    # Z* other than a plain space: line/paragraph separators, odd spaces
    cat = unicodedata.category(ch)
    return ch in _RESERVED_CHARS or cat[0] == "C" or (cat[0] == "Z" and ch != " ")


def is_inside(path: str | Path, folder: str | Path) -> bool:
    """`path` is `folder` or lies under it, links resolved (an output there would become
    part of the input it was made from)."""
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return real == root or os.path.commonpath([real, root]) == root


def refuse_inside_inputs(output: str | Path, inputs: Sequence[str | Path], what: str) -> None:
    """One rule for every command that writes beside what it reads: an output inside an
    input folder would change that input (and become an input of the next run)."""
    for folder in inputs:
        if Path(folder).is_dir() and is_inside(output, folder):
            raise McirError(f"the {what} is inside the input folder {folder}: inputs are read-only, "
                            "choose a folder outside it", output)


def safe_name(name: object) -> str:
    """One path component made from a name mcir did not choose (a dataset or image name,
    a label): never `.`/`..`, never a separator, NUL, control or invisible character,
    never hidden (a leading dot), at most 255 bytes. Runs of unsafe characters become one
    `_`; NFKC folds look-alikes first (fullwidth `／` is a `/`). Plain names
    ("baby", "img_001", "Set5 x4 (2)", "图像") are kept as they are."""
    text = unicodedata.normalize("NFKC", str(name))
    out: list[str] = []
    for ch in text:
        if not _unsafe_char(ch):
            out.append(ch)
        elif not out or out[-1] != "_":
            out.append("_")
    text = "".join(out).strip(" ")
    if text.startswith("."):  # "..", ".", ".hidden", and mcir's own ".<name>.*.tmp"
        text = "_" + text.lstrip(".")
    if text.rstrip(". ") != text:  # Windows drops trailing dots and spaces
        text = text.rstrip(". ") + "_"
    if text.partition(".")[0].upper() in _RESERVED_STEMS:
        text = "_" + text
    if len(text.encode("utf-8")) > _NAME_MAX:
        keep = Path(text).suffix if len(Path(text).suffix) <= 16 else ""
        digest = hashlib.sha256(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:10]
        room = _NAME_MAX - len(keep.encode()) - len(digest) - 1
        head = text[: len(text) - len(keep)].encode("utf-8")[:room].decode("utf-8", "ignore")
        text = f"{head}~{digest}{keep}"
    return text or "_"


def confined(root: str | Path, *names: object) -> Path:
    """`root / n1 / n2 / ...` for names mcir did not choose, each made one safe
    component by `safe_name`: the result is strictly inside `root`, whatever the names
    hold (`..`, `/etc/passwd`, `a/../../b`, NUL, bidi overrides). An existing symbolic
    link on the way that leads out of `root` is refused (`McirError`)."""
    if not names:
        raise ValueError("confined() needs at least one name below the root")
    root = Path(root)
    path = root.joinpath(*(safe_name(n) for n in names))
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if real == real_root or os.path.commonpath([real_root, real]) != real_root:
        raise McirError(f"refusing to write outside {root}: the path leads to {real} (a symbolic link?)", path)
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
