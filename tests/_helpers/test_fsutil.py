"""Atomic writes and confined names (`mcir_cli._helpers.fsutil`, issue #14): names mcir did not
choose stay inside the output folder; a failed write (full disk, read-only, no permission,
Ctrl-C) names the file, leaves no temp file and keeps the previous version."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from mcir_cli._helpers import fsutil
from mcir_cli._helpers.fsutil import atomic_write, atomic_write_text, confined, safe_name
from mcir_cli.errors import McirError
from tests.conftest import files_under


NASTY = [
    "..", ".", "", " ", "...", "../../etc/passwd", "/etc/passwd", "/", "a/../../b", "a\\..\\..\\b",
    "C:\\Windows\\x", "x\x00y", "\u202eevil\u202dgnp.exe", "Ｓｅｔ５／..", "．．", "a\u200bb", "line\u2028break",
    "tab\there", "\udcff\udcfe", "CON", "nul.png", "a" * 400 + ".png", "图" * 120, ".hidden", "trailing. ",
    "~", "$HOME", "x" * 255,
]


@pytest.mark.unit
@pytest.mark.parametrize("name", NASTY, ids=[ascii(n)[:40] for n in NASTY])
def test_confined_is_one_safe_component_strictly_inside(tmp_path, name):
    path = confined(tmp_path, name)
    assert path.parent == tmp_path
    part = path.name
    assert part not in ("", ".", "..") and not part.startswith(".")
    assert not any(c in part for c in "/\\\x00:*?\"<>|") and part == part.strip()
    assert all(c.isprintable() for c in part) and len(part.encode("utf-8")) <= 255
    path.write_text("x")  # the file system takes it, and it lands inside
    assert os.path.realpath(path).startswith(os.path.realpath(tmp_path) + os.sep)


@pytest.mark.unit
def test_confined_several_names_and_plain_names_kept(tmp_path):
    assert confined(tmp_path, "..", "..", "x.png") == tmp_path / "_" / "_" / "x.png"
    for plain in ("baby", "img_001.png", "Set5 x4 (2)", "图像1", "Ünïcödé", "a.b.c", "X4 (1)", "a-b_c"):
        assert safe_name(plain) == plain
    assert safe_name("é") == "é" == safe_name("e\u0301")  # NFC/NFKC: one spelling, one file
    with pytest.raises(ValueError):
        confined(tmp_path)


@pytest.mark.unit
def test_long_names_stay_distinct():
    a, b = "a" * 300 + "1.png", "a" * 300 + "2.png"
    assert safe_name(a) != safe_name(b) and safe_name(a).endswith(".png")


@pytest.mark.unit
def test_confined_refuses_a_symlink_that_leads_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "Set5").symlink_to(outside, target_is_directory=True)
    with pytest.raises(McirError, match="outside"):
        confined(root, "Set5", "baby.png")


def _partial_then(exc: BaseException):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise exc
    return write


@pytest.mark.unit
@pytest.mark.parametrize("code, reason", [
    (errno.ENOSPC, "no space left on device"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
])
def test_failed_write_names_the_file_and_keeps_the_previous(tmp_path, code, reason):
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(McirError) as info:
        atomic_write(target, _partial_then(OSError(code, os.strerror(code))))
    msg = str(info.value)
    assert msg.startswith(f"{target}: cannot write: {reason}") and "previous version is kept" in msg
    assert target.read_text() == "old" and files_under(tmp_path) == ["r.json"]


@pytest.mark.unit
def test_torch_save_on_a_full_disk(tmp_path, monkeypatch):
    """torch.save hides the errno: "[enforce fail at inline_container.cc:672] ..."."""
    from mcir_cli.models.checkpoint import Checkpoint, save_like

    def full_disk_save(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04 half")
        else:
            Path(f).write_bytes(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(fsutil, "_probe_write_errno", lambda tmp: errno.ENOSPC)
    target = tmp_path / "model.pth"
    with pytest.raises(McirError, match=r"model\.pth: cannot write: no space left on device$"):
        save_like(Checkpoint(None, {}), {"w": torch.zeros(2)}, target)
    assert files_under(tmp_path) == []
    monkeypatch.setattr(fsutil, "_probe_write_errno", lambda tmp: None)  # space again: torch's words
    with pytest.raises(McirError, match=r"model\.pth: cannot write: \[enforce fail at inline_container"):
        save_like(Checkpoint(None, {}), {"w": torch.zeros(2)}, target)
    assert files_under(tmp_path) == []


@pytest.mark.unit
def test_a_library_that_says_os_error_28(tmp_path):
    target = tmp_path / "w.safetensors"
    with pytest.raises(McirError, match="no space left on device"):
        atomic_write(target, _partial_then(Exception("Error while serializing: I/O error: "
                                                     "No space left on device (os error 28)")))
    assert files_under(tmp_path) == []


@pytest.mark.unit
def test_unwritable_folder_names_the_target(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", refuse)
    with pytest.raises(McirError, match=r"out\.json: cannot write: read-only file system"):
        atomic_write_text(tmp_path / "out.json", "{}")


@pytest.mark.unit
@pytest.mark.parametrize("stage", ["write", "chmod", "fsync", "replace"])
@pytest.mark.parametrize("exc", [KeyboardInterrupt(), ValueError("a bug")], ids=["ctrl-c", "bug"])
def test_any_exception_leaves_no_temp_file(tmp_path, monkeypatch, stage, exc):
    target = tmp_path / "state.pt"
    target.write_bytes(b"previous")

    def boom(*args, **kwargs):
        raise exc

    write = lambda tmp: tmp.write_bytes(b"new")  # noqa: E731
    if stage == "write":
        write = _partial_then(exc)
    elif stage == "chmod":
        monkeypatch.setattr(fsutil.os, "chmod", boom)
    elif stage == "fsync":
        monkeypatch.setattr(fsutil, "_fsync", boom)
    else:
        monkeypatch.setattr(fsutil.os, "replace", boom)
    with pytest.raises(type(exc)):  # not turned into a user error: re-raised as it is
        atomic_write(target, write)
    monkeypatch.undo()
    assert target.read_bytes() == b"previous" and files_under(tmp_path) == ["state.pt"]


def _writers():
    from mcir_cli.data.imageio import write_image
    from mcir_cli.models.checkpoint import save_safetensors

    big = torch.rand(3, 256, 256)
    return {
        "torch.save": lambda p: atomic_write(p, lambda tmp: torch.save({"w": big}, tmp)),
        "safetensors": lambda p: save_safetensors({"w": big}, p),
        "text": lambda p: atomic_write_text(p, "x" * 200_000),
        "png": lambda p: write_image(p, big),
    }


@pytest.mark.parametrize("kind", ["torch.save", "safetensors", "text", "png"])
def test_real_full_disk(small_disk, kind):
    target = small_disk / "out.bin"
    target.write_text("previous")
    with pytest.raises(McirError) as info:
        _writers()[kind](target)
    assert str(info.value) == f"{target}: cannot write: no space left on device; the previous version is kept"
    assert target.read_text() == "previous" and files_under(small_disk) == ["out.bin"]
