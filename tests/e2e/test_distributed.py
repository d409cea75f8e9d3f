"""torchrun with 2 gloo ranks on CPU, on a real checkpoint (DCTLSA x4)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from mcir_cli.train.config import load_run_config
from mcir_cli.train.run import retrain
from tests.conftest import shared_path


def torchrun(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def test_two_gloo_ranks_stay_identical_and_resume_on_one(tmp_path):
    ckpt = shared_path("weights", "DCTLSA", "X4.pt")
    data = shared_path("data", "train", "SunHays80_color_subset20")
    proc = torchrun([  # no --output: rank 0 names ./runs/<checkpoint>-<date>-<time>/ for both
        "-m", "mcir_cli", "retrain", "--checkpoint", str(ckpt), "--data", str(data),
        "--iters", "4", "--batch", "1", "--patch", "16", "--negative-steps", "2,4",
        "--embedding", "pixel", "--device", "cpu",
    ], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    assert re.fullmatch(r"DCTLSA-X4-\d{8}-\d{6}", run.name), run.name
    assert proc.stderr.count(f"no --output: the run folder will be {run}") == 1  # said once, by rank 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    checks = [r for r in log if r.get("event") == "sync_check"]
    assert checks and checks[-1]["ranks"] == 2
    first, second = checks[-1]["checksums"]
    assert first == second  # target and negatives identical on both ranks
    start = next(r for r in log if r.get("event") == "start")
    assert start["global_batch"] == 2
    # one set of outputs (and one model card), written by rank 0 only
    assert sorted(p.name for p in run.iterdir()) == [
        "README.md", "config.json", "log.jsonl", "model.pth", "model.safetensors", "openmodeldb.json", "state.pt",
    ]
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["samples_seen"] == 8

    # resume the 2-rank run on 1 process: the data position continues at sample 8
    result = retrain(load_run_config(run, iters=6), resume=True)
    assert result.steps == 6
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["world_size"] == 1 and state["samples_seen"] == 8 + 2


DRIFT_SCRIPT = textwrap.dedent(
    """
    import sys, types, torch
    from mcir_cli.train.distributed import DistContext
    from mcir_cli.errors import McirError
    from mcir_cli.models.loading import load_model

    ctx = DistContext.from_env("cpu", sync_every=1)
    model = load_model(sys.argv[1]).restorer
    trainer = types.SimpleNamespace(model=model, bank=None)
    ctx.check_sync(trainer, 1)  # identical weights: passes
    # the numbers and decisions every rank acts on agree (collapse guard, Ctrl-C)
    assert ctx.mean([float(ctx.rank), 2.0]) == [0.5, 2.0]
    assert ctx.any(ctx.rank == 1) is True and ctx.any(False) is False
    assert ctx.agree(f"chosen by rank {ctx.rank}") == "chosen by rank 0"
    print(f"rank {ctx.rank}: agreement ok")
    if ctx.rank == 1:
        with torch.no_grad():
            next(model.parameters()).view(-1)[0] += 1e-3
    try:
        ctx.check_sync(trainer, 2)
    except McirError as exc:
        print(f"rank {ctx.rank}: {exc}")
        ctx.close()
        sys.exit(3)
    ctx.close()
    """
)


def test_perturbed_rank_is_detected(tmp_path):
    ckpt = shared_path("weights", "DCTLSA", "X4.pt")
    script = tmp_path / "drift.py"
    script.write_text(DRIFT_SCRIPT)
    proc = torchrun([str(script), str(ckpt)])
    assert proc.returncode != 0
    assert "rank 0: ranks [1] drifted from rank 0 at step 2" in proc.stdout
    assert "rank 1: ranks [1] drifted" in proc.stdout
    assert "rank 0: agreement ok" in proc.stdout and "rank 1: agreement ok" in proc.stdout
