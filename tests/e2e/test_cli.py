"""The CLI's promises that cut across commands: one-line errors (never a traceback), checks
of output locations before any work, readable defaults in --help, --version."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image
from tests.conftest import one_line_error, set5_crops, shared_path
from typer.testing import CliRunner

from mcir_cli import __version__
from mcir_cli.cli import app

runner = CliRunner()


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and f"mcir {__version__}" in res.output


def test_help_shows_the_defaults():
    """Rich used to eat '[default]' as markup: every default must be visible."""
    res = runner.invoke(app, ["retrain", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    assert "(default: 1000; from scratch: the preset's)" in res.output
    assert "(default: preset or the paper's 1e-4)" in res.output


@pytest.mark.parametrize("content", [b"hello\n", b"this is not a checkpoint\n", b"\x80\x02garbage"])
def test_garbage_checkpoint_is_one_line(tmp_path, content):
    bad = tmp_path / "model.pth"
    bad.write_bytes(content)
    out = one_line_error(runner.invoke(app, ["models", "inspect", str(bad)]))
    assert str(bad) in out and "not a torch checkpoint" in out


def _set5():
    return shared_path("data", "sr", "Set5")


@pytest.mark.parametrize("args, message", [
    (["--crop-border", "-1"], "--crop-border must be >= 0"),
    (["--crop-border", "5000"], "cannot score with"),
    (["--tile", "64", "--tile-overlap", "-1"], "--tile-overlap must be >= 0"),
    (["--tile", "0"], "--tile must be at least 8"),
    (["--task", "foo"], "--task must be one of"),
    (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--amp", "xyz"], "--amp must be bf16 or fp32"),
    (["--noise-sigma", "nan"], "--noise-sigma must be a number >= 0"),
])
def test_evaluate_bad_flags_are_one_line(imdn, args, message):
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(imdn), "--data", str(_set5()), "--device", "cpu", *args])
    assert message in one_line_error(res)


def test_outputs_are_checked_before_any_work(imdn, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["evaluate", "--checkpoint", str(imdn), "--data", str(_set5()), "--device", "cpu"]
    out = one_line_error(runner.invoke(app, [*base, "-o", str(a_file / "r.json")]))
    assert "is not a folder" in out
    out = one_line_error(runner.invoke(app, [*base, "--save-images", str(a_file)]))
    assert "must be a folder" in out
    if os.geteuid() != 0:  # root writes anywhere; the probe is exercised on /proc below
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        one_line_error(runner.invoke(app, [*base, "-o", str(locked / "r.json")]))
    if os.path.isdir("/proc"):
        out = one_line_error(runner.invoke(app, [*base, "-o", "/proc/mcir-results.json"]))
        assert "cannot write the results" in out
    out = one_line_error(runner.invoke(app, ["compare", "--checkpoint", str(imdn), "--checkpoint", str(imdn),
                                              "--data", str(_set5()), "--csv", str(a_file / "x.csv")]))
    assert "--csv file" in out



def test_outputs_inside_a_benchmark_folder_are_refused(imdn, tmp_path):
    """--save-images and --visuals inside the --data folder would add images to the
    benchmark: refused in one line, nothing written there (as restore refuses it)."""
    import shutil

    bench = tmp_path / "Set5"
    shutil.copytree(_set5(), bench)
    before = sorted(p.relative_to(bench) for p in bench.rglob("*"))
    out = one_line_error(runner.invoke(app, ["evaluate", "--checkpoint", str(imdn), "--data", str(bench),
                                              "--device", "cpu", "--save-images", str(bench / "HR" / "out")]))
    assert "--save-images folder is inside the input folder" in out
    out = one_line_error(runner.invoke(app, ["compare", "--checkpoint", str(imdn), "--checkpoint", str(imdn),
                                              "--data", str(bench), "--device", "cpu", "--visuals", str(bench / "vis")]))
    assert "--visuals folder is inside the input folder" in out
    assert sorted(p.relative_to(bench) for p in bench.rglob("*")) == before


def test_new_files_are_readable_by_others(tmp_path):
    """mkstemp makes 0600 files: results and weights must get the umask's mode."""
    from mcir_cli._helpers.fsutil import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("args, message", [
    (["evaluate", "--bogus"], "error: No such option: --bogus (see "),
    (["retrain", "--iters", "abc"], "error: Invalid value for '--iters'"),
    (["evaluate", "--bicubic", "--data", "Set5", "--scale", "0"], "error: Invalid value for '--scale'"),
])
def test_usage_errors_are_one_line_from_the_real_entry_point(args, message):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mcir_cli", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith(message) and "\n" not in err and "╭" not in err, err
    assert err.endswith(f"{args[0]} --help)")


def test_a_task_the_model_contradicts_is_refused(imdn, tmp_path):
    """--task sets the scoring convention: it must not silently contradict the model."""
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(imdn), "--data", str(_set5()), "--task", "dehaze"])
    assert "--task dehaze for an x4 super-resolution model" in one_line_error(res)
    aod = shared_path("weights", "AODNet", "dehazer.pth")
    sots = shared_path("data", "dehaze", "SOTS_indoor_subset10")
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(aod), "--data", str(sots), "--task", "sr"])
    assert "--task sr for a model that does not upscale" in one_line_error(res)
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(_set5()), "--task", "dehaze",
                              "--output", str(tmp_path / "run"), "--iters", "1"])
    assert "--task dehaze for an x4" in one_line_error(res)
    assert not (tmp_path / "run").exists()


def test_retrain_without_output_writes_a_new_dated_run_folder_and_says_so(tmp_path, monkeypatch):
    import re
    from datetime import datetime

    import torch

    from mcir_cli.models.archs import BUILDERS
    from mcir_cli.train.rundir import default_run_folder

    ckpt = tmp_path / "EDSR" / "X4.pth"  # a stem that names only the scale: the folder names the run
    ckpt.parent.mkdir()
    torch.save(BUILDERS["EDSR"](scale=4, n_resblocks=1, n_feats=8).state_dict(), ckpt)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["retrain", "--checkpoint", str(ckpt), "--data", str(_set5()), "--iters", "1",
                              "--batch", "1", "--patch", "12", "--embedding", "pixel", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"EDSR-X4-\d{8}-\d{6}", run.name) and (run / "model.safetensors").is_file()
    assert f"no --output: the run folder will be {run}" in " ".join(res.output.split())
    # the name: preset, else the checkpoint's label; a folder of that second gets -2
    now = datetime(2026, 12, 3, 16, 18, 0)
    first = default_run_folder(None, "/w/DCTLSA/X4.pt", now, tmp_path)
    assert first == tmp_path / "runs" / "DCTLSA-X4-20261203-161800"
    first.mkdir(parents=True)
    assert default_run_folder(None, "/w/DCTLSA/X4.pt", now, tmp_path).name == "DCTLSA-X4-20261203-161800-2"
    assert default_run_folder("swinir-light", None, now, tmp_path).name == "swinir-light-20261203-161800"


def test_a_library_warning_is_one_line_without_source_location(imdn, tmp_path):
    """An RGBA ground truth: its alpha is dropped with a warning, said as mcir's other
    notes are ("warning: ..."), not as Python's `file:line: UserWarning` with a code line."""
    root = set5_crops(tmp_path / "bench", ("bird",), 48)
    hr = Image.open(root / "HR" / "bird.png").convert("RGBA")
    alpha = np.full((48, 48), 255, np.uint8)
    alpha[:8] = 0  # real transparency: an opaque alpha is dropped silently
    hr.putalpha(Image.fromarray(alpha))
    hr.save(root / "HR" / "bird.png")
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(imdn), "--data", str(root), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "warning:" in res.output and "bird.png: alpha channel dropped" in res.output
    assert "UserWarning" not in res.output and "warnings.warn" not in res.output
