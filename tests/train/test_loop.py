"""The retraining loop (`mcir_cli.train.run`: `Run`, `retrain`) on real checkpoints (DCTLSA x4,
IMDN x4) and real photos, on CPU: bit-exact resume, the collapse guard and its rollbacks, λ
control, validation and the EMA of the weights, compile and channels_last, the run folder's
guarantees. The whole `mcir retrain` command: tests/e2e/test_retrain.py."""

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
from mcir_cli.train.config import TrainConfig, load_run_config, make_config
from mcir_cli.train.run import Run, retrain
from tests.conftest import read_log, set5_crops, shared_path

runner = CliRunner()


def config(ckpt: Path, data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(
        data=[str(data)], output=str(out), checkpoint=str(ckpt), iters=6, batch=1, patch=16,
        lr=1e-5, negative_steps=(2, 3), embedding="pixel", seed=0, device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_resume_is_bit_exact(dctlsa, train_dir, tmp_path):
    straight = retrain(config(dctlsa, train_dir, tmp_path / "a", iters=10, embedding="vgg16", embedding_init="random"))
    retrain(config(dctlsa, train_dir, tmp_path / "b", iters=5, embedding="vgg16", embedding_init="random"))
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


def test_batchnorm_frozen_by_default_and_trainable_on_request(dctlsa, train_dir, tmp_path):
    from mcir_cli.models.checkpoint import read_checkpoint

    original = read_checkpoint(dctlsa).state_dict
    bn_keys = [k for k in original if k.endswith("running_mean")]
    assert bn_keys, "DCTLSA carries BatchNorm"
    for train_bn, out in ((False, "frozen"), (True, "trained")):
        retrain(config(dctlsa, train_dir, tmp_path / out, iters=2, negative_init="none", train_bn=train_bn))
        state = torch.load(tmp_path / out / "state.pt", weights_only=True)["model"]
        same = all(torch.equal(state[k], original[k]) for k in bn_keys)
        assert same is (not train_bn)


def test_plain_finetuning_has_no_spn_term(dctlsa, train_dir, tmp_path):
    retrain(config(dctlsa, train_dir, tmp_path / "plain", iters=3, negative_init="none"))
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


def test_collapse_guard_rolls_back_and_halves_lambda(dctlsa, train_dir, tmp_path):
    trainer = Run(config(dctlsa, train_dir, tmp_path / "run", iters=6, lam=1e-3))
    trainer.parts.rec_loss = NaNAt(trainer.parts.rec_loss, {4})
    result = trainer.train()
    assert result.steps == 6 and result.collapses == 1 and result.stopped_early is None
    events = [r for r in read_log(tmp_path / "run") if r.get("event") == "collapse"]
    assert len(events) == 1 and events[0]["reason"] == "non-finite loss"
    assert events[0]["lambda"] == pytest.approx(5e-4)
    state = torch.load(tmp_path / "run" / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_collapse_guard_catches_an_exploding_reconstruction_loss(dctlsa, train_dir, tmp_path):
    trainer = Run(config(dctlsa, train_dir, tmp_path / "run", iters=13, collapse_factor=10.0))
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


def test_collapse_guard_stops_after_three_events(dctlsa, train_dir, tmp_path):
    trainer = Run(config(dctlsa, train_dir, tmp_path / "run", iters=20))
    trainer.parts.rec_loss = NaNAt(trainer.parts.rec_loss, set(range(3, 100)))
    result = trainer.train()
    assert result.collapses == 3 and "3 collapses" in result.stopped_early
    assert (tmp_path / "run" / "model.safetensors").exists()
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_lambda_auto_moves_ratio_toward_band(dctlsa, train_dir, tmp_path):
    cfg = config(dctlsa, train_dir, tmp_path / "auto", iters=5, lam=1e-6, lam_auto=True)
    retrain(cfg)
    lams = [r["lam"] for r in read_log(tmp_path / "auto") if "event" not in r]
    assert lams[-1] > lams[0]  # the ratio starts far below 1 %, so λ grows


def test_cuda_out_of_memory_is_reported(dctlsa, train_dir, tmp_path, monkeypatch):
    def boom(self):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(Run, "train", boom)
    with pytest.raises(McirError, match="smaller --batch or --patch"):
        retrain(config(dctlsa, train_dir, tmp_path / "oom"))


def test_sigterm_saves_a_resumable_state(dctlsa, train_dir, tmp_path):
    import signal

    cfg = config(dctlsa, train_dir, tmp_path / "run", iters=6)
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


def test_resume_records_new_iters_and_refuses_going_back(dctlsa, train_dir, tmp_path):
    run = tmp_path / "run"
    retrain(config(dctlsa, train_dir, run, iters=3))
    with (run / "log.jsonl").open("a") as fh:  # a line cut short by a killed process
        fh.write('{"step": 4, "l_rec": 0.0')
    retrain(load_run_config(run, iters=4), resume=True)
    info = json.loads((run / "config.json").read_text())
    assert info["config"]["iters"] == 4 and info["resumes"] == [{"at_step": 3, "iters": 4, "was": 3}]
    assert load_run_config(run).iters == 4  # a later plain --resume keeps the new target
    with pytest.raises(McirError, match="below the 4 steps"):
        retrain(load_run_config(run, iters=2), resume=True)


def test_retrained_from_safetensors_still_writes_a_torch_pth(dctlsa, train_dir, tmp_path):
    first = tmp_path / "first"
    retrain(config(dctlsa, train_dir, first, iters=1, negative_init="none"))
    second = tmp_path / "second"
    retrain(config(first / "model.safetensors", train_dir, second, iters=1, negative_init="none"))
    raw = torch.load(second / "model.pth", weights_only=True)
    assert isinstance(raw, dict) and "fea_conv.weight" in raw


def test_validation_scale_is_checked_before_training(dctlsa, train_dir, tmp_path):
    rain = shared_path("data", "derain", "Rain100L_subset3")
    with pytest.raises(McirError, match="validation data is x1"):
        retrain(config(dctlsa, train_dir, tmp_path / "run", val=str(rain)))
    assert not (tmp_path / "run").exists()  # nothing left behind: the same --output works again


def test_non_finite_gradient_counts_as_a_collapse(dctlsa, train_dir, tmp_path):
    trainer = Run(config(dctlsa, train_dir, tmp_path / "run", iters=4))
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


def test_compiled_training_matches_eager(imdn, dctlsa, train_dir, tmp_path):
    """--compile on compiles the target, the vmap'd negatives and the embedding; the
    aot_eager backend traces all three like inductor would, without generating code."""
    # IMDN x4: traces faster than DCTLSA
    kw = dict(iters=3, embedding="vgg16", embedding_init="random", batched_negatives="on")
    retrain(config(imdn, train_dir, tmp_path / "eager", **kw))
    retrain(config(imdn, train_dir, tmp_path / "compiled", compile="on", compile_backend="aot_eager", **kw))
    start = next(r for r in read_log(tmp_path / "compiled") if r.get("event") == "start")
    assert start["compile"].startswith("torch.compile on")
    _close_runs(tmp_path / "eager", tmp_path / "compiled", rel=1e-4)


def test_resume_keeps_the_runs_compile_decision(imdn, train_dir, tmp_path):
    """--compile auto is decided once per run: a resume with fewer steps left (or on
    another machine) must not flip it, or the numerics change mid-run."""
    run = tmp_path / "run"  # IMDN x4: traces faster than DCTLSA
    retrain(config(imdn, train_dir, run, iters=2, compile_backend="aot_eager"))
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["compiled"] is False  # auto on CPU: eager
    state["compiled"] = True  # as if the run had started on a GPU for >= 10k steps
    torch.save(state, run / "state.pt")
    trainer = Run(load_run_config(run, iters=3), resume=True)
    assert trainer.state.compiled is True and "kept from the run's start" in trainer.parts.notes["compile"]
    assert isinstance(trainer.parts.wrapped, torch._dynamo.eval_frame.OptimizedModule)
    assert trainer.train().steps == 3


def test_channels_last_training_matches_nchw(dctlsa, train_dir, tmp_path):
    kw = dict(iters=3, embedding="vgg16", embedding_init="random")
    retrain(config(dctlsa, train_dir, tmp_path / "nchw", channels_last="off", **kw))
    retrain(config(dctlsa, train_dir, tmp_path / "nhwc", channels_last="on", **kw))
    start = next(r for r in read_log(tmp_path / "nhwc") if r.get("event") == "start")
    assert start["layout"].startswith("channels_last on")
    _close_runs(tmp_path / "nchw", tmp_path / "nhwc", rel=1e-4)


def test_tensorboard_curves_match_the_log_and_survive_a_resume(dctlsa, train_dir, small_val, tmp_path):
    """--tensorboard writes train/* and val/* scalars; a resume from an older state drops
    the steps logged after it (purge_step), as log.jsonl is truncated."""
    import shutil

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    backup = tmp_path / "state_at_2.pt"

    def crash_point(stats) -> None:  # keep the state saved at step 2, as if killed at step 3
        if stats.step == 3:
            shutil.copy(run / "state.pt", backup)

    retrain(config(dctlsa, train_dir, run, iters=3, save_every=2, val=str(small_val), val_every=2,
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


def test_collapse_soon_after_a_resume_rolls_back_like_the_straight_run(imdn, train_dir, tmp_path):
    """40 steps snapshot every 2: a run stopped at step 5 saves its rollback point (step
    4) with its state, so a collapse at step 6 rolls back to step 4 after a resume too."""
    # IMDN x4: a faster step than DCTLSA
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


def test_resume_from_another_folder_after_the_start_checkpoint_moved(imdn, train_dir, tmp_path, monkeypatch):
    """config.json holds absolute paths; a start checkpoint that is gone is replaced by the
    run's own model.pth for the architecture (the weights come from state.pt)."""
    import shutil

    start = tmp_path / "IMDN_x4.pth"
    shutil.copy(imdn, start)
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


def test_damaged_run_files_are_one_line(imdn, train_dir, tmp_path):
    run = tmp_path / "run"
    retrain(config(imdn, train_dir, run, iters=1))
    data = (run / "state.pt").read_bytes()
    (run / "state.pt").write_bytes(data[: len(data) // 2])
    res = runner.invoke(app, ["retrain", "--resume", str(run), "--iters", "2"])
    assert res.exit_code == 2 and "state.pt is damaged" in res.output and "Traceback" not in res.output
    (run / "config.json").write_text("{broken")
    res = runner.invoke(app, ["retrain", "--resume", str(run), "--iters", "2"])
    assert res.exit_code == 2 and "config.json is damaged" in res.output


def test_ema_of_the_weights_is_what_is_validated_and_written(imdn, train_dir, small_val, tmp_path):
    """--ema-decay d: e_0 = θ_0, e_t = d·e_(t-1) + (1-d)·θ_t after every step; model.* and the
    validation use e, the negatives and the optimizer the raw θ."""
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
    from mcir_cli.evaluate.benchmarks import Scoring, evaluate_model
    from mcir_cli.models.loading import load_model

    final = [r for r in read_log(tmp_path / "run") if r.get("event") == "val"][-1]
    again = evaluate_model(load_model(tmp_path / "run" / "model.safetensors"), [small_val], Scoring(device="cpu"))
    assert again["datasets"][small_val.name]["psnr"] == pytest.approx(final["psnr"], abs=1e-6)


def test_collapse_rolls_back_past_the_weights_that_produced_it(imdn, train_dir, tmp_path):
    """Snapshots every step (a short run): the snapshot right before the bad step holds the
    weights that produced the bad loss, so the guard goes one further back."""
    trainer = Run(config(imdn, train_dir, tmp_path / "run", iters=8, lam=1e-3))
    trainer.parts.rec_loss = NaNAt(trainer.parts.rec_loss, {5})  # call 5 = step 5
    result = trainer.train()
    event = next(r for r in read_log(tmp_path / "run") if r.get("event") == "collapse")
    assert event["step"] == 5 and event["rolled_back_to"] == 3
    assert result.steps == 8 and result.collapses == 1


def test_a_dominance_collapse_rolls_back_to_before_the_streak(imdn, train_dir, tmp_path):
    """L_rec made tiny for calls 3-7: λ·L_neg outweighs it from step 3, the fifth such step
    (7) is a collapse, and the run goes back to step 1 (step 2's weights produced step 3's
    dominated loss), not to a snapshot taken inside the streak."""
    trainer = Run(config(imdn, train_dir, tmp_path / "run", iters=9, lam=1e-3))
    trainer.parts.rec_loss = ScaleAt(trainer.parts.rec_loss, set(range(3, 8)), 1e-6)
    result = trainer.train()
    event = next(r for r in read_log(tmp_path / "run") if r.get("event") == "collapse")
    assert event["step"] == 7 and "outweighed l_rec" in event["reason"]
    assert event["rolled_back_to"] == 1
    assert result.steps == 9 and result.collapses == 1


def test_resume_knows_the_best_validation(imdn, train_dir, small_val, tmp_path):
    """best.* follows val.json across resumes: the state saved at the end knows the final
    validation, and a resume takes the best from val.json (a stale state cannot let a
    worse step overwrite best.*); a damaged val.json is refused before any training."""
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


def test_a_run_folder_takes_one_resume_at_a_time(imdn, train_dir, tmp_path):
    import fcntl
    import os

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


def test_resume_may_change_when_to_save_and_log_but_not_the_numbers(imdn, train_dir, tmp_path):
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


@pytest.fixture(scope="module")
def one_image_val(tmp_path_factory) -> Path:
    return set5_crops(tmp_path_factory.mktemp("val"), ("baby",), 64)


class Recording:
    """A reconstruction loss that records each call's target batch and poisons chosen calls."""

    def __init__(self, loss, nan_calls=()):
        self.loss, self.nan_calls, self.targets = loss, set(nan_calls), []

    def __call__(self, pred, target):
        self.targets.append(target.detach().clone())
        value = self.loss(pred, target)
        return value * float("nan") if len(self.targets) in self.nan_calls else value


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


def test_a_validation_far_below_the_start_is_a_collapse(imdn, train_dir, one_image_val, tmp_path, monkeypatch):
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
    cfg = config(imdn, train_dir, tmp_path / "run", iters=8, lam=1e-3, val=(str(one_image_val),), val_every=2)
    result = retrain(cfg)
    event = next(r for r in read_log(tmp_path / "run") if r.get("event") == "collapse")
    assert event["step"] == 4 and "below the start" in event["reason"] and event["lambda"] == pytest.approx(5e-4)
    assert result.steps == 8 and result.stop_kind is None
    val = json.loads((tmp_path / "run" / "val.json").read_text())
    assert val["best"]["psnr"] == result.best_psnr  # best.* follows val.json, rollback or not


def test_a_final_validation_far_below_the_start_exits_1(imdn, train_dir, one_image_val, tmp_path, monkeypatch):
    real = loop.validate

    def sinking(parts, step, **kw):
        v = real(parts, step, **kw)
        if step > 0:
            v.psnr -= 5.0
        return v

    monkeypatch.setattr(loop, "validate", sinking)
    result = retrain(config(imdn, train_dir, tmp_path / "run", iters=2, val=(str(one_image_val),)))
    assert result.stop_kind == "collapses" and "best.* holds step 0's" in result.stopped_early


def test_resume_after_a_kill_during_the_final_save_writes_the_model(imdn, train_dir, one_image_val, tmp_path):
    """state.pt written, model.* not (killed in between): the resume completes the save."""
    run = tmp_path / "run"
    retrain(config(imdn, train_dir, run, iters=3, val=(str(one_image_val),)))
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


def test_validating_on_the_training_folder_is_warned_about(imdn, train_dir, tmp_path, caplog):
    """--val inside --data (or the same folder): its scores are on training images."""
    with caplog.at_level("WARNING", logger="mcir"):
        Run(config(imdn, train_dir, tmp_path / "run", iters=1, val=(str(train_dir),)))
    assert any("overlaps --data" in m and "training images" in m for m in caplog.messages)
    caplog.clear()
    with caplog.at_level("WARNING", logger="mcir"):
        Run(config(imdn, train_dir, tmp_path / "held", iters=1, val=(str(shared_path("data", "sr", "Set5")),)))
    assert not any("overlaps --data" in m for m in caplog.messages)


def test_negative_quality_is_logged(imdn, train_dir, tmp_path):
    """neg_psnr: each negative's output against the target's, in dB: a copy starts
    identical, the authors' mix starts far away."""
    retrain(config(imdn, train_dir, tmp_path / "copy", iters=1, negative_init="copy", negative_steps=(5, 7)))
    retrain(config(imdn, train_dir, tmp_path / "mix", iters=1, negative_init="mix", negative_steps=(5, 7)))
    copy = next(r for r in read_log(tmp_path / "copy") if "event" not in r)["neg_psnr"]
    mix = next(r for r in read_log(tmp_path / "mix") if "event" not in r)["neg_psnr"]
    assert min(copy) > 60 and max(mix) < 35


def test_noise_sigma_makes_an_unknown_x1_checkpoint_a_denoiser(tmp_path):
    """DnCNN's file names no task: --noise-sigma says it (as evaluate reads it), so a flat
    folder of clean grey images trains it; before, retrain asked for --task denoise."""
    dncnn = shared_path("weights", "DnCNN_KAIR", "dncnn_25.pth")
    grey = shared_path("data", "denoise", "Set12_gray")
    result = retrain(config(dncnn, grey, tmp_path / "run", iters=1, noise_sigma=25.0, negative_init="none"))
    assert result.steps == 1
    from mcir_cli.models.loading import load_model

    model = load_model(dncnn)
    assert model.task is None and model.implied_task(None, 25.0, None) == "denoise"
    assert model.implied_task(None, None, "10") == "jpeg" and model.implied_task(None, None, None) is None
    assert model.implied_task("denoise", None, "10") == "denoise"
