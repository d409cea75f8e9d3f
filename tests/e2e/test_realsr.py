"""Real-world SR (`--degradation realesrgan`) end to end on CPU with real images and a tiny
RRDBNet built from spandrel's own class: degraded benchmark copies, a retrain whose
batches are made on the fly (and resume bit-exactly), evaluate, compare (with and
without ground truth) and a study."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.train.config import load_run_config, make_config
from mcir_cli.train.run import retrain
from mcir_cli.workflows.study import StudyPlan, parse_arm, plan_paths, run_study
from tests.conftest import set5_crops, shared_path

runner = CliRunner()
SMALL = {"crop_pad_size": 48}  # the degraded HR crop (Real-ESRGAN: 400): small for a CPU test


def _basicsr_key(key: str) -> str:
    """spandrel's RRDBNet key (old ESRGAN layout) -> BasicSR's rrdbnet_arch.py name, as
    Real-ESRGAN's released files have them (one RRDB block)."""
    key = re.sub(r"^model\.1\.sub\.0\.RDB(\d)\.conv(\d)\.0\.", r"body.0.rdb\1.conv\2.", key)
    key = re.sub(r"^model\.1\.sub\.1\.", "conv_body.", key)
    for index, name in (("0", "conv_first"), ("3", "conv_up1"), ("6", "conv_up2"), ("8", "conv_hr"), ("10", "conv_last")):
        key = re.sub(rf"^model\.{index}\.", f"{name}.", key)
    return key


@pytest.fixture(scope="module")
def tiny_rrdb(tmp_path_factory) -> Path:
    """RRDBNet x4 from spandrel's ESRGAN class (8 features, 1 block), saved as Real-ESRGAN
    saves RealESRNet_x4plus.pth: BasicSR's key names under `params_ema`."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("rrdb") / "tiny_rrdb.pth"
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
    torch.save({"params_ema": {_basicsr_key(k): v for k, v in net.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def settings_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("deg") / "small.toml"
    path.write_text('[degradation]\ntype = "realesrgan"\ncrop_pad_size = 48\n')
    return path


@pytest.fixture(scope="module")
def degraded(tmp_path_factory) -> Path:
    """Three 64x64 Set5 crops degraded once (seed 0) by `mcir data degrade`."""
    src = set5_crops(tmp_path_factory.mktemp("src") / "Set5crops", ("baby", "bird", "butterfly"), 64)
    out = tmp_path_factory.mktemp("bench") / "Set5-real"
    res = runner.invoke(app, ["data", "degrade", str(src), "-o", str(out), "--scale", "4", "--seed", "0"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # what is degraded: the ground truths, never "bicubic" LR
    assert "the 3 ground-truth images of" in said and "bicubic" not in said
    return out


def _config(start: Path, out: Path, iters: int, **kw):
    return make_config([shared_path("data", "train", "SunHays80_color_subset20")], out, checkpoint=start,
                       iters=iters, batch=2, patch=8, embedding="pixel", lam=1e-2, negative_steps=(1, 2),
                       device="cpu", degradation="realesrgan", degradation_settings=SMALL, **kw)


def test_degraded_copy_is_a_benchmark_made_once(degraded, tmp_path):
    record = json.loads((degraded / "degradation.json").read_text())
    assert record["seed"] == 0 and record["settings"]["jpeg_range"] == [30.0, 95.0]
    assert [i["name"] for i in record["images"]] == ["baby", "bird", "butterfly"]
    lr = sorted((degraded / "LR_realesrgan" / "X4").iterdir())
    assert [p.name for p in lr] == ["babyx4.png", "birdx4.png", "butterflyx4.png"]
    again = tmp_path / "again"
    src = Path(record["source"])
    assert runner.invoke(app, ["data", "degrade", str(src), "-o", str(again), "--seed", "0"]).exit_code == 0
    assert [p.read_bytes() for p in lr] == [p.read_bytes() for p in sorted((again / "LR_realesrgan" / "X4").iterdir())]
    other = tmp_path / "other"
    assert runner.invoke(app, ["data", "degrade", str(src), "-o", str(other), "--seed", "1"]).exit_code == 0
    assert lr[0].read_bytes() != (other / "LR_realesrgan" / "X4" / "babyx4.png").read_bytes()
    res = runner.invoke(app, ["data", "degrade", str(src), "-o", str(other)])  # never overwritten
    assert res.exit_code == 2 and "not empty" in res.output
    before = sorted(p.relative_to(src) for p in src.rglob("*"))
    res = runner.invoke(app, ["data", "degrade", str(src), "-o", str(src / "out")])  # would join its own source
    assert res.exit_code == 2 and "inside the source folder" in res.output
    assert sorted(p.relative_to(src) for p in src.rglob("*")) == before


def test_resume_continues_the_same_degraded_batches(tiny_rrdb, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    retrain(_config(tiny_rrdb, straight, 4))
    retrain(_config(tiny_rrdb, split, 2))
    retrain(load_run_config(split, iters=4), resume=True)
    a = torch.load(straight / "state.pt", weights_only=True)["model"]
    b = torch.load(split / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(v, b[k]) for k, v in a.items())

    def losses(run: Path) -> list[float]:
        lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        return [x["l_rec"] for x in lines if "l_rec" in x]

    assert losses(straight) == losses(split) and len(losses(straight)) == 4
    cfg = json.loads((straight / "config.json").read_text())["config"]
    assert cfg["degradation"] == "realesrgan" and cfg["degradation_settings"]["crop_pad_size"] == 48
    assert cfg["degradation_settings"]["noise_range"] == [1.0, 30.0]  # every setting written out


def test_retrain_evaluate_compare_study(tiny_rrdb, settings_file, degraded, tmp_path):
    run = tmp_path / "run"
    res = runner.invoke(app, [
        "retrain", "--checkpoint", str(tiny_rrdb), "--data", str(shared_path("data", "train", "SunHays80_color_subset20")),
        "--degradation", "realesrgan", "--degradation-config", str(settings_file), "--val", str(degraded),
        "--iters", "2", "--batch", "2", "--patch", "8", "--embedding", "pixel", "--device", "cpu", "-o", str(run)])
    assert res.exit_code == 0, res.output
    written = torch.load(run / "model.pth", weights_only=True)  # in the input's own layout
    assert list(written) == ["params_ema"] and "body.0.rdb1.conv1.weight" in written["params_ema"]
    scored = tmp_path / "retrained.json"
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(run / "model.safetensors"), "--data", str(degraded),
                              "--device", "cpu", "-o", str(scored)])
    assert res.exit_code == 0, res.output
    result = json.loads(scored.read_text())["datasets"]["Set5-real"]
    assert len(result["images"]) == 3 and 0 < result["psnr"] < 60
    res = runner.invoke(app, ["compare", "--checkpoint", str(tiny_rrdb), "--checkpoint", str(run / "model.safetensors"),
                              "--data", str(degraded), "--device", "cpu", "--resamples", "200"])
    assert res.exit_code == 0 and "Set5-real" in res.output, res.output
    visuals = tmp_path / "visuals"
    nogt = ["compare", "--no-gt", "--checkpoint", str(tiny_rrdb), "--checkpoint", str(run / "model.safetensors"),
            "--data", str(degraded / "LR_realesrgan" / "X4"), "--device", "cpu"]
    res = runner.invoke(app, [*nogt, "--visuals", str(visuals)], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "no ground truth: PSNR and SSIM do not exist" in res.output and "dB" not in res.output
    assert sorted(p.name for p in (visuals / "X4").iterdir()) == ["babyx4.png", "birdx4.png", "butterflyx4.png"]
    res = runner.invoke(app, [*nogt, "--visuals", str(tmp_path / "v2"), "--json", str(tmp_path / "c.json")])
    assert res.exit_code == 2 and "no ground truth" in res.output and not (tmp_path / "c.json").exists()
    plan = StudyPlan(**plan_paths(tmp_path / "study", [shared_path("data", "train", "SunHays80_color_subset20")],
                                  [degraded], tiny_rrdb),
                     arms=[parse_arm("plain"), parse_arm("mcir")], seeds=[0], iters=2, device="cpu",
                     common={"batch": 2, "patch": 8, "embedding": "pixel", "lam": 1e-2, "degradation": "realesrgan",
                             "degradation_settings": SMALL})
    run_study(plan)
    summary = json.loads((tmp_path / "study" / "study.json").read_text())
    assert list(summary["table"]) == ["start", "plain", "mcir"]
    assert "Set5-real" in summary["deltas"]["mcir"]["datasets"]
