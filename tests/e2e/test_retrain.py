"""`mcir retrain` through the CLI on real checkpoints (DCTLSA x4, IMDN x4) and real photos, on
CPU: the whole command, its run files and presets, one-line errors and exit codes. The loop
itself: tests/train/test_loop.py."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from mcir_cli._helpers.fsutil import sha256_file
from mcir_cli.cli import app
from mcir_cli.data.imageio import read_image, write_image
from mcir_cli.data.resize import imresize
from tests.conftest import read_log, shared_path

runner = CliRunner()


def test_retrain_cli_end_to_end(dctlsa, train_crops, small_val, tmp_path):
    before = sha256_file(dctlsa)
    run = tmp_path / "RUN"
    res = runner.invoke(app, [
        "retrain", "--checkpoint", str(dctlsa), "--data", str(train_crops), "--val", str(small_val),
        "--iters", "8", "--batch", "2", "--patch", "16", "--negative-steps", "2,4,8",
        "--embedding-init", "random", "--device", "cpu", "--output", str(run),
    ])
    assert res.exit_code == 0, res.output
    assert sha256_file(dctlsa) == before  # the input checkpoint is only read
    log = read_log(run)
    steps = [r for r in log if "event" not in r]
    assert [r["step"] for r in steps] == list(range(1, 9))
    for r in steps:
        assert r["ratio"] == pytest.approx(r["lam"] * r["l_neg"] / r["l_rec"])
        assert r["l_neg"] > 0 and math.isfinite(r["grad_norm"])
    updates = [(r["step"], r["index"]) for r in log if r.get("event") == "negative_update"]
    expected = [(t, i) for t in range(1, 9) for i, s in enumerate((2, 4, 8)) if t % s == 0]
    assert updates == expected
    start = next(r for r in log if r.get("event") == "start")
    assert "RANDOM" in start["embedding"] and start["batchnorm_running_stats"] == "frozen"

    import spandrel

    desc = spandrel.ModelLoader().load_from_file(run / "model.pth")
    assert desc.architecture.id == "DCTLSA" and desc.scale == 4
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["architecture"] == "DCTLSA" and json.loads(meta["training"])["steps"] == 8
    val = json.loads((run / "val.json").read_text())
    assert val["history"][-1]["step"] == 8 and val["conventions"]["y_channel"] is True
    # step 0 is the starting checkpoint, scored exactly as `mcir evaluate` scores it
    from mcir_cli.evaluate.benchmarks import Scoring, evaluate_model
    from mcir_cli.models.loading import load_model

    start = evaluate_model(load_model(dctlsa), [small_val], Scoring(device="cpu"))["datasets"][small_val.name]
    assert [h["step"] for h in val["history"]] == [0, 8]
    assert val["history"][0]["psnr"] == pytest.approx(start["psnr"], abs=1e-9)
    assert (run / "best.safetensors").exists()
    best = val["best"]["step"]
    said = "the starting weights: no step beat them" if best == 0 else f"step {best}"
    assert f"dB at {said}" in " ".join(res.output.split())
    assert "best.safetensors" in res.output and "model.pth" in res.output
    mean_ratio = sum(r["ratio"] for r in steps) / len(steps)
    assert log[-1]["event"] == "end" and log[-1]["mean_ratio"] == pytest.approx(mean_ratio)
    assert f"mean {mean_ratio:.2%}" in res.output and "outside mcir's heuristic band" in res.output
    from mcir_cli.train.guard import lambda_for_band

    per_lambda = sum(r["ratio"] / r["lam"] for r in steps) / len(steps)  # the λ to try, from the log
    assert f"try λ = {lambda_for_band(per_lambda, (0.01, 0.10)):g} (--lambda" in " ".join(res.output.split())
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["negative_steps"] == [2, 4, 8] and cfg["model"]["architecture"] == "DCTLSA"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--iters", "0"], "--iters must be at least 1"),
        (["--lambda", "-1"], "--lambda must be a number >= 0"),
        (["--lambda", "nan"], "--lambda must be a number >= 0"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--grad-clip", "-1"], "--grad-clip must be a positive number"),  # would flip the gradient
        (["--negative-mix", "5"], "--negative-mix must be in [0, 1]"),
        (["--noise-sigma", "-25"], "--noise-sigma must be a number >= 0"),
        (["--task", "foo"], "--task must be one of sr, dehaze"),
        (["--patch", "2", "--embedding-init", "random"], "too small for the VGG embedding"),
        (["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N"),
        (["--ratio-band", "abc"], "--ratio-band must be two numbers"),
        (["--channels-last", "maybe"], "--channels-last must be one of auto, on, off"),
        (["--amp", "fp16"], "--amp must be one of"),
        (["--negative-steps", "0,5"], "--negative-steps must be"),
        (["--negative-steps", "a,b"], "--negative-steps must be"),
        (["--patch", "100000"], "no training image is large enough"),
        (["--batch", "1000000"], "for its images alone"),  # refused up front, not in the allocator
        (["--collapse-factor", "0.5"], "--collapse-factor must be above 1"),
        (["--log-every", "0"], "--log-every must be at least 1"),
        (["--ratio-band", "0.1,0.01"], "--ratio-band must be two numbers"),
    ],
)
def test_bad_input_is_one_line(dctlsa, train_dir, tmp_path, args, message):
    run = tmp_path / "RUN"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(dctlsa), "--data", str(train_dir),
                              "--output", str(run), "--device", "cpu", *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not run.exists()


def test_existing_output_and_empty_data_refused(dctlsa, train_dir, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["retrain", "--checkpoint", str(dctlsa), "--data", str(train_dir), "--output", str(existing)])
    assert res.exit_code == 2 and "output folder exists" in res.output
    assert (existing / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["retrain", "--checkpoint", str(dctlsa), "--data", str(empty), "--output", str(tmp_path / "r")])
    assert res.exit_code == 2 and "empty" in res.output


def test_preset_spn_settings_are_the_flag_defaults(dctlsa, train_crops, tmp_path):
    """A user's own preset file: its [spn] values become the run's defaults; flags still win."""
    from mcir_cli.models.presets import presets_dir

    text = (presets_dir() / "dctlsa-x4.toml").read_text()
    spn = "[spn]\nlambda = 2e-4\nweight = 0.2\nsteps = [3, 7]\nembedding = \"pixel\"\nnegative_init = \"copy\"\nnegative_mix = 0.1\n"
    head, rest = text.split("[spn]\n", 1)
    tail = rest[rest.index("\n[") + 1:] if "\n[" in rest else ""
    text = head + spn + tail
    preset = tmp_path / "my-dctlsa.toml"
    preset.write_text(text)
    run = tmp_path / "RUN"
    res = runner.invoke(app, ["retrain", "--model", str(preset), "--checkpoint", str(dctlsa), "--data", str(train_crops),
                              "--iters", "1", "--batch", "1", "--patch", "16", "--negative-weight", "0.3",
                              "--device", "cpu", "--output", str(run)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["lam"] == 2e-4 and cfg["negative_steps"] == [3, 7] and cfg["embedding"] == "pixel"
    assert cfg["negative_init"] == "copy" and cfg["negative_weight"] == 0.3  # the flag wins


def test_cli_exit_code_says_the_run_stopped_early(imdn, train_crops, tmp_path):
    """A run stopped by the collapse guard is not a finished run: exit 1, so that
    `mcir retrain ... && mcir evaluate ...` does not carry on (a signal stop exits 128 + its number: 130, 143)."""
    run = tmp_path / "run"
    res = runner.invoke(app, [
        "retrain", "--checkpoint", str(imdn), "--data", str(train_crops), "--output", str(run),
        "--iters", "20", "--batch", "1", "--patch", "16", "--embedding", "pixel",
        "--negative-steps", "1,2", "--lambda", "1e30", "--device", "cpu",
    ])
    assert res.exit_code == 1, res.output
    assert "stopped after 3 collapses" in res.output and "retrained" not in res.output
    assert (run / "model.safetensors").exists()  # the last good weights are still written


def test_several_validation_folders(imdn, train_crops, small_val, tmp_path):
    """--val twice: each folder scored as `mcir evaluate` scores it; best.* follows the mean
    of the dataset means (how papers average benchmarks)."""
    second = tmp_path / "Second"
    for name in ("butterfly", "head"):
        hr = read_image(shared_path("data", "sr", "Set5", "HR", f"{name}.png"))[:, :64, :64]
        write_image(second / "HR" / f"{name}.png", hr)
        write_image(second / "LR_bicubic" / "X4" / f"{name}x4.png", imresize(hr, 1 / 4))
    run = tmp_path / "run"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(train_crops), "--val", str(small_val),
                              "--val", str(second), "--iters", "2", "--batch", "1", "--patch", "16",
                              "--embedding", "pixel", "--negative-steps", "1,2", "--device", "cpu", "--output", str(run)])
    assert res.exit_code == 0, res.output
    val = json.loads((run / "val.json").read_text())
    assert set(val["data"]) == {small_val.name, "Second"} and "mean of the datasets" in val["psnr_is"]
    from mcir_cli.evaluate.benchmarks import Scoring, evaluate_model
    from mcir_cli.models.loading import load_model

    start = evaluate_model(load_model(imdn), [small_val, second], Scoring(device="cpu"))["datasets"]
    first = val["history"][0]
    assert first["step"] == 0
    for name, scores in first["datasets"].items():
        assert scores["psnr"] == pytest.approx(start[name]["psnr"], abs=1e-9)
    assert first["psnr"] == pytest.approx((start[small_val.name]["psnr"] + start["Second"]["psnr"]) / 2, abs=1e-9)
    assert "mean of" in " ".join(res.output.split())


def test_psnr_loss_runs_200_steps_without_a_false_collapse(imdn, train_crops, tmp_path):
    """NAFNet's PSNR loss is negative: 'l_rec > 10 x median' fired on every step of it."""
    run = tmp_path / "run"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(train_crops), "--output", str(run),
                              "--iters", "200", "--batch", "1", "--patch", "12", "--loss", "psnr",
                              "--negative-init", "none", "--device", "cpu", "--log-every", "10"])
    assert res.exit_code == 0, res.output
    log = read_log(run)
    assert not [r for r in log if r.get("event") == "collapse"]
    assert log[-1]["event"] == "end" and log[-1]["step"] == 200 and log[-1]["collapses"] == 0
    # a plain run's progress shows no contrast ratio or λ (neither acts without negatives)
    line = next(ln for ln in res.output.splitlines() if ln.startswith("retrain 200/200"))
    assert "l_rec" in line and "ratio" not in line and "λ" not in line


def test_lambda_auto_is_refused_with_the_signed_psnr_loss(imdn, train_dir, tmp_path):
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(train_dir), "--output",
                              str(tmp_path / "r"), "--loss", "psnr", "--lambda", "auto", "--device", "cpu"])
    assert res.exit_code == 2 and "the PSNR loss is signed" in res.output
    assert not (tmp_path / "r").exists()


def test_a_run_file_round_trips_a_run(imdn, train_crops, tmp_path):
    """--config A/config.json repeats run A elsewhere: the same configuration and the same
    bytes; a run.toml sets flags by name, and flags on the command line win."""
    a, b = tmp_path / "a", tmp_path / "b"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(train_crops), "--output", str(a),
                              "--iters", "2", "--batch", "1", "--patch", "12", "--embedding", "pixel",
                              "--lambda", "1e-3", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["retrain", "--config", str(a / "config.json"), "--output", str(b)])
    assert res.exit_code == 0, res.output
    ca = json.loads((a / "config.json").read_text())["config"]
    cb = json.loads((b / "config.json").read_text())["config"]
    assert {k: v for k, v in ca.items() if k != "output"} == {k: v for k, v in cb.items() if k != "output"}
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()

    run_toml = tmp_path / "run.toml"
    run_toml.write_text(f'checkpoint = "{imdn}"\ndata = ["{train_crops}"]\niters = 1\nbatch = 1\npatch = 12\n'
                        'embedding = "pixel"\ndevice = "cpu"\n[spn]\nlambda = 2e-3\nsteps = [1, 2]\n')
    res = runner.invoke(app, ["retrain", "--config", str(run_toml), "--output", str(tmp_path / "c"),
                              "--lambda", "5e-3"])
    assert res.exit_code == 0, res.output
    cc = json.loads((tmp_path / "c" / "config.json").read_text())["config"]
    assert (cc["lam"], cc["negative_steps"], cc["iters"]) == (5e-3, [1, 2], 1)
    run_toml.write_text(run_toml.read_text() + "\n[recipe]\nlearning_rate = 1\n")
    res = runner.invoke(app, ["retrain", "--config", str(run_toml), "--output", str(tmp_path / "d")])
    assert res.exit_code == 2 and "unknown key 'learning_rate'" in res.output and "run.toml" in res.output


@pytest.mark.parametrize("line, message", [
    ('iters = "two"', "key 'iters' must be an integer"),
    ('lr = "1e-5"', "key 'lr' must be a number"),
    ("batch = 1.5", "key 'batch' must be an integer"),
    ("train_bn = 1", "key 'train_bn' must be true or false"),
])
def test_a_run_file_with_a_wrong_type_is_one_line(imdn, train_dir, tmp_path, line, message):
    run_toml = tmp_path / "run.toml"
    run_toml.write_text(f'checkpoint = "{imdn}"\ndata = "{train_dir}"\ndevice = "cpu"\n{line}\n')
    res = runner.invoke(app, ["retrain", "--config", str(run_toml), "--output", str(tmp_path / "r")])
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
