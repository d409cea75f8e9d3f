"""JPEG artifact removal end to end on CPU: a tiny DnCNN (spandrel's class) retrained with
`--task jpeg` on real photos, then evaluate, compare and study on real LIVE1 crops at
several qualities."""

from __future__ import annotations

from pathlib import Path

import torch
from typer.testing import CliRunner

from mcir_cli.cli import app
from mcir_cli.data.imageio import read_image, write_image
from tests.conftest import shared_path

runner = CliRunner()


def tiny_dncnn(tmp: Path) -> Path:
    """The real DnCNN class (spandrel's; DnCNN-3 removes JPEG artifacts), narrow, colour."""
    from spandrel.architectures.DnCNN import DnCNN

    torch.manual_seed(0)
    path = tmp / "dncnn_tiny.pth"
    torch.save(DnCNN(in_nc=3, out_nc=3, nc=16, nb=8, act_mode="R").state_dict(), path)
    return path


def _ok(args: list[str]) -> str:
    res = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def test_retrain_evaluate_compare_study(tmp_path, live1_crops):
    import json

    ckpt = tiny_dncnn(tmp_path)
    train = str(shared_path("data", "train", "SunHays80_color_subset20"))
    bench = str(live1_crops)
    run = tmp_path / "run"
    _ok(["retrain", "--checkpoint", str(ckpt), "--data", train, "--val", bench, "--task", "jpeg",
         "--jpeg-quality", "10-40", "--iters", "2", "--batch", "2", "--patch", "32", "--embedding", "pixel",
         "--lambda", "1e-2", "--cache", "off", "--device", "cpu", "-o", str(run)])
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert (cfg["task"], cfg["jpeg_quality"]) == ("jpeg", "10-40")
    val = json.loads((run / "val.json").read_text())
    assert list(val["data"]) == ["LIVE1crops/q10"] and val["conventions"]["psnrb"]  # a range validates at its low end
    out = _ok(["evaluate", "--checkpoint", str(run / "model.safetensors"), "--data", bench, "--jpeg-quality", "10,20",
               "--device", "cpu", "-o", str(tmp_path / "new.json")])
    assert "PSNR-B" in out and "LIVE1crops/q20" in out and "grey images: their stored grey values" in out
    new = json.loads((tmp_path / "new.json").read_text())
    assert set(new["datasets"]) == {"LIVE1crops/q10", "LIVE1crops/q20"} and new["jpeg"]["qualities"] == [10, 20]
    assert all("psnrb" in img for d in new["datasets"].values() for img in d["images"])
    _ok(["evaluate", "--checkpoint", str(ckpt), "--data", bench, "--jpeg-quality", "10,20", "--device", "cpu",
         "-o", str(tmp_path / "start.json")])
    _ok(["compare", str(tmp_path / "start.json"), str(tmp_path / "new.json"), "--json", str(tmp_path / "c.json"),
         "--visuals", str(tmp_path / "vis")])
    comparison = json.loads((tmp_path / "c.json").read_text())
    assert "LIVE1crops/q20" in json.dumps(comparison)
    assert any((tmp_path / "vis").rglob("*.png"))  # strips re-made from the q-th compressed inputs
    study, small = tmp_path / "study", tmp_path / "train"
    for path in sorted(Path(train).glob("*.jpg"))[:3]:  # 96x96 crops: the study decodes its data once per run
        write_image(small / f"{path.stem}.png", read_image(path)[:, :96, :96])
    _ok(["study", "--checkpoint", str(ckpt), "--data", str(small), "--benchmark", bench, "--task", "jpeg",
         "--jpeg-quality", "10", "--arm", "plain", "--arm", "px:embedding=pixel", "--seeds", "0", "--iters", "2",
         "--batch", "1", "--patch", "32", "--device", "cpu", "-o", str(study)])
    summary = json.loads((study / "study.json").read_text())
    assert "LIVE1crops/q10" in summary["deltas"]["px"]["datasets"]
