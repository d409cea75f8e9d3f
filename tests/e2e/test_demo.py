"""`mcir demo` on a tiny setting: the whole path runs and leaves every promised file."""

from __future__ import annotations

import inspect
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.workflows.demo import run_demo


def test_demo_tiny(tmp_path, monkeypatch):
    monkeypatch.delenv("MCIR_WEIGHTS", raising=False)  # the from-scratch path, always available
    out = tmp_path / "demo"
    messages = []
    r = run_demo(out, iters=4, device="cpu", batch=2, patch=16, n_train=2, n_test=2,
                 pretrain_iters=4, top_k=1, n_resamples=200,
                 say=lambda m, k: messages.append((k, m)))
    assert not r.pretrained and "from scratch" in r.model
    assert any(k == "warn" and "from scratch" in m for k, m in messages)
    assert len(list((out / "data" / "train").glob("*.png"))) == 2
    assert len(list((out / "data" / "test" / "HR").glob("*.png"))) == 2
    assert len(list((out / "data" / "test" / "LR_bicubic" / "X4").glob("*x4.png"))) == 2
    for name in ("plain", "mcir"):
        assert (out / "runs" / name / "model.safetensors").is_file()
        cfg = json.loads((out / "runs" / name / "config.json").read_text())["config"]
        assert cfg["negative_init"] == ("none" if name == "plain" else "mix")
        assert cfg["seed"] == 0 and cfg["iters"] == 4
    assert r.comparison.models == ["EDSR-small (start)", "plain fine-tuning", "MCIR"]
    assert r.head_to_head.models == ["plain fine-tuning", "MCIR"]
    summary = (out / "summary.md").read_text()
    assert "| Model |" in summary and "MCIR vs plain" in summary and "95 % CI" in summary
    assert json.loads((out / "comparison.json").read_text())["format"] == "mcir.compare/1"
    pngs = [p for p in r.visuals if p.suffix == ".png"]
    assert len(pngs) >= 6  # 2 later models x 1 strip + 2 charts, + head-to-head strip + chart
    for p in pngs:
        assert p.is_file() and p.is_relative_to(out / "visuals")
        with Image.open(p) as img:
            img.verify()
        assert f"]({p.relative_to(out).as_posix()})" in summary
    for label in ("start", "plain", "mcir"):
        assert "data" in json.loads((out / "results" / f"{label}.json").read_text())
    _check_report(r, tmp_path)
    with Image.open(out / "curves.png") as img:
        assert img.size[0] > 400 and len(set(img.convert("RGB").getdata())) > 20


def _check_report(r, tmp_path):
    """report.html renders in a real browser, holds both comparisons as their JSON and the
    curves of both retrains, and names the weak start."""
    from tests.browser import parsed, render

    rendered = render(r.report, tmp_path / "browser")
    assert rendered.console == []
    dom = parsed(rendered.dom)
    # 2 + 1 strips, 2 + 1 Δ charts, 1 figure of curves
    assert dom.body["data-probe-images-ok"] == "true" and int(dom.body["data-probe-images"]) == 7
    main = json.loads((r.output / "comparison.json").read_text())
    cells = [c for c in dom.cells if c["section"] == "main" and c["kind"] == "score" and c["metric"] == "psnr"]
    assert {(c["model"], c["column"]): c["text"] for c in cells} == {
        (m, col): f"{main['table'][m][col]['psnr']:.2f}" for m in main["table"] for col in main["table"][m]}
    assert "MCIR vs plain fine-tuning" in rendered.dom and "How the runs trained" in rendered.dom
    assert "from scratch" in rendered.dom


def test_demo_refuses_an_existing_folder(tmp_path):
    kwargs = {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters else {}
    r = CliRunner(**kwargs).invoke(app, ["demo", "--output", str(tmp_path)])
    assert r.exit_code == 2
    assert "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_ratio_warning_names_a_lambda_to_try(tmp_path):
    """The demo's warning when the MCIR run's ratio left the band: a λ, not a placeholder,
    from each step's ratio over its own λ (the guard may have halved λ mid-run: steps at
    ratio 2e-5 with λ 1e-4 and 1e-5 with λ 5e-5, as the run's TrainResult has them)."""
    from mcir_cli.train.run import TrainResult
    from mcir_cli.workflows.demo import _check_ratio

    run = TrainResult(run_dir=tmp_path, steps=2, mean_ratio=1.5e-5, ratio_per_lambda=0.2)
    notes = []
    assert _check_ratio(run, lambda m, k: notes.append((k, m))) == pytest.approx(1.5e-5)
    ((kind, text),) = notes
    assert kind == "warn" and "(try lam=...)" not in text
    assert "little effect; try λ = 0.2 (--lambda 0.2; mcir's heuristic" in text  # 0.0316 / (l_neg/l_rec 0.2)
