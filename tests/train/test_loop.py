"""The loop's guard, data stream and run-folder guarantees on a real checkpoint (IMDN x4)
and real photos, on CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import mcir_cli.train.run as loop
from mcir_cli.cli import app
from mcir_cli.errors import McirError
from mcir_cli.train.config import TrainConfig, load_run_config
from mcir_cli.train.run import Run, retrain
from tests.conftest import set5_crops

runner = CliRunner()


@pytest.fixture(scope="module")
def small_val(tmp_path_factory) -> Path:
    return set5_crops(tmp_path_factory.mktemp("val"), ("baby",), 64)


def config(ckpt: Path, data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=[str(data)], output=str(out), checkpoint=str(ckpt), iters=6, batch=1, patch=16,
                lr=1e-5, negative_steps=(2, 3), embedding="pixel", seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


class Recording:
    """A reconstruction loss that records each call's target batch and poisons chosen calls."""

    def __init__(self, loss, nan_calls=()):
        self.loss, self.nan_calls, self.targets = loss, set(nan_calls), []

    def __call__(self, pred, target):
        self.targets.append(target.detach().clone())
        value = self.loss(pred, target)
        return value * float("nan") if len(self.targets) in self.nan_calls else value


def test_psnr_loss_runs_200_steps_without_a_false_collapse(imdn, train_dir, tmp_path):
    """NAFNet's PSNR loss is negative: 'l_rec > 10 x median' fired on every step of it."""
    run = tmp_path / "run"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(train_dir), "--output", str(run),
                              "--iters", "200", "--batch", "1", "--patch", "12", "--loss", "psnr",
                              "--negative-init", "none", "--device", "cpu", "--log-every", "10"])
    assert res.exit_code == 0, res.output
    log = read_log(run)
    assert not [r for r in log if r.get("event") == "collapse"]
    assert log[-1]["event"] == "end" and log[-1]["step"] == 200 and log[-1]["collapses"] == 0


def test_lambda_auto_is_refused_with_the_signed_psnr_loss(imdn, train_dir, tmp_path):
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(train_dir), "--output",
                              str(tmp_path / "r"), "--loss", "psnr", "--lambda", "auto", "--device", "cpu"])
    assert res.exit_code == 2 and "the PSNR loss is signed" in res.output
    assert not (tmp_path / "r").exists()


def test_a_rollback_moves_the_data_on_instead_of_replaying_the_bad_batch(imdn, train_dir, tmp_path):
    run = Run(config(imdn, train_dir, tmp_path / "run", iters=6, lam=1e-3))
    run.parts.rec_loss = rec = Recording(run.parts.rec_loss, nan_calls={4})
    result = run.train()
    assert result.steps == 6 and result.collapses == 1
    event = next(r for r in read_log(tmp_path / "run") if r.get("event") == "collapse")
    assert (event["step"], event["rolled_back_to"]) == (4, 2)
    bad, replay = rec.targets[3], rec.targets[4]  # call 4 collapsed; call 5 redoes step 3
    assert not torch.equal(bad, replay) and not torch.equal(rec.targets[2], replay)
    assert len(rec.targets) == 6 + 1 + 1  # 6 steps, the bad one, and step 3 redone


def test_a_plain_run_halves_the_lr_on_a_collapse(imdn, train_dir, tmp_path):
    """λ = 0 in a plain run: halving it would change nothing."""
    run = Run(config(imdn, train_dir, tmp_path / "run", iters=5, negative_init="none", lr=1e-4))
    run.parts.rec_loss = Recording(run.parts.rec_loss, nan_calls={3})
    assert run.train().collapses == 1
    event = next(r for r in read_log(tmp_path / "run") if r.get("event") == "collapse")
    assert event["lr_scale"] == 0.5
    lrs = [r["lr"] for r in read_log(tmp_path / "run") if "event" not in r]
    assert lrs[:2] == [1e-4, 1e-4] and lrs[-1] == pytest.approx(5e-5)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert state["lr_scale"] == 0.5  # a resume keeps the halved lr


def test_a_validation_far_below_the_start_is_a_collapse(imdn, train_dir, small_val, tmp_path, monkeypatch):
    """A finite divergence (DCTLSA x4 --lambda 1: 32.52 -> 28.02 dB, below bicubic) is seen
    by the validation: rolled back, λ halved."""
    real = loop.validate
    calls: list[int] = []

    def sinking(parts, step, **kw):
        v = real(parts, step, **kw)
        calls.append(step)
        if calls.count(4) == 1 and step == 4:  # the first time only: the redone step 4 is healthy
            v.psnr -= 5.0
        return v

    monkeypatch.setattr(loop, "validate", sinking)
    cfg = config(imdn, train_dir, tmp_path / "run", iters=8, lam=1e-3, val=(str(small_val),), val_every=2)
    result = retrain(cfg)
    event = next(r for r in read_log(tmp_path / "run") if r.get("event") == "collapse")
    assert event["step"] == 4 and "below the start" in event["reason"] and event["lambda"] == pytest.approx(5e-4)
    assert result.steps == 8 and result.stop_kind is None
    val = json.loads((tmp_path / "run" / "val.json").read_text())
    assert val["best"]["psnr"] == result.best_psnr  # best.* follows val.json, rollback or not


def test_a_final_validation_far_below_the_start_exits_1(imdn, train_dir, small_val, tmp_path, monkeypatch):
    real = loop.validate

    def sinking(parts, step, **kw):
        v = real(parts, step, **kw)
        if step > 0:
            v.psnr -= 5.0
        return v

    monkeypatch.setattr(loop, "validate", sinking)
    result = retrain(config(imdn, train_dir, tmp_path / "run", iters=2, val=(str(small_val),)))
    assert result.stop_kind == "collapses" and "best.* holds step 0's" in result.stopped_early


def test_resume_after_a_kill_during_the_final_save_writes_the_model(imdn, train_dir, small_val, tmp_path):
    """state.pt written, model.* not (killed in between): the resume completes the save."""
    run = tmp_path / "run"
    retrain(config(imdn, train_dir, run, iters=3, val=(str(small_val),)))
    want = {n: (run / n).read_bytes() for n in ("model.safetensors", "model.pth")}
    for n in want:
        (run / n).unlink()
    val = json.loads((run / "val.json").read_text())
    val["history"] = val["history"][:-1]  # the final validation was lost too
    (run / "val.json").write_text(json.dumps(val))
    result = retrain(load_run_config(run), resume=True)
    assert result.steps == 3
    assert {n: (run / n).read_bytes() for n in want} == want
    assert [h["step"] for h in json.loads((run / "val.json").read_text())["history"]] == [0, 3]


def test_a_run_killed_before_its_first_save_resumes_from_the_start(imdn, train_dir, tmp_path):
    straight = tmp_path / "a"
    retrain(config(imdn, train_dir, straight, iters=3))
    killed = tmp_path / "b"
    retrain(config(imdn, train_dir, killed, iters=3))
    for n in ("state.pt", "model.safetensors", "model.pth", "log.jsonl"):
        (killed / n).unlink()  # as if killed before anything but config.json was written
    assert retrain(load_run_config(killed), resume=True).steps == 3
    a = torch.load(straight / "state.pt", weights_only=True)
    b = torch.load(killed / "state.pt", weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())


def test_a_fresh_run_holds_its_folders_lock(imdn, train_dir, tmp_path):
    run = tmp_path / "run"
    seen: list[str] = []

    def try_second_writer(stats) -> None:
        if stats.step == 1:
            with pytest.raises(McirError, match="another mcir process") as info:
                retrain(load_run_config(run), resume=True)
            seen.append(str(info.value))

    retrain(config(imdn, train_dir, run, iters=2), on_step=try_second_writer)
    assert seen


def test_idle_negatives_are_warned_about_with_numbers(imdn, train_dir, tmp_path, caplog):
    cfg = config(imdn, train_dir, tmp_path / "run", iters=3, negative_steps=(1, 2, 1000), negative_init="mix")
    with caplog.at_level("WARNING", logger="mcir"):
        Run(cfg)
    text = " ".join(caplog.messages)
    assert "2 (1 update)" in text and "1000 (0 updates)" in text and "close to a random negative" in text
    shutil.rmtree(tmp_path / "run")


def test_negative_quality_is_logged(imdn, train_dir, tmp_path):
    """neg_psnr: each negative's output against the target's, in dB: a copy starts
    identical, the authors' mix starts far away."""
    retrain(config(imdn, train_dir, tmp_path / "copy", iters=1, negative_init="copy", negative_steps=(5, 7)))
    retrain(config(imdn, train_dir, tmp_path / "mix", iters=1, negative_init="mix", negative_steps=(5, 7)))
    copy = next(r for r in read_log(tmp_path / "copy") if "event" not in r)["neg_psnr"]
    mix = next(r for r in read_log(tmp_path / "mix") if "event" not in r)["neg_psnr"]
    assert min(copy) > 60 and max(mix) < 35


def test_a_run_file_round_trips_a_run(imdn, train_dir, tmp_path):
    """--config A/config.json repeats run A elsewhere: the same configuration and the same
    bytes; a run.toml sets flags by name, and flags on the command line win."""
    a, b = tmp_path / "a", tmp_path / "b"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(train_dir), "--output", str(a),
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
    run_toml.write_text(f'checkpoint = "{imdn}"\ndata = ["{train_dir}"]\niters = 1\nbatch = 1\npatch = 12\n'
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


def test_a_run_file_may_say_lambda_auto(tmp_path):
    from mcir_cli.train.config import load_config_file

    run_toml = tmp_path / "run.toml"
    run_toml.write_text('lambda = "auto"\ndata = "x"\n')
    assert load_config_file(run_toml) == {"lam_auto": True, "data": ["x"]}
