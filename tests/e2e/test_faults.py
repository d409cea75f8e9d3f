"""Crash safety to the last byte: a real `mcir retrain` killed with SIGKILL at every file
write it makes (halfway through the temp file; and after the last rename), then resumed,
ends with the same bytes as a run never killed; no half-written file ever replaces a good
one, and no temp file survives. Deterministic: the kill is triggered by the N-th write,
not by a timer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import set5_crops, shared_path

# counts mcir's atomic publishes (every write goes through fsutil.atomic_write: temp file,
# fsync, os.replace) and SIGKILLs itself at the N-th: "during" after half the temp file
# is on disk, "after" once it replaced the old file
DRIVER = r'''
import os, signal, sys
import mcir_cli._helpers.fsutil as fs
at, phase, seen = int(os.environ["KILL_AT"]), os.environ["KILL_PHASE"], [0]
real_fsync, real_replace = fs._fsync, os.replace

def fsync(path):
    seen[0] += 1
    if seen[0] == at and phase == "during":
        size = os.path.getsize(path)
        os.truncate(path, size // 2)
        os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(path)

def replace(src, dst):
    real_replace(src, dst)
    if seen[0] == at and phase == "after" and str(src).endswith(".tmp"):
        os.kill(os.getpid(), signal.SIGKILL)

fs._fsync, os.replace = fsync, replace
from mcir_cli.cli import main
sys.argv = ["mcir"] + sys.argv[1:]
try:
    main()
finally:
    with open(os.environ["WRITES_FILE"], "w") as fh:
        fh.write(str(seen[0]))
'''

COMPARED = ("model.safetensors", "model.pth", "best.safetensors", "best.pth", "state.pt")


def _args(run: Path, data: Path, val: Path) -> list[str]:
    return ["retrain", "--checkpoint", str(shared_path("weights", "IMDN", "IMDN_x4.pth")),
            "--data", str(data), "--val", str(val),
            "--output", str(run), "--iters", "3", "--save-every", "2", "--batch", "1", "--patch", "12",
            "--embedding", "pixel", "--negative-steps", "1,2", "--device", "cpu"]


def _mcir(driver: Path, args: list[str], writes: Path, at: int = 0, phase: str = "none") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT": str(at), "KILL_PHASE": phase, "WRITES_FILE": str(writes),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(driver), *args], env=env, capture_output=True, text=True, timeout=300)


def _complete(run: Path) -> None:
    """Every file the run folder shows is whole (loads), whatever moment the kill hit."""
    from safetensors.torch import load_file

    for p in run.iterdir():
        if p.name.endswith(".tmp"):
            continue
        if p.suffix == ".safetensors":
            load_file(p)
        elif p.suffix in (".pt", ".pth"):
            torch.load(p, weights_only=True)
        elif p.suffix == ".json":
            json.loads(p.read_text())


@pytest.fixture(scope="module")
def val(tmp_path_factory) -> Path:
    return set5_crops(tmp_path_factory.mktemp("val"), ("bird",), 48)


def _kill_and_resume(driver: Path, data: Path, val: Path, tmp: Path, at: int, phase: str, want: dict,
                     want_val: dict) -> None:
    run = tmp / f"k{at}{phase}"
    writes = tmp / f"writes-{at}{phase}"
    killed = _mcir(driver, _args(run, data, val), writes, at, phase)
    assert killed.returncode == -signal.SIGKILL, (at, phase, killed.stderr[-1500:])
    if run.exists():
        _complete(run)
    # what the user does next: resume, or (nothing saved yet) the same command again
    again = ["retrain", "--resume", str(run)] if (run / "config.json").exists() else _args(run, data, val)
    res = _mcir(driver, again, writes)
    assert res.returncode == 0, (at, phase, res.stderr[-1500:])
    got = {n: (run / n).read_bytes() for n in COMPARED}
    assert got == want, (at, phase, [n for n in COMPARED if got[n] != want[n]])
    assert json.loads((run / "val.json").read_text()) == want_val, (at, phase)
    assert not list(run.glob(".*.tmp")), (at, phase)


@pytest.mark.slow
def test_sigkill_at_every_write_then_resume_is_bit_exact(train_crops, val, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    straight = tmp_path / "straight"
    done = _mcir(driver, _args(straight, train_crops, val), tmp_path / "writes")
    assert done.returncode == 0, done.stderr[-2000:]
    writes = int((tmp_path / "writes").read_text())
    assert writes >= 10  # config, val/best at 0, state at 2, state, model, val/best, state at 3
    want = {n: (straight / n).read_bytes() for n in COMPARED}
    want_val = json.loads((straight / "val.json").read_text())
    # killed halfway through write k = after write k-1 plus a torn temp file of k; only the
    # moment after the last write (before the process would exit) needs an "after" kill
    jobs = [(at, "during") for at in range(1, writes + 1)] + [(writes, "after")]
    with ThreadPoolExecutor(max_workers=2) as pool:  # two processes at a time: the 2 cores
        futures = [pool.submit(_kill_and_resume, driver, train_crops, val, tmp_path, at, ph, want, want_val)
                   for at, ph in jobs]
        for job in futures:
            job.result()
