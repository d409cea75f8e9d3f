"""A study on a cluster: its units run by concurrent shard processes, a shard killed
mid-unit and its unit taken up by a Slurm-style job that is preempted and requeued
(submitit's local executor), giving the figures of one serial process to the bit; and
the bad input of the cluster flags refused in one line with nothing written."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.workflows.study import StudyPlan, create_study, load_plan, parse_arm, plan_paths, run_study
from mcir_cli.workflows.study_units import check_study_folder, study_units, unit_log
from tests.conftest import shared_path

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()
ITERS = 8  # several saved steps: a kill and then a preemption land inside training


def _plan(out: Path, train: Path, set5_bench: Path) -> StudyPlan:
    paths = plan_paths(out, [train], [set5_bench],
                       shared_path("weights", "IMDN", "IMDN_x4.pth"))
    return StudyPlan(**paths, arms=[parse_arm("plain"), parse_arm("mcir")], seeds=[0], iters=ITERS,
                     common={"batch": 1, "patch": 12, "embedding": "pixel", "lam": 1e-2, "save_every": 1},
                     device="cpu")


class _one_thread:
    """torch at one thread here, as in the shard processes (OMP_NUM_THREADS=1): the same
    thread count, the same bits."""

    def __enter__(self) -> None:
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.threads)


def _figures(summary: dict) -> str:
    return json.dumps({k: summary[k] for k in ("table", "deltas", "units")}, sort_keys=True)


@pytest.fixture(scope="module")
def serial(train_crops, set5_bench, tmp_path_factory) -> str:
    """The study's figures from one serial process."""
    with _one_thread():
        return _figures(run_study(_plan(tmp_path_factory.mktemp("serial") / "S", train_crops, set5_bench)))


def _shard(study: Path, shard: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "mcir_cli", "study", "--resume", str(study), "--shard", shard],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path: Path, procs: list, what: str, limit: float = 300.0) -> None:
    t0 = time.monotonic()
    while not path.exists():
        if any(p.poll() is not None for p in procs) or time.monotonic() - t0 > limit:
            outs = [p.communicate()[0] if p.poll() is not None else "(running)" for p in procs]
            pytest.fail(f"{what} never came: {outs}")
        time.sleep(0.02)


def test_shards_a_killed_shard_and_a_preempted_job_give_the_serial_figures(train_crops, set5_bench, serial, tmp_path,
                                                                           monkeypatch):
    """Two concurrent shards; the one inside mcir-s0 is killed (SIGKILL); the unit is
    taken up by a submitted job (submitit's local executor) that is preempted (USR2)
    mid-training, saves, is requeued and resumes; the figures are the serial ones and no
    unit ever ran in two processes at once."""
    pytest.importorskip("submitit")
    from mcir_cli.workflows.study_submit import submit_study

    study = tmp_path / "S"
    create_study(_plan(study, train_crops, set5_bench))
    a, b = _shard(study, "0/2"), _shard(study, "1/2")  # a: start, mcir-s0 first; b: plain-s0 first
    state = study / "runs" / "mcir-s0" / "state.pt"
    _wait_for(state, [a], "a's first saved step of mcir-s0")
    a.send_signal(signal.SIGSTOP)  # a holds mcir-s0 (its lock) while b finishes
    assert not (study / "results" / "mcir-s0.json").exists()
    out_b = b.communicate(timeout=600)[0]
    assert b.returncode == 0 and "still running in other processes:" in out_b and "mcir-s0" in out_b, out_b
    a.send_signal(signal.SIGKILL)
    a.wait()
    killed = state.stat().st_mtime_ns
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the job's environment: this checkout's mcir_cli, one thread
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    [(name, job)] = submit_study(study, "local", gpus_per_unit=0, time_min=60)
    assert name == "mcir-s0"
    t0 = time.monotonic()
    while state.stat().st_mtime_ns == killed:  # the job has resumed and saved a step: it is training
        assert job.state == "RUNNING" and time.monotonic() - t0 < 300, job.stderr()
        time.sleep(0.02)
    os.kill(unit_log(study, name)[-1]["pid"], signal.SIGUSR2)
    assert job.result().startswith("mcir-s0: ran; study complete")
    assert _figures(json.loads((study / "study.json").read_text())) == serial
    logs = {u.name: unit_log(study, u.name) for u in study_units(load_plan(study))}
    events = [(r["event"], r.get("signal")) for r in logs[name]]
    assert events == [("claim", None), ("claim", None), ("stopped", "SIGUSR2"), ("claim", None), ("done", None)]
    pids = [r["pid"] for r in logs[name]]
    assert pids[0] == a.pid and len({pids[0], pids[1], pids[3]}) == 3 and pids[1] == pids[2]
    assert 0 < logs[name][2]["step"] < ITERS
    for unit, records in logs.items():  # each unit finished once, by one claim
        assert [r["event"] for r in records].count("done") == 1, (unit, records)
    assert (logs["start"][-1]["pid"], logs["plain-s0"][-1]["pid"]) == (a.pid, b.pid)  # both shards worked


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_bad_cluster_input_is_one_line_and_writes_nothing(set5_bench, tmp_path):
    study = tmp_path / "S"
    res = runner.invoke(app, [
        "study", "--checkpoint", str(shared_path("weights", "IMDN", "IMDN_x4.pth")),
        "--data", str(shared_path("data", "train", "SunHays80_color_subset20")), "--benchmark", str(set5_bench),
        "--seeds", "0", "--iters", "2", "--embedding-init", "random", "--device", "cpu", "--plan-only", "-o", str(study),
    ])
    assert res.exit_code == 0 and "plan written" in res.output, res.output
    assert sorted(p.name for p in study.iterdir()) == ["plan.json", "results"] and not any((study / "results").iterdir())
    before = _listing(study)
    cases = [(["--shard", "2/2"], "needs 0 <= I < N"), (["--shard", "-1/2"], "must be I/N"),
             (["--shard", "1/0"], "needs 0 <= I < N"), (["--shard", "a/b"], "must be I/N"),
             (["--shard", "0/2", "--submit", "local"], "not both"), (["--submit", "pbs"], "--submit must be one of"),
             (["--slurm-partition", "gpu"], "--slurm-partition needs --submit"),
             (["--submit", "local", "--time", "soon"], "--time must be a Slurm time"),
             (["--shard", "0/1", "--iters", "5"], "(remove --iters)")]
    for extra, msg in cases:
        res = runner.invoke(app, ["study", "--resume", str(study), *extra])
        assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1, (extra, res.output)
    assert _listing(study) == before
    res = runner.invoke(app, ["study", "--shard", "0/2", "-o", str(tmp_path / "new")])
    assert res.exit_code == 2 and "--plan-only -o S" in res.output and not (tmp_path / "new").exists()
    # a plan that does not match its folder: plan.json copied into another folder
    other = tmp_path / "copy"
    other.mkdir()
    shutil.copy(study / "plan.json", other / "plan.json")
    for argv in (["--resume", str(other), "--shard", "0/1"], ["--resume", str(other)]):
        res = runner.invoke(app, ["study", *argv])
        assert res.exit_code == 2 and "belongs to the study folder" in res.output, res.output
    assert sorted(p.name for p in other.iterdir()) == ["plan.json"]
    # a unit folder from another study, and a result that is no unit of the plan
    run = study / "runs" / "plain-s0"
    run.mkdir(parents=True)
    cfg = load_plan(study).config(parse_arm("plain"), 0).to_json()
    (run / "config.json").write_text(json.dumps({"config": {**cfg, "lr": 1.0, "output": "/elsewhere/plain-s0"}}))
    before = _listing(study)
    res = runner.invoke(app, ["study", "--resume", str(study), "--shard", "0/1"])
    assert res.exit_code == 2 and "config.json: this run folder is not the plan's plain-s0" in res.output
    assert "lr, output differ" in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert _listing(study) == before
    # the same unit as an older mcir wrote it: only the prose of its recipe note differs
    (run / "config.json").write_text(json.dumps({"config": {**cfg, "recipe_note": "worded otherwise"}}))
    check_study_folder(load_plan(study))
    shutil.rmtree(study / "runs")
    (study / "results" / "foo-s9.json").write_text("{}")
    before = _listing(study)
    res = runner.invoke(app, ["study", "--resume", str(study)])
    assert res.exit_code == 2 and "foo-s9.json: not a unit of this study's plan" in res.output, res.output
    assert _listing(study) == before
