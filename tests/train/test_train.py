"""The retraining loop on a real checkpoint (DCTLSA x4) and real photos, on CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mcir_cli._helpers.fsutil import sha256_file
from mcir_cli.cli import app
from mcir_cli.data.imageio import read_image, write_image
from mcir_cli.data.resize import imresize
from mcir_cli.errors import McirError
from mcir_cli.train.config import TrainConfig, load_run_config, make_config
from mcir_cli.train.run import Run, retrain
from tests.conftest import set5_crops, shared_path

runner = CliRunner()


@pytest.fixture(scope="module")
def ckpt() -> Path:
    return shared_path("weights", "DCTLSA", "X4.pt")


@pytest.fixture(scope="module")
def small_val(tmp_path_factory) -> Path:
    """Two 64x64 HR crops of real Set5 images with MATLAB-bicubic LR (fast validation)."""
    return set5_crops(tmp_path_factory.mktemp("val"), ("baby", "bird"), 64)


def config(ckpt: Path, data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=[str(data)], output=str(out), checkpoint=str(ckpt), iters=6, batch=1, patch=16,
        lr=1e-5, negative_steps=(2, 3), embedding="pixel", seed=0, device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_retrain_cli_end_to_end(ckpt, train_dir, small_val, tmp_path):
    before = sha256_file(ckpt)
    run = tmp_path / "RUN"
    res = runner.invoke(app, [
        "retrain", "--checkpoint", str(ckpt), "--data", str(train_dir), "--val", str(small_val),
        "--iters", "8", "--batch", "2", "--patch", "16", "--negative-steps", "2,4,8",
        "--embedding-init", "random", "--device", "cpu", "--output", str(run),
    ])
    assert res.exit_code == 0, res.output
    assert sha256_file(ckpt) == before  # the input checkpoint is only read
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
    from mcir_cli.evaluate.benchmarks import evaluate_model
    from mcir_cli.models.loading import load_model

    start = evaluate_model(load_model(ckpt), [small_val], device="cpu")["datasets"][small_val.name]
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


def test_resume_is_bit_exact(ckpt, train_dir, tmp_path):
    straight = retrain(config(ckpt, train_dir, tmp_path / "a", iters=10, embedding="vgg16", embedding_init="random"))
    retrain(config(ckpt, train_dir, tmp_path / "b", iters=5, embedding="vgg16", embedding_init="random"))
    resumed = retrain(load_run_config(tmp_path / "b", iters=10), resume=True)
    assert straight.steps == resumed.steps == 10
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["negatives"]["params"].items():
        assert torch.equal(v, b["negatives"]["params"][k]), k
    assert torch.equal(a["rng_cpu"], b["rng_cpu"])
    la = [r for r in read_log(tmp_path / "a") if "event" not in r]
    lb = [r for r in read_log(tmp_path / "b") if "event" not in r]
    assert [r["l_rec"] for r in la] == [r["l_rec"] for r in lb]
    # the run's mean contrast ratio covers all 10 steps, not only the resumed 5
    end_a = [r for r in read_log(tmp_path / "a") if r.get("event") == "end"][-1]
    end_b = [r for r in read_log(tmp_path / "b") if r.get("event") == "end"][-1]
    assert end_b["mean_ratio"] == pytest.approx(end_a["mean_ratio"], rel=1e-12)
    assert end_a["mean_ratio"] == pytest.approx(sum(r["ratio"] for r in la) / 10)


def test_batchnorm_frozen_by_default_and_trainable_on_request(ckpt, train_dir, tmp_path):
    from mcir_cli.models.checkpoint import read_checkpoint

    original = read_checkpoint(ckpt).state_dict
    bn_keys = [k for k in original if k.endswith("running_mean")]
    assert bn_keys, "DCTLSA carries BatchNorm"
    for train_bn, out in ((False, "frozen"), (True, "trained")):
        retrain(config(ckpt, train_dir, tmp_path / out, iters=2, negative_init="none", train_bn=train_bn))
        state = torch.load(tmp_path / out / "state.pt", weights_only=True)["model"]
        same = all(torch.equal(state[k], original[k]) for k in bn_keys)
        assert same is (not train_bn)


def test_plain_finetuning_has_no_spn_term(ckpt, train_dir, tmp_path):
    retrain(config(ckpt, train_dir, tmp_path / "plain", iters=3, negative_init="none"))
    log = read_log(tmp_path / "plain")
    assert all(r["l_neg"] == 0 for r in log if "event" not in r)
    assert not any(r.get("event") == "negative_update" for r in log)
    assert "negatives" not in torch.load(tmp_path / "plain" / "state.pt", weights_only=True)


class NaNAt:
    """Wraps a loss so that chosen calls return NaN (a simulated collapse)."""

    def __init__(self, loss, calls):
        self.loss, self.calls, self.n = loss, set(calls), 0

    def __call__(self, pred, target):
        self.n += 1
        value = self.loss(pred, target)
        return value * float("nan") if self.n in self.calls else value


def test_collapse_guard_rolls_back_and_halves_lambda(ckpt, train_dir, tmp_path):
    trainer = Run(config(ckpt, train_dir, tmp_path / "run", iters=6, lam=1e-3))
    trainer.parts.rec_loss = NaNAt(trainer.parts.rec_loss, {4})
    result = trainer.train()
    assert result.steps == 6 and result.collapses == 1 and result.stopped_early is None
    events = [r for r in read_log(tmp_path / "run") if r.get("event") == "collapse"]
    assert len(events) == 1 and events[0]["reason"] == "non-finite loss"
    assert events[0]["lambda"] == pytest.approx(5e-4)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_collapse_guard_catches_an_exploding_reconstruction_loss(ckpt, train_dir, tmp_path):
    trainer = Run(config(ckpt, train_dir, tmp_path / "run", iters=13, collapse_factor=10.0))
    trainer.parts.rec_loss = ScaleAt(trainer.parts.rec_loss, {12}, 1e4)  # history holds 11 normal steps
    result = trainer.train()
    assert result.steps == 13 and result.collapses == 1
    event = next(r for r in read_log(tmp_path / "run") if r.get("event") == "collapse")
    assert event["step"] == 12 and "x running median" in event["reason"]


class ScaleAt(NaNAt):
    """Multiplies chosen calls' loss by a factor (a finite blow-up)."""

    def __init__(self, loss, calls, factor):
        super().__init__(loss, calls)
        self.factor = factor

    def __call__(self, pred, target):
        self.n += 1
        value = self.loss(pred, target)
        return value * self.factor if self.n in self.calls else value


def test_collapse_guard_stops_after_three_events(ckpt, train_dir, tmp_path):
    trainer = Run(config(ckpt, train_dir, tmp_path / "run", iters=20))
    trainer.parts.rec_loss = NaNAt(trainer.parts.rec_loss, set(range(3, 100)))
    result = trainer.train()
    assert result.collapses == 3 and "3 collapses" in result.stopped_early
    assert (tmp_path / "run" / "model.safetensors").exists()
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_lambda_auto_moves_ratio_toward_band(ckpt, train_dir, tmp_path):
    cfg = config(ckpt, train_dir, tmp_path / "auto", iters=5, lam=1e-6, lam_auto=True)
    retrain(cfg)
    lams = [r["lam"] for r in read_log(tmp_path / "auto") if "event" not in r]
    assert lams[-1] > lams[0]  # the ratio starts far below 1 %, so λ grows


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
def test_bad_input_is_one_line(ckpt, train_dir, tmp_path, args, message):
    run = tmp_path / "RUN"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(ckpt), "--data", str(train_dir),
                              "--output", str(run), "--device", "cpu", *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not run.exists()


def test_existing_output_and_empty_data_refused(ckpt, train_dir, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    res = runner.invoke(app, ["retrain", "--checkpoint", str(ckpt), "--data", str(train_dir), "--output", str(existing)])
    assert res.exit_code == 2 and "output folder exists" in res.output
    assert (existing / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(app, ["retrain", "--checkpoint", str(ckpt), "--data", str(empty), "--output", str(tmp_path / "r")])
    assert res.exit_code == 2 and "empty" in res.output


def test_cuda_out_of_memory_is_reported(ckpt, train_dir, tmp_path, monkeypatch):
    def boom(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Run, "train", boom)
    with pytest.raises(McirError, match="smaller --batch or --patch"):
        retrain(config(ckpt, train_dir, tmp_path / "oom"))


def test_sigterm_saves_a_resumable_state(ckpt, train_dir, tmp_path):
    import signal

    cfg = config(ckpt, train_dir, tmp_path / "run", iters=6)
    trainer = Run(cfg)

    def on_step(stats):
        if stats.step == 3:  # what the SIGTERM handler does when the signal arrives
            trainer.request_stop(signal.SIGTERM)

    trainer.on_step = on_step
    result = trainer.train()
    assert result.steps == 3 and "SIGTERM at step 3" in result.stopped_early and "--resume" in result.stopped_early
    assert result.exit_code == 143  # 128 + SIGTERM, what a shell or a job scheduler expects
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 3
    assert (tmp_path / "run" / "model.safetensors").exists()
    res = runner.invoke(app, ["retrain", "--resume", str(tmp_path / "run"), "--data", str(train_dir)])
    assert res.exit_code == 2 and "only --iters" in res.output
    # flags that would be silently ignored are refused by name, whatever their kind
    res = runner.invoke(app, ["retrain", "--resume", str(tmp_path / "run"), "--lr", "1e-3", "--lambda", "0.1",
                              "--seed", "0", "--iters", "6"])
    assert res.exit_code == 2 and "(remove --lr, --lambda, --seed)" in res.output
    res = runner.invoke(app, ["retrain", "--resume", str(tmp_path / "run")])
    assert res.exit_code == 0, res.output
    assert torch.load(tmp_path / "run" / "state.pt", weights_only=True)["step"] == 6
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    res = runner.invoke(app, ["retrain", "--resume", str(tmp_path / "run")])  # finished: says so
    assert res.exit_code == 0 and "already at step 6 of 6" in " ".join(res.output.split())
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before


def test_preset_spn_settings_are_the_flag_defaults(ckpt, train_dir, tmp_path):
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
    res = runner.invoke(app, ["retrain", "--model", str(preset), "--checkpoint", str(ckpt), "--data", str(train_dir),
                              "--iters", "1", "--batch", "1", "--patch", "16", "--negative-weight", "0.3",
                              "--device", "cpu", "--output", str(run)])
    assert res.exit_code == 0, res.output
    cfg = json.loads((run / "config.json").read_text())["config"]
    assert cfg["lam"] == 2e-4 and cfg["negative_steps"] == [3, 7] and cfg["embedding"] == "pixel"
    assert cfg["negative_init"] == "copy" and cfg["negative_weight"] == 0.3  # the flag wins


def test_make_config_defaults_come_from_the_preset_or_the_paper():
    from mcir_cli.train.config import make_config

    bare = make_config(["d"], "o", checkpoint="ckpt.pth")
    assert (bare.lr, bare.schedule, bare.loss, bare.batch, bare.patch) == (1e-5, "constant", "l1", 16, 48)
    assert (bare.lam, bare.negative_weight, bare.negative_steps) == (1e-4, 0.1, (100, 500, 1000, 2000))
    assert (bare.negative_init, bare.negative_mix, bare.embedding) == ("mix", 0.1, "vgg16")
    fitted = make_config(["d"], "o", checkpoint="ckpt.pth", negative_init="copy", negative_steps="auto")
    assert (fitted.negative_init, fitted.negative_steps) == ("copy", (12, 62, 125, 250))  # the option
    # from pretrained weights: the recipe's optimizer, batch, patch and loss, at the lr
    # where its from-scratch schedule ends (2e-4 halved at 250k/400k/450k/475k), constant
    swin = make_config(["d"], "o", model="swinir-light", scale=4)
    assert (swin.batch, swin.patch, swin.schedule, swin.iters, swin.task) == (64, 64, "constant", 1000, "sr")
    assert swin.lr == pytest.approx(2e-4 / 16) and swin.milestones == ()
    assert "where its multistep schedule ends" in swin.recipe_note
    scratch = make_config(["d"], "o", model="swinir-light", scale=4, allow_random_init=True)
    assert (scratch.lr, scratch.schedule, scratch.iters) == (2e-4, "multistep", 500_000)
    assert scratch.milestones == (250_000, 400_000, 450_000, 475_000)
    short = make_config(["d"], "o", model="swinir-light", scale=4, allow_random_init=True, iters=5000)
    assert short.milestones == (2500, 4000, 4500, 4750) and short.iters == 5000  # the schedule's shape, scaled
    assert "scaled from 500000 to 5000 steps" in short.recipe_note
    nafnet = make_config(["d"], "o", model="nafnet-gopro-w32", lr=5e-5, iters=10)
    assert (nafnet.optimizer, nafnet.loss, nafnet.lr, nafnet.iters) == ("adamw", "psnr", 5e-5, 10)
    assert nafnet.recipe_note.endswith("as given")
    cosine = make_config(["d"], "o", model="nafnet-gopro-w32")
    assert cosine.lr == pytest.approx(1e-3 * 0.01)  # its cosine decays to 1e-7: 1 % of the peak instead


def test_resume_records_new_iters_and_refuses_going_back(ckpt, train_dir, tmp_path):
    run = tmp_path / "run"
    retrain(config(ckpt, train_dir, run, iters=3))
    with (run / "log.jsonl").open("a") as fh:  # a line cut short by a killed process
        fh.write('{"step": 4, "l_rec": 0.0')
    retrain(load_run_config(run, iters=4), resume=True)
    info = json.loads((run / "config.json").read_text())
    assert info["config"]["iters"] == 4 and info["resumes"] == [{"at_step": 3, "iters": 4, "was": 3}]
    assert load_run_config(run).iters == 4  # a later plain --resume keeps the new target
    with pytest.raises(McirError, match="below the 4 steps"):
        retrain(load_run_config(run, iters=2), resume=True)


def test_retrained_from_safetensors_still_writes_a_torch_pth(ckpt, train_dir, tmp_path):
    first = tmp_path / "first"
    retrain(config(ckpt, train_dir, first, iters=1, negative_init="none"))
    second = tmp_path / "second"
    retrain(config(first / "model.safetensors", train_dir, second, iters=1, negative_init="none"))
    raw = torch.load(second / "model.pth", weights_only=True)
    assert isinstance(raw, dict) and "fea_conv.weight" in raw


def test_validation_scale_is_checked_before_training(ckpt, train_dir, tmp_path):
    rain = shared_path("data", "derain", "Rain100L_subset3")
    with pytest.raises(McirError, match="validation data is x1"):
        retrain(config(ckpt, train_dir, tmp_path / "run", val=str(rain)))
    assert not (tmp_path / "run").exists()  # nothing left behind: the same --output works again


def test_non_finite_gradient_counts_as_a_collapse(ckpt, train_dir, tmp_path):
    trainer = Run(config(ckpt, train_dir, tmp_path / "run", iters=4))
    assert trainer.guard.check(0.1, float("inf"), 0.1, 0.0) == "non-finite gradient"
    assert trainer.guard.check(0.1, 1.0, 0.1, 0.0) is None


def _step_losses(run: Path) -> list[tuple[float, float]]:
    return [(r["l_rec"], r["l_neg"]) for r in read_log(run) if "event" not in r]


def _close_runs(a: Path, b: Path, rel: float) -> None:
    la, lb = _step_losses(a), _step_losses(b)
    assert len(la) == len(lb) > 0
    for (ra, na), (rb, nb) in zip(la, lb):
        assert rb == pytest.approx(ra, rel=rel) and nb == pytest.approx(na, rel=rel)
    wa = torch.load(a / "model.pth", weights_only=True)
    wb = torch.load(b / "model.pth", weights_only=True)
    for k, v in wa.items():
        assert wb[k].is_contiguous(), k
        assert torch.allclose(wb[k].float(), v.float(), rtol=rel, atol=1e-6), k


def test_compiled_training_matches_eager(ckpt, train_dir, tmp_path):
    """--compile on compiles the target, the vmap'd negatives and the embedding; the
    aot_eager backend traces all three like inductor would, without generating code."""
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")  # traces faster than DCTLSA
    kw = dict(iters=3, embedding="vgg16", embedding_init="random", batched_negatives="on")
    retrain(config(imdn, train_dir, tmp_path / "eager", **kw))
    retrain(config(imdn, train_dir, tmp_path / "compiled", compile="on", compile_backend="aot_eager", **kw))
    start = next(r for r in read_log(tmp_path / "compiled") if r.get("event") == "start")
    assert start["compile"].startswith("torch.compile on")
    _close_runs(tmp_path / "eager", tmp_path / "compiled", rel=1e-4)


def test_resume_keeps_the_runs_compile_decision(ckpt, train_dir, tmp_path):
    """--compile auto is decided once per run: a resume with fewer steps left (or on
    another machine) must not flip it, or the numerics change mid-run."""
    run = tmp_path / "run"
    retrain(config(ckpt, train_dir, run, iters=2, compile_backend="aot_eager"))
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["compiled"] is False  # auto on CPU: eager
    state["compiled"] = True  # as if the run had started on a GPU for >= 10k steps
    torch.save(state, run / "state.pt")
    trainer = Run(load_run_config(run, iters=3), resume=True)
    assert trainer.state.compiled is True and "kept from the run's start" in trainer.parts.notes["compile"]
    assert isinstance(trainer.parts.net, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.train().steps == 3


def test_channels_last_training_matches_nchw(ckpt, train_dir, tmp_path):
    kw = dict(iters=3, embedding="vgg16", embedding_init="random")
    retrain(config(ckpt, train_dir, tmp_path / "nchw", channels_last="off", **kw))
    retrain(config(ckpt, train_dir, tmp_path / "nhwc", channels_last="on", **kw))
    start = next(r for r in read_log(tmp_path / "nhwc") if r.get("event") == "start")
    assert start["layout"].startswith("channels_last on")
    _close_runs(tmp_path / "nchw", tmp_path / "nhwc", rel=1e-4)


def test_tensorboard_curves_match_the_log_and_survive_a_resume(ckpt, train_dir, small_val, tmp_path):
    """--tensorboard writes train/* and val/* scalars; a resume from an older state drops
    the steps logged after it (purge_step), as log.jsonl is truncated."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    backup = tmp_path / "state_at_2.pt"

    def crash_point(stats) -> None:  # keep the state saved at step 2, as if killed at step 3
        if stats.step == 3:
            shutil.copy(run / "state.pt", backup)

    retrain(config(ckpt, train_dir, run, iters=3, save_every=2, val=str(small_val), val_every=2,
                   tensorboard=True), on_step=crash_point)
    shutil.copy(backup, run / "state.pt")
    retrain(load_run_config(run, iters=4), resume=True)

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tb = [(e.step, e.value) for e in acc.Scalars("train/l_rec")]
    log = [(r["step"], r["l_rec"]) for r in read_log(run) if "event" not in r]
    assert [s for s, _ in tb] == [s for s, _ in log] == [1, 2, 3, 4]  # step 3 once: the resumed one
    assert [v for _, v in tb] == pytest.approx([v for _, v in log], rel=1e-6)
    assert {"train/l_neg", "train/ratio", "train/lam", "train/lr", "val/psnr", "val/ssim"} <= set(acc.Tags()["scalars"])
    val = {r["step"]: r["psnr"] for r in read_log(run) if r.get("event") == "val"}
    assert {e.step: pytest.approx(e.value, rel=1e-6) for e in acc.Scalars("val/psnr")} == val


def test_collapse_soon_after_a_resume_rolls_back_like_the_straight_run(train_dir, tmp_path):
    """40 steps snapshot every 2: a run stopped at step 5 saves its rollback point (step
    4) with its state, so a collapse at step 6 rolls back to step 4 after a resume too."""
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")  # a faster step than DCTLSA
    kw = dict(iters=40, negative_steps=(3, 7), lam=1e-3)
    straight = Run(config(imdn, train_dir, tmp_path / "a", **kw))
    straight.parts.rec_loss = NaNAt(straight.parts.rec_loss, {6})  # call 6 = step 6
    straight.train()

    first = Run(config(imdn, train_dir, tmp_path / "b", **kw))

    def stop_at_5(stats) -> None:
        if stats.step == 5:
            first.stop_request = "test stop"

    first.on_step = stop_at_5
    assert first.train().steps == 5
    saved = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert saved["step"] == 5 and saved["rollback"]["step"] == 4
    resumed = Run(load_run_config(tmp_path / "b"), resume=True)
    resumed.parts.rec_loss = NaNAt(resumed.parts.rec_loss, {1})  # this process's first call = step 6
    assert resumed.train().steps == 40

    for run in ("a", "b"):
        event = next(r for r in read_log(tmp_path / run) if r.get("event") == "collapse")
        assert event["step"] == 6 and event["rolled_back_to"] == 4, run
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert "rollback" not in b  # 40 is a snapshot step: nothing extra is stored
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["negatives"]["params"].items():
        assert torch.equal(v, b["negatives"]["params"][k]), k
    assert [r["l_rec"] for r in read_log(tmp_path / "a") if "event" not in r] == \
        [r["l_rec"] for r in read_log(tmp_path / "b") if "event" not in r]


def test_cli_exit_code_says_the_run_stopped_early(train_dir, tmp_path):
    """A run stopped by the collapse guard is not a finished run: exit 1, so that
    `mcir retrain ... && mcir evaluate ...` does not carry on (a signal stop exits 128 + its number: 130, 143)."""
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    run = tmp_path / "run"
    res = runner.invoke(app, [
        "retrain", "--checkpoint", str(imdn), "--data", str(train_dir), "--output", str(run),
        "--iters", "20", "--batch", "1", "--patch", "16", "--embedding", "pixel",
        "--negative-steps", "1,2", "--lambda", "1e30", "--device", "cpu",
    ])
    assert res.exit_code == 1, res.output
    assert "stopped after 3 collapses" in res.output and "retrained" not in res.output
    assert (run / "model.safetensors").exists()  # the last good weights are still written


def test_resume_from_another_folder_after_the_start_checkpoint_moved(train_dir, tmp_path, monkeypatch):
    """config.json holds absolute paths; a start checkpoint that is gone is replaced by the
    run's own model.pth for the architecture (the weights come from state.pt)."""
    import shutil

    start = tmp_path / "IMDN_x4.pth"
    shutil.copy(shared_path("weights", "IMDN", "IMDN_x4.pth"), start)
    monkeypatch.chdir(tmp_path)
    retrain(make_config([train_dir], "run", checkpoint="IMDN_x4.pth", iters=2, batch=1, patch=16,
                        negative_steps=(1, 2), embedding="pixel", device="cpu"))
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert info["config"]["checkpoint"] == str(start) and info["config"]["output"] == str(tmp_path / "run")
    assert info["model"]["checkpoint_path"] == str(start) and len(info["model"]["checkpoint_sha256"]) == 64
    start.unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert retrain(load_run_config(tmp_path / "run", iters=3), resume=True).steps == 3


def test_damaged_run_files_are_one_line(train_dir, tmp_path):
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    run = tmp_path / "run"
    retrain(config(imdn, train_dir, run, iters=1))
    data = (run / "state.pt").read_bytes()
    (run / "state.pt").write_bytes(data[: len(data) // 2])
    res = runner.invoke(app, ["retrain", "--resume", str(run), "--iters", "2"])
    assert res.exit_code == 2 and "state.pt is damaged" in res.output and "Traceback" not in res.output
    (run / "config.json").write_text("{broken")
    res = runner.invoke(app, ["retrain", "--resume", str(run), "--iters", "2"])
    assert res.exit_code == 2 and "config.json is damaged" in res.output


def test_ema_of_the_weights_is_what_is_validated_and_written(train_dir, small_val, tmp_path):
    """--ema-decay d: e_0 = θ_0, e_t = d·e_(t-1) + (1-d)·θ_t after every step; model.* and the
    validation use e, the negatives and the optimizer the raw θ."""
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    d = 0.5
    trainer = Run(config(imdn, train_dir, tmp_path / "run", iters=3, ema_decay=d, val=str(small_val), lr=1e-3))
    raw = [{k: v.detach().clone() for k, v in trainer.parts.model.named_parameters()}]
    trainer.on_step = lambda s: raw.append({k: v.detach().clone() for k, v in trainer.parts.model.named_parameters()})
    trainer.train()
    expected = dict(raw[0])
    for theta in raw[1:]:
        expected = {k: d * expected[k] + (1 - d) * theta[k] for k in expected}
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    for k, v in expected.items():
        assert torch.allclose(state["ema"][k], v, atol=1e-6), k
        assert torch.equal(state["model"][k.removeprefix("net.")], raw[-1][k]), k  # the raw weights train on
    from safetensors.torch import load_file

    written = load_file(tmp_path / "run" / "model.safetensors")
    net_keys = {k.removeprefix("net."): k for k in expected}
    some = next(k for k in written if k.removeprefix("module.") in net_keys)
    assert torch.allclose(written[some], expected[net_keys[some.removeprefix("module.")]], atol=1e-6)
    assert not torch.allclose(written[some], raw[-1][net_keys[some.removeprefix("module.")]], atol=1e-6)
    # validation scored the EMA weights: re-scoring model.safetensors gives the logged number
    from mcir_cli.evaluate.benchmarks import evaluate_model
    from mcir_cli.models.loading import load_model

    final = [r for r in read_log(tmp_path / "run") if r.get("event") == "val"][-1]
    again = evaluate_model(load_model(tmp_path / "run" / "model.safetensors"), [small_val], device="cpu")
    assert again["datasets"][small_val.name]["psnr"] == pytest.approx(final["psnr"], abs=1e-6)


def test_swinir_presets_keep_kairs_ema():
    cfg = make_config(["d"], "o", model="swinir-light", scale=4)
    assert cfg.ema_decay == 0.999
    assert make_config(["d"], "o", model="swinir-light", scale=4, ema_decay=0.0).ema_decay == 0.0
    assert make_config(["d"], "o", checkpoint="x.pth").ema_decay == 0.0


def test_several_validation_folders(train_dir, small_val, tmp_path):
    """--val twice: each folder scored as `mcir evaluate` scores it; best.* follows the mean
    of the dataset means (how papers average benchmarks)."""
    second = tmp_path / "Second"
    for name in ("butterfly", "head"):
        hr = read_image(shared_path("data", "sr", "Set5", "HR", f"{name}.png"))[:, :64, :64]
        write_image(second / "HR" / f"{name}.png", hr)
        write_image(second / "LR_bicubic" / "X4" / f"{name}x4.png", imresize(hr, 1 / 4))
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    run = tmp_path / "run"
    res = runner.invoke(app, ["retrain", "--checkpoint", str(imdn), "--data", str(train_dir), "--val", str(small_val),
                              "--val", str(second), "--iters", "2", "--batch", "1", "--patch", "16",
                              "--embedding", "pixel", "--negative-steps", "1,2", "--device", "cpu", "--output", str(run)])
    assert res.exit_code == 0, res.output
    val = json.loads((run / "val.json").read_text())
    assert set(val["data"]) == {small_val.name, "Second"} and "mean of the datasets" in val["psnr_is"]
    from mcir_cli.evaluate.benchmarks import evaluate_model
    from mcir_cli.models.loading import load_model

    start = evaluate_model(load_model(imdn), [small_val, second], device="cpu")["datasets"]
    first = val["history"][0]
    assert first["step"] == 0
    for name, scores in first["datasets"].items():
        assert scores["psnr"] == pytest.approx(start[name]["psnr"], abs=1e-9)
    assert first["psnr"] == pytest.approx((start[small_val.name]["psnr"] + start["Second"]["psnr"]) / 2, abs=1e-9)
    assert "mean of" in " ".join(res.output.split())


def test_collapse_rolls_back_past_the_weights_that_produced_it(train_dir, tmp_path):
    """Snapshots every step (a short run): the snapshot right before the bad step holds the
    weights that produced the bad loss, so the guard goes one further back."""
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    trainer = Run(config(imdn, train_dir, tmp_path / "run", iters=8, lam=1e-3))
    trainer.parts.rec_loss = NaNAt(trainer.parts.rec_loss, {5})  # call 5 = step 5
    result = trainer.train()
    event = next(r for r in read_log(tmp_path / "run") if r.get("event") == "collapse")
    assert event["step"] == 5 and event["rolled_back_to"] == 3
    assert result.steps == 8 and result.collapses == 1


def test_resume_knows_the_best_validation(train_dir, small_val, tmp_path):
    """best.* follows val.json across resumes: the state saved at the end knows the final
    validation, and a resume takes the best from val.json (a stale state cannot let a
    worse step overwrite best.*); a damaged val.json is refused before any training."""
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    run = tmp_path / "run"
    retrain(config(imdn, train_dir, run, iters=4, val=str(small_val), val_every=2, lr=1e-4))
    val = json.loads((run / "val.json").read_text())
    state = torch.load(run / "state.pt", weights_only=True)
    assert (state["best_psnr"], state["best_step"]) == (val["best"]["psnr"], val["best"]["step"])
    state["best_psnr"], state["best_step"] = -1.0, 0  # as a state saved before a validation
    torch.save(state, run / "state.pt")
    trainer = Run(load_run_config(run, iters=6), resume=True)
    assert (trainer.state.best_psnr, trainer.state.best_step) == (val["best"]["psnr"], val["best"]["step"])
    (run / "val.json").write_text("{}")
    res = runner.invoke(app, ["retrain", "--resume", str(run), "--iters", "6"])
    assert res.exit_code == 2 and "val.json is damaged" in res.output
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 4  # nothing trained


def test_a_run_folder_takes_one_resume_at_a_time(train_dir, tmp_path):
    import fcntl
    import os

    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    run = tmp_path / "run"
    retrain(config(imdn, train_dir, run, iters=1, embedding="pixel"))
    held = os.open(run, os.O_RDONLY)  # as a running `mcir retrain --resume` holds it
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = runner.invoke(app, ["retrain", "--resume", str(run), "--iters", "2"])
        assert res.exit_code == 2 and "another mcir process is training in this run folder" in res.output
    finally:
        os.close(held)
    assert retrain(load_run_config(run, iters=2), resume=True).steps == 2


def test_resume_may_change_when_to_save_and_log_but_not_the_numbers(train_dir, tmp_path):
    imdn = shared_path("weights", "IMDN", "IMDN_x4.pth")
    retrain(config(imdn, train_dir, tmp_path / "a", iters=4))
    retrain(config(imdn, train_dir, tmp_path / "b", iters=2))
    res = runner.invoke(app, ["retrain", "--resume", str(tmp_path / "b"), "--iters", "4", "--save-every", "1",
                              "--log-every", "2"])
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "b" / "config.json").read_text())
    assert (info["config"]["save_every"], info["config"]["log_every"]) == (1, 2)
    assert {"at_step": 2, "save_every": 1, "was": 0} in info["resumes"]
    a = torch.load(tmp_path / "a" / "state.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "state.pt", weights_only=True)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    assert [r["step"] for r in read_log(tmp_path / "b") if "event" not in r] == [1, 2, 4]  # logged every 2 after


@pytest.mark.parametrize("field, flag", [("loss", "--loss"), ("embedding", "--embedding"), ("negative_init", "--negative-init"),
                                         ("optimizer", "--optimizer"), ("amp", "--amp")])
def test_a_train_config_refuses_an_unknown_choice_when_built(field, flag):
    """Refused at construction, naming the flag and the allowed values (from mcir_cli.choices),
    before any model is loaded or data scanned (the folders here do not exist)."""
    with pytest.raises(McirError, match=f"^{flag} must be one of "):
        TrainConfig(data=["no-such-folder"], output="no-such-run", **{field: "foo"})
    TrainConfig(data=["no-such-folder"], output="no-such-run", loss="L1", embedding="pixel")  # the loss's case as make_rec_loss
