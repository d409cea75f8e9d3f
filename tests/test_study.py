"""`mcir study` end to end on a real checkpoint, tiny: every arm trained and scored, the
statistics paired over images and seeds, and an interrupted study resumed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.errors import McirError
from mcir_cli.study import StudyPlan, parse_arm, plan_paths, run_study
from mcir_cli.study_report import clustered_stats, verdict
from tests.conftest import set5_crops, shared_path

runner = CliRunner()


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """Three 48x48 crops of real Set5 images with MATLAB-bicubic LR: a fast benchmark."""
    return set5_crops(tmp_path_factory.mktemp("bench") / "Set5crops", ("baby", "bird", "butterfly"), 48)


def _plan(out: Path, bench: Path, **kw) -> StudyPlan:
    paths = plan_paths(out, [shared_path("data", "train", "SunHays80_color_subset20")], [bench],
                       shared_path("weights", "IMDN", "IMDN_x4.pth"))
    base = dict(arms=[parse_arm("plain"), parse_arm("mcir")], seeds=[0, 1], iters=2,
                common={"batch": 1, "patch": 12, "embedding": "pixel", "lam": 1e-2}, device="cpu")
    base.update(kw)
    return StudyPlan(**paths, **base)


def test_study_cli_end_to_end(bench, tmp_path):
    out = tmp_path / "study"
    res = runner.invoke(app, [
        "study", "--checkpoint", str(shared_path("weights", "IMDN", "IMDN_x4.pth")),
        "--data", str(shared_path("data", "train", "SunHays80_color_subset20")), "--benchmark", str(bench),
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
    from tests.browser import render
    from tests.test_report import parsed

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


def test_interrupted_study_resumes_without_redoing_finished_arms(bench, tmp_path):
    straight = run_study(_plan(tmp_path / "a", bench))
    plan = _plan(tmp_path / "b", bench)

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
        run_study(_plan(tmp_path / "b", bench, iters=3), resume=True)
    with pytest.raises(McirError, match="study folder exists"):
        run_study(plan)


def test_arms_and_plans_are_checked():
    assert parse_arm("lam:lambda=1e-3,negative_init=mix").settings == {"lam": 1e-3, "negative_init": "mix"}
    for bad, msg in (("foo", "not built in"), ("x:seed=1", "key=value with a key among"), ("x:lam=big", "not a number")):
        with pytest.raises(McirError, match=msg):
            parse_arm(bad)
    with pytest.raises(McirError, match="needs the 'plain' arm"):
        StudyPlan(output="o", data=["d"], benchmarks=["b"], arms=[parse_arm("mcir"), parse_arm("mcir-paper")])


def test_clustered_statistics():
    rng = np.random.default_rng(0)
    better = 0.05 + 0.01 * rng.standard_normal((3, 40))
    s = clustered_stats(better)
    assert s["ci"][0] > 0 and s["p"] < 0.01 and s["seeds_better"] == 3 and s["win_rate"] == 1.0
    assert verdict(s).startswith("better")
    noise = 0.05 * rng.standard_normal((3, 40))
    assert clustered_stats(noise)["ci"][0] < 0 < clustered_stats(noise)["ci"][1]
    assert verdict(clustered_stats(-better)).startswith("worse")
    assert clustered_stats(np.zeros((2, 5)))["p"] == 1.0


def test_bad_study_input_is_refused_before_any_work(bench, tmp_path):
    for arm, msg in (("x:lam=-1", "--arm x: --lambda must be a number >= 0"),
                     ("x:negative_init=bogus", "--arm x: --negative-init must be one of"),
                     ("x:lam_auto=maybe", "lam_auto='maybe' is not true or false"),
                     ("x:lam=1e-3,lam=2e-3", "lam is given twice")):
        with pytest.raises(McirError, match=msg):
            run_study(_plan(tmp_path / "s", bench, arms=[parse_arm("plain"), parse_arm(arm)]))
        assert not (tmp_path / "s").exists()
    with pytest.raises(McirError, match="--benchmark: folder not found"):
        run_study(_plan(tmp_path / "s", tmp_path / "nosuch"))
    assert not (tmp_path / "s").exists()
    res = runner.invoke(app, ["study", "--resume", str(tmp_path / "s"), "--iters", "5"])
    assert res.exit_code == 2 and "(remove --iters)" in res.output
