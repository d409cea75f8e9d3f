"""Nothing lost, nothing escapes (issue #14): names mcir did not choose stay inside the
output folder; a failed write (full disk, read-only, no permission, Ctrl-C) names the
file, leaves no temp file and keeps the previous version; bad inputs and impossible
batches are one line before any work."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_path
from PIL import Image
from typer.testing import CliRunner

from mcir_cli._helpers import fsutil
from mcir_cli._helpers.fsutil import atomic_write, atomic_write_text, confined, safe_name
from mcir_cli.cli import app
from mcir_cli.data.datasets import discover, discover_all, folder_name
from mcir_cli.data.limits import batch_image_bytes, check_batch_memory, check_image_size
from mcir_cli.errors import McirError

runner = CliRunner()


def _one_line_error(res, *names: object) -> str:
    """Exit 2 and exactly one line, `error: ...`, naming every one of `names`."""
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1, res.output
    line = lines[0]
    assert line.startswith("error: ") and "Traceback" not in line and "please report" not in line, line
    for name in names:
        assert str(name) in line, line
    return line


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _png(path: Path, w: int, h: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def _imdn() -> Path:
    return shared_path("weights", "IMDN", "IMDN_x4.pth")


# ----------------------------------------------------------------- confined paths

NASTY = [
    "..", ".", "", " ", "...", "../../etc/passwd", "/etc/passwd", "/", "a/../../b", "a\\..\\..\\b",
    "C:\\Windows\\x", "x\x00y", "\u202eevil\u202dgnp.exe", "Ｓｅｔ５／..", "．．", "a\u200bb", "line\u2028break",
    "tab\there", "\udcff\udcfe", "CON", "nul.png", "a" * 400 + ".png", "图" * 120, ".hidden", "trailing. ",
    "~", "$HOME", "x" * 255,
]


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


def test_confined_several_names_and_plain_names_kept(tmp_path):
    assert confined(tmp_path, "..", "..", "x.png") == tmp_path / "_" / "_" / "x.png"
    for plain in ("baby", "img_001.png", "Set5 x4 (2)", "图像1", "Ünïcödé", "a.b.c", "X4 (1)", "a-b_c"):
        assert safe_name(plain) == plain
    assert safe_name("é") == "é" == safe_name("e\u0301")  # NFC/NFKC: one spelling, one file
    with pytest.raises(ValueError):
        confined(tmp_path)


def test_long_names_stay_distinct():
    a, b = "a" * 300 + "1.png", "a" * 300 + "2.png"
    assert safe_name(a) != safe_name(b) and safe_name(a).endswith(".png")


def test_confined_refuses_a_symlink_that_leads_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "Set5").symlink_to(outside, target_is_directory=True)
    with pytest.raises(McirError, match="outside"):
        confined(root, "Set5", "baby.png")


def test_dataset_name_of_a_path_ending_in_dotdot_is_the_real_folder(tmp_path):
    s5 = tmp_path / "A" / "S5"
    for n in ("a", "b"):
        _png(s5 / "HR" / f"{n}.png", 32, 32)
    (s5 / "sub").mkdir()
    assert folder_name(s5 / "sub" / "..") == "S5"
    assert discover(s5 / "sub" / "..", scale=4).name == "S5"
    other = tmp_path / "B" / "S5"
    shutil.copytree(s5 / "HR", other / "HR")
    (tmp_path / "B" / "x").mkdir()
    names = [d.name for d in discover_all([s5, tmp_path / "B" / "x" / ".." / "S5"], 4, None)]
    assert names == ["A/S5", "B/S5"]  # the parent prefix of a collision is a real name too


def test_save_images_of_a_dotdot_dataset_stay_inside(tmp_path):
    """`--data A/S5/sub/..` used to make the dataset name "..": images went to DIR's parent."""
    s5 = tmp_path / "A" / "S5"
    for i, n in enumerate(("a", "b")):
        _png(s5 / "HR" / f"{n}.png", 32, 32, seed=i)
    (s5 / "sub").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(_imdn()), "--data", str(s5 / "sub" / ".."),
                              "--scale", "4", "--device", "cpu", "--save-images", str(out / "imgs"),
                              "-o", str(out / "r.json")])
    assert res.exit_code == 0, res.output
    assert _files(out) == ["imgs", "imgs/S5", "imgs/S5/a.png", "imgs/S5/b.png", "r.json"]
    assert list(json.loads((out / "r.json").read_text())["datasets"]) == ["S5"]
    again = runner.invoke(app, ["evaluate", "--restored", str(out / "imgs"), "--data", str(s5), "--scale", "4"])
    assert again.exit_code == 0, again.output


def test_bicubic_save_images_of_a_dotdot_dataset_stay_inside(tmp_path):
    s5 = tmp_path / "A" / "S5"
    _png(s5 / "HR" / "a.png", 32, 32)
    (s5 / "sub").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(s5 / "sub" / ".."), "--scale", "4",
                              "--save-images", str(out / "imgs")])
    assert res.exit_code == 0, res.output
    assert _files(out) == ["imgs", "imgs/S5", "imgs/S5/a.png"]


def test_score_dataset_confines_names_it_did_not_choose(tmp_path):
    """A Dataset built by API users (or a future layout) with hostile names."""
    from dataclasses import replace

    from mcir_cli.evaluate.benchmarks import conventions_for, score_dataset
    from mcir_cli.models.loading import load_model

    model = load_model(_imdn())
    folder = tmp_path / "data"
    _png(folder / "HR" / "x.png", 32, 32)
    d = discover(folder, scale=4)
    d = replace(d, name="../../escape", pairs=tuple(replace(p, name="../../../../x") for p in d.pairs))
    save = tmp_path / "deep" / "save"
    save.mkdir(parents=True)
    score_dataset(model, d, conventions_for("sr", 4), device=torch.device("cpu"), save_dir=save)
    assert _files(tmp_path / "deep") == ["save", "save/_", "save/_/_", "save/_/_/escape", "save/_/_/escape/__.._.._.._x.png"]


# ----------------------------------------------------------------- failed writes


def _partial_then(exc: BaseException):
    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise exc
    return write


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
    assert target.read_text() == "old" and _files(tmp_path) == ["r.json"]


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
    assert _files(tmp_path) == []
    monkeypatch.setattr(fsutil, "_probe_write_errno", lambda tmp: None)  # space again: torch's words
    with pytest.raises(McirError, match=r"model\.pth: cannot write: \[enforce fail at inline_container"):
        save_like(Checkpoint(None, {}), {"w": torch.zeros(2)}, target)
    assert _files(tmp_path) == []


def test_a_library_that_says_os_error_28(tmp_path):
    target = tmp_path / "w.safetensors"
    with pytest.raises(McirError, match="no space left on device"):
        atomic_write(target, _partial_then(Exception("Error while serializing: I/O error: "
                                                     "No space left on device (os error 28)")))
    assert _files(tmp_path) == []


def test_unwritable_folder_names_the_target(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(fsutil.tempfile, "mkstemp", refuse)
    with pytest.raises(McirError, match=r"out\.json: cannot write: read-only file system"):
        atomic_write_text(tmp_path / "out.json", "{}")


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
    assert target.read_bytes() == b"previous" and _files(tmp_path) == ["state.pt"]


def test_cli_disk_full_on_the_results_is_one_line(tmp_path, monkeypatch):
    folder = tmp_path / "data"
    _png(folder / "a.png", 32, 32)
    real = Path.write_text

    def full(self, *args, **kwargs):
        if self.name.startswith(".r.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "--scale", "4", "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: {out}: cannot write: no space left on device", res.stderr
    assert _files(tmp_path) == ["data", "data/a.png"]


@pytest.fixture
def small_disk(tmp_path):
    """A real 64 KiB tmpfs (needs root and mount; skipped where either is missing)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


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
    assert target.read_text() == "previous" and _files(small_disk) == ["out.bin"]


def test_real_full_disk_from_the_cli(small_disk, tmp_path):
    folder = tmp_path / "data"
    _png(folder / "a.png", 32, 32)
    try:  # fill the disk: the results cannot be written at the end
        (small_disk / "filler").write_bytes(b"\0" * 200_000)
    except OSError:
        pass
    out = small_disk / "r.json"
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "--scale", "4", "-o", str(out)])
    assert res.exit_code == 2, res.output
    assert res.stderr.strip() == f"error: {out}: cannot write: no space left on device", res.stderr
    assert _files(small_disk) == ["filler"]


# ----------------------------------------------------------------- bad inputs, up front


def test_one_pixel_image_is_one_line_and_writes_nothing(tmp_path):
    folder = tmp_path / "tiny"
    one = _png(folder / "one.png", 1, 1)
    out = tmp_path / "out"
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "--scale", "4", "-o", str(out / "r.json"),
                              "--save-images", str(out / "imgs")])
    assert "too small for x4" in _one_line_error(res, one)
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(_imdn()), "--data", str(folder), "--scale", "4",
                              "--device", "cpu", "--save-images", str(out / "imgs"), "-o", str(out / "r.json")])
    assert "too small for x4" in _one_line_error(res, one)
    assert _files(tmp_path) == ["tiny", "tiny/one.png"]


def test_too_small_for_the_border_or_ssim_is_one_line(tmp_path):
    folder = tmp_path / "pairs"
    _png(folder / "HR" / "a.png", 32, 32)
    _png(folder / "HR" / "one.png", 4, 4)
    lr = _png(folder / "LR_bicubic" / "X4" / "one.png", 1, 1)
    _png(folder / "LR_bicubic" / "X4" / "a.png", 8, 8)
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "-o", str(tmp_path / "r.json")])
    line = _one_line_error(res, lr)
    assert "image 4x4 is too small" in line and "needs at least 19x19" in line
    res = runner.invoke(app, ["evaluate", "--bicubic", "--data", str(folder), "--crop-border", "0"])
    assert "needs at least 11x11" in _one_line_error(res, lr)
    assert not (tmp_path / "r.json").exists()


def test_check_image_size_rules():
    from mcir_cli.metrics.conventions import Conventions

    conv = Conventions(y_channel=True, crop_border=4)
    check_image_size(Path("ok.png"), 19, 19, 1, conv)
    check_image_size(Path("ok.png"), 20, 20, 4, conv)  # mod-crop 20 -> 20, 20 - 8 >= 11
    with pytest.raises(McirError, match="18x18 is too small"):
        check_image_size(Path("x.png"), 18, 18, 1, conv)
    with pytest.raises(McirError, match="16x16 is too small"):  # 19 mod-cropped to x4 is 16
        check_image_size(Path("x.png"), 19, 19, 4, conv)
    with pytest.raises(McirError, match="3x3 is too small for x4"):
        check_image_size(Path("x.png"), 3, 3, 4, conv)
    check_image_size(Path("x.png"), 4, 4, 4, conv, lq_size=(5, 5))  # the LR decides: 20x20


def _pk_garbage(path: Path) -> Path:
    # torch's zip reader raises a bare OSError(EINVAL) on these bytes: "error: Invalid argument"
    path.write_bytes(b"PK\x03\x04" + random.Random(0).randbytes(5000))
    return path


def test_zip_garbage_checkpoint_names_the_file(tmp_path):
    bad = _pk_garbage(tmp_path / "model.pth")
    assert "not a readable torch checkpoint" in _one_line_error(runner.invoke(app, ["models", "inspect", str(bad)]), bad)
    folder = tmp_path / "data"
    _png(folder / "a.png", 32, 32)
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(bad), "--data", str(folder), "--scale", "4",
                              "-o", str(tmp_path / "r.json"), "--save-images", str(tmp_path / "imgs")])
    _one_line_error(res, bad)
    assert _files(tmp_path) == ["data", "data/a.png", "model.pth"]


def test_reader_os_errors_name_the_checkpoint(tmp_path, monkeypatch):
    """Whatever torch version: an OSError from its reader is the file's problem, named."""
    bad = _pk_garbage(tmp_path / "x.pth")

    def einval(*args, **kwargs):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(torch, "load", einval)
    out = _one_line_error(runner.invoke(app, ["models", "inspect", str(bad)]), bad)
    assert "damaged zip archive: Invalid argument" in out


# ----------------------------------------------------------------- batch memory


def test_batch_memory_refused_up_front():
    need = batch_image_bytes(1_000_000, 48, 4, 3)
    assert need == 1_000_000 * 3 * (48 * 48 + 2 * 192 * 192) * 4
    with pytest.raises(McirError) as info:
        check_batch_memory(1_000_000, 48, 4, 3, "cpu", available=64 * 2**30)
    msg = str(info.value)
    assert "--batch 1000000 x --patch 48" in msg and "849.7 GiB" in msg and "64.0 GiB" in msg
    assert "smaller --batch or --patch" in msg and "\n" not in msg
    assert check_batch_memory(16, 48, 4, 3, "cpu", available=64 * 2**30) == batch_image_bytes(16, 48, 4, 3)


def test_batch_memory_measures_this_machine():
    from mcir_cli.data.limits import available_memory

    room = available_memory("cpu")
    assert room is None or room > 0
    if room is not None:
        with pytest.raises(McirError, match="free: use a smaller"):
            check_batch_memory(10**9, 512, 4, 3, "cpu")
    check_batch_memory(1, 8, 1, 1, "cpu")
    with pytest.raises(McirError, match="must be positive"):
        check_batch_memory(0, 48, 4, 3, "cpu")


def test_results_of_the_same_name_are_told_apart_by_their_files(tmp_path):
    """`mcir compare a/X4.json b/X4.json` named them "X4 (1)"/"X4 (2)" in its messages."""
    import json as _json

    from mcir_cli.compare.alignment import display_labels as _labels
    from mcir_cli.compare.files import load_result

    result = {"conventions": {"y_channel": True, "crop_border": 4, "quantize": True}, "task": "sr",
              "model": {"label": "X4", "scale": 4},
              "datasets": {"S": {"psnr": 30.0, "ssim": 0.9, "images": [{"name": "a", "psnr": 30.0, "ssim": 0.9}]}}}
    paths = []
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "X4.json").write_text(_json.dumps(result))
        paths.append(tmp_path / sub / "X4.json")
    assert _labels([load_result(p) for p in paths]) == ["X4 (a/X4.json)", "X4 (b/X4.json)"]


def test_a_dataset_named_dotdot_stays_inside_visuals():
    from mcir_cli.render.visuals import slug

    assert slug("..") == "x" and slug("../etc") == "_etc" and slug("Set5") == "Set5"
