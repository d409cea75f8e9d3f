"""`mcir compare` end to end on real weights: IMDN x4 vs DCTLSA x4 on Set5.

Each model is evaluated once (module fixture, cached as JSON); the tests then run the
CLI on those JSONs, plus one small `--checkpoint` run (a model against itself on two
Set5 images) for the zero-divergence check.
"""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
from tests.conftest import shared_path
from PIL import Image
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.render.visuals import LABEL_H, SEP, crop_size

if "mix_stderr" in inspect.signature(CliRunner.__init__).parameters:  # click < 8.2
    runner = CliRunner(mix_stderr=False)
else:  # click >= 8.2 keeps stdout and stderr apart already
    runner = CliRunner()


def _strip_size(h: int, w: int, zoom: int = 3) -> tuple[int, int]:
    c = crop_size(h, w)
    return max(5 * w + 4 * SEP, 5 * c * zoom + 4 * SEP), LABEL_H + h + SEP + LABEL_H + c * zoom


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """Set5 x4 results of IMDN (baseline) and DCTLSA, written as `mcir evaluate` does."""
    from mcir_cli.evaluate.benchmarks import Scoring, evaluate_model
    from mcir_cli.models.loading import load_model

    set5 = shared_path("data", "sr", "Set5")
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    dctlsa = shared_path("weights", "DCTLSA", "X4.pt")
    out = tmp_path_factory.mktemp("evaluated")
    paths = {}
    for name, ckpt in (("imdn", imdn), ("dctlsa", dctlsa)):
        res = evaluate_model(load_model(ckpt), [set5], Scoring(device="cpu"))
        paths[name] = out / f"{name}.json"
        paths[name].write_text(json.dumps(res, indent=2))
    return {"set5": set5, "imdn_ckpt": imdn, "dctlsa_ckpt": dctlsa, **paths}


def test_delta_row_is_the_difference_of_the_evaluations(evaluated, tmp_path):
    out = tmp_path / "cmp.json"
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), str(evaluated["dctlsa"]),
                            "--json", str(out), "--resamples", "500"])
    assert r.exit_code == 0, r.output
    a = json.loads(evaluated["imdn"].read_text())
    b = json.loads(evaluated["dctlsa"].read_text())
    assert "data" in a and a["data"]["Set5"] == str(evaluated["set5"].resolve())
    comp = json.loads(out.read_text())
    base, new = comp["models"][0]["label"], comp["models"][1]["label"]
    assert (base, new) == ("IMDN_x4", "DCTLSA/X4")  # a stem naming only the scale gets its folder
    delta = comp["deltas"][new]["Set5"]
    assert delta["psnr"] == pytest.approx(b["datasets"]["Set5"]["psnr"] - a["datasets"]["Set5"]["psnr"], abs=1e-9)
    assert delta["ssim"] == pytest.approx(b["datasets"]["Set5"]["ssim"] - a["datasets"]["Set5"]["ssim"], abs=1e-9)
    # the printed table carries the same Δ (2 decimals), the verdict names the dataset
    shown = f"{b['datasets']['Set5']['psnr'] - a['datasets']['Set5']['psnr']:+.2f}"
    assert shown in r.stdout
    assert "Set5: " in r.stdout and "95 % CI" in r.stdout
    # DCTLSA is published ~0.3 dB above IMDN on Set5 x4
    assert delta["psnr"] > 0


def test_visuals_from_jsons(evaluated, tmp_path):
    vis = tmp_path / "vis"
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), str(evaluated["dctlsa"]),
                            "--visuals", str(vis), "--top-k", "2", "--resamples", "200"])
    assert r.exit_code == 0, r.output + r.stderr
    strips = sorted((vis / "Set5").glob("*.png"))
    assert len(strips) == 2
    res = json.loads(evaluated["imdn"].read_text())
    deltas = {}
    res_b = json.loads(evaluated["dctlsa"].read_text())
    for x, y in zip(res["datasets"]["Set5"]["images"], res_b["datasets"]["Set5"]["images"]):
        deltas[x["name"]] = abs(y["psnr"] - x["psnr"])
    expected = sorted(deltas, key=lambda n: -deltas[n])[:2]
    assert sorted(p.stem for p in strips) == sorted(expected)
    for p in strips:
        with Image.open(p) as img:
            img.verify()
        with Image.open(p) as img, Image.open(evaluated["set5"] / "HR" / f"{p.stem}.png") as gt:
            w, h = gt.size
            assert img.format == "PNG" and img.mode == "RGB"
            assert img.size == _strip_size(h, w)
    chart = vis / "delta_psnr_Set5.png"
    with Image.open(chart) as img:
        assert img.size == (720, 360)


def test_identical_checkpoints_have_zero_divergence(evaluated, tmp_path):
    # two small Set5 images, so that evaluating twice stays cheap
    data = tmp_path / "Set5mini"
    for sub, suffix in (("HR", ""), ("LR_bicubic/X4", "x4")):
        (data / sub).mkdir(parents=True)
        for name in ("bird", "butterfly"):
            shutil.copy(evaluated["set5"] / sub / f"{name}{suffix}.png", data / sub)
    vis = tmp_path / "vis"
    ckpt = str(evaluated["dctlsa_ckpt"])
    r = runner.invoke(app, ["compare", "--checkpoint", ckpt, "--checkpoint", ckpt, "--data", str(data),
                            "--visuals", str(vis), "--top-k", "1", "--device", "cpu", "--resamples", "100"])
    assert r.exit_code == 0, r.output + r.stderr
    assert "identical scores on all 2 images" in r.stdout
    strips = list((vis / "Set5mini").glob("*.png"))
    assert len(strips) == 1
    with Image.open(strips[0]) as img:
        arr = np.asarray(img.convert("RGB"))
    with Image.open(data / "HR" / f"{strips[0].stem}.png") as gt:
        w, h = gt.size
    heat = arr[LABEL_H : LABEL_H + h, 4 * (w + SEP) : 4 * (w + SEP) + w].reshape(-1, 3)
    # every heat-map pixel is black (zero divergence) except the cyan outline of the zoom box
    cyan = (heat == (0, 255, 255)).all(axis=1)
    assert (heat[~cyan] == 0).all()
    assert (~cyan).sum() > 0.9 * h * w


def test_conventions_mismatch_is_refused(evaluated, tmp_path):
    other = json.loads(evaluated["dctlsa"].read_text())
    other["conventions"]["y_channel"] = False
    path = tmp_path / "rgb.json"
    path.write_text(json.dumps(other))
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), str(path)])
    assert r.exit_code == 2
    assert "different conventions" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert r.stdout == ""


def test_existing_export_is_refused(evaluated, tmp_path):
    existing = tmp_path / "report.md"
    existing.write_text("mine")
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), str(evaluated["dctlsa"]),
                            "--markdown", str(existing)])
    assert r.exit_code == 2
    assert "exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert existing.read_text() == "mine"


def test_mixing_jsons_and_checkpoints_is_refused(evaluated):
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), "--checkpoint", str(evaluated["dctlsa_ckpt"])])
    assert r.exit_code == 2 and "not both" in r.stderr
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), str(evaluated["dctlsa"]),
                            "--data", str(evaluated["set5"])])
    assert r.exit_code == 2 and "--data" in r.stderr


def test_missing_checkpoint_fails_visuals_but_keeps_exports(evaluated, tmp_path):
    moved = json.loads(evaluated["dctlsa"].read_text())
    moved["model"]["checkpoint"] = str(tmp_path / "gone.pt")
    path = tmp_path / "moved.json"
    path.write_text(json.dumps(moved))
    vis = tmp_path / "vis"
    out = tmp_path / "cmp.csv"
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), str(path), "--visuals", str(vis),
                            "--csv", str(out), "--resamples", "100"])
    assert r.exit_code == 2, r.output + r.stderr  # asked-for visuals that were not made
    assert "--visuals could not be made" in r.stderr and "gone.pt" in r.stderr
    assert out.read_text().startswith("dataset,image,")  # the exports are still written


def test_labels_name_the_models(evaluated, tmp_path):
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), str(evaluated["dctlsa"]),
                            "--label", "IMDN (paper)", "--label", "DCTLSA", "--resamples", "100"])
    assert r.exit_code == 0, r.output + r.stderr
    assert "IMDN (paper)" in r.output and "DCTLSA" in r.output
    r = runner.invoke(app, ["compare", str(evaluated["imdn"]), str(evaluated["dctlsa"]), "--label", "one"])
    assert r.exit_code == 2 and "--label given 1 time(s) for 2 models" in r.stderr
