"""The HTML report (`mcir compare --html`) in a real headless Chromium: a real run (IMDN x4
fine-tuned a few steps on real photos, validated on Set5 crops) compared with its start,
scored on Set5 crops; the page must render (not blank, every inline image decoded, no
horizontal overflow on a phone), log nothing to the console, hold the numbers of the JSON
export, and reach no network."""

from __future__ import annotations

import inspect
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.compare.exports import fmt_dpsnr, fmt_dssim, fmt_psnr, fmt_ssim
from mcir_cli.train.config import TrainConfig
from mcir_cli.train.run import retrain
from tests.browser import parsed, render
from tests.conftest import set5_crops

if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:  # click < 8.2
    runner = CliRunner(mix_stderr=False)
else:
    runner = CliRunner()

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(imdn, train_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    crops = set5_crops(root / "set5", ("baby", "bird", "butterfly"), 96)
    run = retrain(TrainConfig(data=[str(train_dir)], output=str(root / "run"), checkpoint=str(imdn), iters=6,
                              batch=1, patch=16, lr=1e-4, negative_steps=(2, 3), embedding="pixel", lam=1e-2,
                              val=(str(crops),), val_every=3, seed=0, device="cpu")).run_dir
    page, cmp_json = root / "report.html", root / "cmp.json"
    r = runner.invoke(app, ["compare", "--checkpoint", str(imdn), "--checkpoint", str(run / "model.safetensors"),
                            "--data", str(crops), "--html", str(page), "--json", str(cmp_json),
                            "--resamples", "500", "--top-k", "2"])
    assert r.exit_code == 0, r.output + r.stderr
    return {"page": page, "json": json.loads(cmp_json.read_text()), "run": run, "root": root,
            "stdout": r.stdout, "rendered": render(page, root / "browser")}


def test_the_page_renders_on_a_phone_without_errors(report):
    rendered = report["rendered"]
    assert rendered.console == []
    dom = parsed(rendered.dom)
    # strips (2) + Δ chart (1) + training curves (1), all decoded, nothing wider than the phone
    assert int(dom.body["data-probe-images"]) >= 4
    assert dom.body["data-probe-images-ok"] == "true"
    assert dom.body["data-probe-overflow"] == "false"
    # charts keep 80 % of their natural size on the phone (scrolling in their own box), not ~55 %
    assert float(dom.body["data-probe-chart-scale"]) >= 0.79
    shot = np.asarray(Image.open(rendered.screenshot).convert("RGB"))
    assert shot.shape[1] == 412
    not_white = (shot < 245).any(axis=2).mean()
    assert not_white > 0.03, f"screenshot nearly blank ({not_white:.1%} non-white)"
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 20


def test_the_numbers_in_the_dom_are_the_json_exports(report):
    data, cells = report["json"], parsed(report["rendered"].dom).cells
    fmt = {("score", "psnr"): fmt_psnr, ("score", "ssim"): fmt_ssim,
           ("delta", "psnr"): fmt_dpsnr, ("delta", "ssim"): fmt_dssim}
    seen = {"score": 0, "delta": 0, "image": 0, "stat": 0}
    for c in cells:
        if c["section"] != "main":
            continue
        kind, metric = c["kind"], c.get("metric")
        if kind in ("score", "delta"):
            table = data["table"] if kind == "score" else data["deltas"]
            assert c["text"] == fmt[(kind, metric)](table[c["model"]][c["column"]][metric]), c
        elif kind == "image":
            img = next(i for i in data["images"][c["column"]] if i["name"] == c["image"])
            assert c["text"] == fmt_psnr(img["psnr"][c["model"]]), c
        elif kind == "stat" and c["field"] == "mean_delta":
            s = next(s for s in data["stats"] if (s["dataset"], s["metric"], s["new_label"])
                     == (c["column"], metric, c["model"]))
            assert c["text"] == (fmt_dpsnr if metric == "psnr" else fmt_dssim)(s["mean_delta"]), c
        else:
            continue
        seen[kind] += 1
    # 2 models x (Set5 + average) x 2 metrics; 1 Δ row; 3 images x 2 models; PSNR + SSIM
    assert seen == {"score": 8, "delta": 4, "image": 6, "stat": 2}
    # the embedded JSON is the export
    embedded = re.search(r'<script type="application/json" class="mcir-data" data-section="main">(.*?)</script>',
                         report["page"].read_text(), re.S)
    assert json.loads(embedded.group(1).replace("<\\/", "</")) == data


def test_the_page_is_self_contained_and_says_its_conventions(report):
    text = report["page"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?https?:""", text)
    dom = parsed(report["rendered"].dom)
    assert dom.imgs and all(src.startswith("data:image/") for src in dom.imgs)
    assert "PSNR/SSIM on Y (BT.601), border 4 px, uint8 (BasicSR)" in report["rendered"].dom
    assert "How the runs trained" in report["rendered"].dom  # the retrained model came from a run folder
    assert str(report["page"]) in report["stdout"]


def test_console_errors_would_be_seen(tmp_path):
    """The harness itself: a page whose script throws is caught (so [] above means none)."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>notDefined();</script></body></html>")
    rendered = render(bad, tmp_path / "b", probe=False)
    assert any("notDefined" in m for m in rendered.console)


def test_an_existing_report_is_never_overwritten(report, imdn):
    before = report["page"].read_bytes()
    r = runner.invoke(app, ["compare", "--checkpoint", str(imdn), "--checkpoint", str(imdn),
                            "--data", str(report["root"] / "set5"), "--html", str(report["page"])])
    assert r.exit_code == 2
    assert "report.html" in r.stderr and "exists" in r.stderr and "Traceback" not in r.stderr
    assert report["page"].read_bytes() == before


def test_html_outputs_are_checked_before_any_work(report, imdn):
    set5 = str(report["root"] / "set5")
    base = ["compare", "--checkpoint", str(imdn), "--checkpoint", str(imdn), "--data", set5]
    out = report["root"] / "checks"
    # --html inside (or equal to) --visuals: refused before scoring, nothing written
    r = runner.invoke(app, [*base, "--visuals", str(out / "vis"), "--html", str(out / "vis" / "r.html"),
                            "--json", str(out / "a.json")])
    assert r.exit_code == 2 and "inside the --visuals folder" in r.stderr
    # a --label count that does not fit: refused before scoring
    r = runner.invoke(app, [*base, "--label", "only-one", "--json", str(out / "a.json")])
    assert r.exit_code == 2 and "--label given 1 time(s) for 2 models" in r.stderr
    assert not (out / "a.json").exists()
    # a new folder for --html is made, as for every other output; no temporary folder is left
    page = out / "new" / "deeper" / "r.html"
    r = runner.invoke(app, [*base, "--html", str(page), "--resamples", "100", "--top-k", "1"])
    assert r.exit_code == 0, r.output + r.stderr
    assert [p.name for p in page.parent.iterdir()] == ["r.html"]


def test_sigterm_while_the_report_is_made_leaves_no_temporary_folder(report, imdn):
    """SIGTERM (a scheduler's stop) unwinds like Ctrl-C: exit 143, the temporary strips
    folder beside the report removed, no report half written."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = report["root"] / "term"
    out.mkdir()
    page = out / "r.html"
    proc = subprocess.Popen([sys.executable, "-m", "mcir_cli", "compare", "--checkpoint", str(imdn),
                             "--checkpoint", str(report["run"] / "model.safetensors"), "--data",
                             str(report["root"] / "set5"), "--html", str(page), "--resamples", "100"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".r.html.") for p in out.iterdir()) and proc.poll() is None:
        assert time.monotonic() < deadline, "the temporary folder never appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert list(out.iterdir()) == []
