"""`mcir study` end to end on a real checkpoint, tiny: every arm trained and scored, the
statistics paired over images and seeds, and an interrupted study resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.compare.study_results import NO_PAIRS
from mcir_cli.errors import McirError
from mcir_cli.workflows.study import StudyPlan, parse_arm, plan_paths, run_study
from tests.conftest import set5_crops, shared_path

runner = CliRunner()


def _plan(out: Path, train: Path, set5_bench: Path, **kw) -> StudyPlan:
    paths = plan_paths(out, [train], [set5_bench],
                       shared_path("weights", "IMDN", "IMDN_x4.pth"))
    base = dict(arms=[parse_arm("plain"), parse_arm("mcir")], seeds=[0, 1], iters=2,
                common={"batch": 1, "patch": 12, "embedding": "pixel", "lam": 1e-2}, device="cpu")
    base.update(kw)
    return StudyPlan(**paths, **base)


def test_study_cli_end_to_end(train_crops, set5_bench, tmp_path):
    out = tmp_path / "study"
    res = runner.invoke(app, [
        "study", "--checkpoint", str(shared_path("weights", "IMDN", "IMDN_x4.pth")),
        "--data", str(train_crops), "--benchmark", str(set5_bench),
        "--arm", "plain", "--arm", "mcir-paper", "--arm", "lam:lam=1e-3,negative_steps=1/2",
        "--seeds", "0,1", "--iters", "2", "--batch", "1", "--patch", "12", "--embedding-init", "random",
        "--device", "cpu", "-o", str(out),
    ])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "study.json").read_text())
    assert list(summary["table"]) == ["start", "plain", "mcir-paper", "lam"]
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["lam-s0", "lam-s1", "mcir-paper-s0", "mcir-paper-s1", "plain-s0", "plain-s1"]
    lam_cfg = json.loads((out / "runs" / "lam-s1" / "config.json").read_text())["config"]
    assert (lam_cfg["lam"], lam_cfg["negative_steps"], lam_cfg["seed"], lam_cfg["iters"]) == (1e-3, [1, 2], 1, 2)
    paper_cfg = json.loads((out / "runs" / "mcir-paper-s0" / "config.json").read_text())["config"]
    assert (paper_cfg["negative_init"], paper_cfg["negative_steps"]) == ("mix", [100, 500, 1000, 2000])
    # the Δ of an arm is its per-image PSNR minus plain's, seed by seed
    res_lam = json.loads((out / "results" / "lam-s1.json").read_text())["datasets"]["Set5crops"]["images"]
    res_plain = json.loads((out / "results" / "plain-s1.json").read_text())["datasets"]["Set5crops"]["images"]
    d = summary["deltas"]["lam"]["datasets"]["Set5crops"]
    want = np.mean([a["psnr"] - b["psnr"] for a, b in zip(res_lam, res_plain)])
    assert d["per_seed"][1] == pytest.approx(want, abs=1e-12) and d["images"] == 3 and d["seeds"] == 2
    md = (out / "study.md").read_text()
    assert "| start |" in md and "Y channel" in md and "seeds better" in md
    assert "lam on Set5crops" in " ".join(res.output.split())
    _check_report(out, summary, tmp_path)


def _check_report(out: Path, summary: dict, tmp_path: Path) -> None:
    """report.html in a real browser: no console output, every image decoded, the DOM's
    numbers those of study.json, the curves of all six runs."""
    from tests.browser import parsed, render

    rendered = render(out / "report.html", tmp_path / "browser")
    assert rendered.console == []
    dom = parsed(rendered.dom)
    assert dom.body["data-probe-images-ok"] == "true" and dom.body["data-probe-overflow"] == "false"
    # a Δ chart per arm (2) and one figure of curves
    assert int(dom.body["data-probe-images"]) == 3
    seen = 0
    for c in dom.cells:
        if c["kind"] == "study-score":
            row = summary["table"][c["model"]][c["column"]]
            digits = 2 if c["metric"] == "psnr" else 4
            assert c["text"].split(" ± ")[0] == f"{row[c['metric']]:.{digits}f}", c
            seen += 1
        elif c["kind"] == "study-delta":
            assert c["text"] == f"{summary['deltas'][c['model']]['datasets'][c['column']]['mean']:+.4f}", c
            seen += 1
    assert seen == 4 * 2 + 2  # 4 rows x (PSNR, SSIM) on one dataset; 2 arms' Δ


def test_interrupted_study_resumes_without_redoing_finished_arms(train_crops, set5_bench, tmp_path):
    straight = run_study(_plan(tmp_path / "a", train_crops, set5_bench))
    plan = _plan(tmp_path / "b", train_crops, set5_bench)

    def stop_in_third_run(name: str, step: int) -> None:
        if name == "plain-s1":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(plan, on_step=stop_in_third_run)
    results = tmp_path / "b" / "results"
    done = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    assert set(done) == {"start.json", "plain-s0.json", "mcir-s0.json"}
    events: list[str] = []
    resumed = run_study(plan, on_event=lambda name, i, n: events.append(name), resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json") if p.name in done} == done
    assert events == ["plain-s0", "mcir-s0", "plain-s1", "mcir-s1", "summary"]
    assert resumed["table"] == straight["table"]  # the same numbers as a study never stopped
    with pytest.raises(McirError, match="other settings"):
        run_study(_plan(tmp_path / "b", train_crops, set5_bench, iters=3), resume=True)
    with pytest.raises(McirError, match="study folder exists"):
        run_study(plan)


def test_arms_and_plans_are_checked():
    assert parse_arm("lam:lambda=1e-3,negative_init=mix").settings == {"lam": 1e-3, "negative_init": "mix"}
    for bad, msg in (("foo", "not built in"), ("x:seed=1", "key=value with a key among"), ("x:lam=big", "not a number")):
        with pytest.raises(McirError, match=msg):
            parse_arm(bad)
    with pytest.raises(McirError, match="needs the 'plain' arm"):
        StudyPlan(output="o", data=["d"], benchmarks=["b"], arms=[parse_arm("mcir"), parse_arm("mcir-paper")])


def test_bad_study_input_is_refused_before_any_work(train_crops, set5_bench, tmp_path):
    for arm, msg in (("x:lam=-1", "--arm x: --lambda must be a number >= 0"),
                     ("x:negative_init=bogus", "--arm x: --negative-init must be one of"),
                     ("x:lam_auto=maybe", "lam_auto='maybe' is not true or false"),
                     ("x:lam=1e-3,lam=2e-3", "lam is given twice")):
        with pytest.raises(McirError, match=msg):
            run_study(_plan(tmp_path / "s", train_crops, set5_bench, arms=[parse_arm("plain"), parse_arm(arm)]))
        assert not (tmp_path / "s").exists()
    with pytest.raises(McirError, match="--benchmark: folder not found"):
        run_study(_plan(tmp_path / "s", train_crops, tmp_path / "nosuch"))
    assert not (tmp_path / "s").exists()
    (tmp_path / "empty").mkdir()  # found only when the start row is scored: the new folder goes again
    with pytest.raises(McirError):
        run_study(_plan(tmp_path / "s", train_crops, tmp_path / "empty"))
    assert not (tmp_path / "s").exists()
    res = runner.invoke(app, ["study", "--resume", str(tmp_path / "s"), "--iters", "5"])
    assert res.exit_code == 2 and "(remove --iters)" in res.output
    common = ["study", "--data", str(shared_path("data", "train", "SunHays80_color_subset20")), "--benchmark",
              str(set5_bench), "--from-scratch", "-o", str(tmp_path / "s")]
    for extra, msg in (([], "--from-scratch needs --model PRESET"),
                       (["--model", "imdn-x4", "--checkpoint", str(shared_path("weights", "IMDN", "IMDN_x4.pth"))],
                        "drop --checkpoint"),
                       (["--model", "imdn-x4", "--val-every", "5000"], "--val-every must be between 0 and"),
                       (["--model", "imdn-x4", "--benchmark", str(shared_path("data", "train"))],  # holds --data
                        "--benchmark overlaps --data")):
        res = runner.invoke(app, common + extra)
        assert res.exit_code == 2 and msg in res.output and len(res.output.strip().splitlines()) == 1, res.output
        assert not (tmp_path / "s").exists()


def test_from_scratch_ignores_pretrained_weights_in_mcir_weights(monkeypatch):
    """`--from-scratch` means random weights even when $MCIR_WEIGHTS holds the preset's
    pretrained file (it used to load it while applying the from-scratch recipe)."""
    from mcir_cli.models.checkpoint import read_checkpoint
    from mcir_cli.models.loading import load_model

    monkeypatch.setenv("MCIR_WEIGHTS", str(shared_path("weights")))
    pretrained = read_checkpoint(shared_path("weights", "IMDN", "IMDN_x4.pth")).state_dict
    found = load_model(None, "imdn-x4").net.state_dict()
    scratch = load_model(None, "imdn-x4", allow_random=True, seed=0).net.state_dict()
    key = next(k for k in found if k.endswith("weight") and found[k].ndim == 4)
    assert torch.equal(found[key], pretrained[next(k for k in pretrained if k.endswith(key))])
    assert not torch.equal(scratch[key], found[key])
    again = load_model(None, "imdn-x4", allow_random=True, seed=0).net.state_dict()
    assert all(torch.equal(scratch[k], again[k]) for k in scratch)  # seeded


def _scratch_plan(out: Path, train: Path, set5_bench: Path, val: Path, **kw) -> StudyPlan:
    paths = plan_paths(out, [train], [set5_bench], None, [val])
    base = dict(model="imdn-x4", from_scratch=True, arms=[parse_arm("plain"), parse_arm("mcir")], seeds=[0, 1],
                iters=3, val_every=1, common={"batch": 1, "patch": 12, "embedding": "pixel", "lam": 1e-2},
                device="cpu")
    base.update(kw)
    return StudyPlan(**paths, **base)


def test_from_scratch_study_shares_each_seeds_initialisation(train_crops, set5_bench, tmp_path):
    out = tmp_path / "scratch"
    val = set5_crops(tmp_path / "ValCrops", ("baby",), 48)  # the curves' own small folder
    summary = run_study(_scratch_plan(out, train_crops, set5_bench, val))
    inits = sorted(p.name for p in (out / "init").iterdir())
    assert inits == ["s0.safetensors", "s1.safetensors"]
    assert (out / "init" / "s0.safetensors").read_bytes() != (out / "init" / "s1.safetensors").read_bytes()
    for arm in ("plain", "mcir"):
        cfg = json.loads((out / "runs" / f"{arm}-s1" / "config.json").read_text())["config"]
        assert cfg["checkpoint"] == str(out / "init" / "s1.safetensors") and cfg["allow_random_init"]
        assert cfg["val"] == [str(val)] and cfg["val_every"] == 1
        # the recipe's schedule (IMDN: multistep at 200k of 1M steps) scaled to 3 steps
        assert cfg["schedule"] == "multistep" and cfg["milestones"] == [1, 1, 2, 2] and cfg["iters"] == 3
    assert "scaled from 1000000 to 3 steps" in summary["recipe"] and summary["recipe"].endswith("where given, --lr/--schedule/--iters/--warmup as given")
    assert "plain fine-tuning" not in json.dumps(summary["deltas"])  # from scratch, the baseline is plain training
    assert "scaled" in json.loads((out / "plan.json").read_text())["recipe"]
    starts = sorted(p.name for p in (out / "results").glob("start*.json"))
    assert starts == ["start-s0.json", "start-s1.json"]
    s0 = json.loads((out / "results" / "start-s0.json").read_text())["datasets"]["Set5crops"]["psnr"]
    s1 = json.loads((out / "results" / "start-s1.json").read_text())["datasets"]["Set5crops"]["psnr"]
    assert summary["table"]["start"]["Set5crops"]["psnr"] == pytest.approx((s0 + s1) / 2)
    # validation curves: every arm at steps 1..3, mean over both seeds
    for arm in ("plain", "mcir"):
        curve = summary["curves"][arm]
        assert curve["steps"] == [0, 1, 2, 3] and curve["n"] == [2, 2, 2, 3 - 1]
    vals = [json.loads((out / "runs" / f"mcir-s{s}" / "val.json").read_text())["history"] for s in (0, 1)]
    assert summary["curves"]["mcir"]["mean"][2] == pytest.approx((vals[0][2]["psnr"] + vals[1][2]["psnr"]) / 2)
    md = (out / "study.md").read_text()
    assert "each seed's random initialisation" in md and "Validation PSNR (dB) on ValCrops" in md and "Collapses" in md


def test_a_collapse_stops_the_unit_and_leaves_it_out(train_crops, set5_bench, tmp_path):
    """The study's one rule: whichever arm collapses stops there (no arm goes on at a halved
    lr or λ its partner never had); the unit is reported and left out of the Δ statistics;
    a resume scores it as it stopped instead of training it on."""
    plan = _plan(tmp_path / "c", train_crops, set5_bench,
                 arms=[parse_arm("plain"), parse_arm("hot:lam=100,negative_init=mix")], seeds=[0], iters=8)
    summary = run_study(plan)
    unit = summary["units"]["hot-s0"]
    assert unit["collapses"] == 1 and unit["steps"] < 8 and "collapse" in unit["stopped"]
    assert summary["units"]["plain-s0"] == {"steps": 8, "collapses": 0, "stopped": None}
    assert summary["deltas"]["hot"] == {"settings": plan.arms[1].describe(), "seeds_used": [], "datasets": {},
                                        "note": NO_PAIRS}
    md = (tmp_path / "c" / "study.md").read_text()
    assert f"hot-s0: stopped by a collapse at step {unit['steps']}" in md and f"{NO_PAIRS}." in md
    assert "| hot (1 of 1 stopped by a collapse) |" in md
    (tmp_path / "c" / "results" / "hot-s0.json").unlink()
    log_before = (tmp_path / "c" / "runs" / "hot-s0" / "log.jsonl").read_text()
    again = run_study(plan, resume=True)
    assert again["units"]["hot-s0"] == unit
    assert (tmp_path / "c" / "runs" / "hot-s0" / "log.jsonl").read_text() == log_before
