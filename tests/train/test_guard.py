"""The collapse guard, λ control, rollback points, run folder and run configuration on
their own: no model, no run."""

from __future__ import annotations

import json
import math
import random

import pytest

from mcir_cli.errors import McirError
from mcir_cli.losses.spn import error_magnitude
from mcir_cli.train.config import PAPER_STEPS, TrainConfig, fitted_steps, load_run_config, parse_steps
from mcir_cli.train.ema import start_share
from mcir_cli.train.guard import (
    DOMINANCE_PATIENCE,
    CollapseGuard,
    LambdaControl,
    Rollback,
    contrast_ratio,
    validation_collapse,
)
from mcir_cli.train.parts import lr_factor
from mcir_cli.train.rundir import RunFolder


def _feed(guard: CollapseGuard, loss_name: str, values: list[float]) -> list[str]:
    fired = []
    for v in values:
        reason = guard.check(v, 1.0, error_magnitude(loss_name, v), 0.0)
        if reason:
            fired.append(reason)
        else:
            guard.accept(error_magnitude(loss_name, v), 0.0)
    return fired


def test_signed_psnr_loss_never_fires_falsely():
    """The PSNR loss is −PSNR (≈ −30 dB): 'l_rec > 10 x median' held on every step of it."""
    rng = random.Random(0)
    values = [-30.0 + rng.gauss(0, 3) for _ in range(300)]  # hard and easy batches: ±9 dB
    assert _feed(CollapseGuard(10.0), "psnr", values) == []


def test_psnr_loss_blow_up_still_fires():
    guard = CollapseGuard(10.0)
    assert _feed(guard, "psnr", [-30.0] * 20) == []
    fired = _feed(guard, "psnr", [-12.0])  # MSE 63x the median's: the output is ruined
    assert len(fired) == 1 and "running median" in fired[0]


@pytest.mark.parametrize("name", ["l1", "charbonnier", "mse", "ssim"])
def test_positive_losses_fire_on_a_tenfold_rise(name):
    guard = CollapseGuard(10.0)
    assert _feed(guard, name, [0.02, 0.03, 0.025, 0.02] * 3) == []
    assert _feed(guard, name, [0.2]) == []  # 9x the median: a hard batch, not a collapse
    assert len(_feed(guard, name, [1.0])) == 1


def test_non_finite_values_fire_before_any_history():
    guard = CollapseGuard()
    assert guard.check(float("nan"), 1.0, 0.1, 0.0) == "non-finite loss"
    assert guard.check(0.1, float("inf"), 0.1, 0.0) == "non-finite gradient"
    assert error_magnitude("psnr", float("nan")) == math.inf


def test_spn_dominance_is_a_collapse_after_patience():
    guard = CollapseGuard()
    for _ in range(DOMINANCE_PATIENCE - 1):
        assert guard.check(-1.0, 1.0, 0.02, 3.0) is None
        guard.accept(0.02, 3.0)
    assert "outweighed l_rec" in guard.check(-1.0, 1.0, 0.02, 3.0)
    guard.forget_dominance()
    assert guard.check(-1.0, 1.0, 0.02, 3.0) is None


def test_guard_state_round_trips():
    guard = CollapseGuard()
    _feed(guard, "l1", [0.1, 0.2, 0.3])
    guard.accept(0.1, 2.0)
    other = CollapseGuard()
    other.load_state_dict(json.loads(json.dumps(guard.state_dict())))
    assert list(other.errors) == list(guard.errors) and other.dominated == 1


def test_contrast_ratio_uses_the_magnitude_of_a_signed_loss():
    assert contrast_ratio(1e-3, 2.0, -20.0) == pytest.approx(1e-4)
    assert contrast_ratio(1e-3, 2.0, 0.0) == 0.0


def test_lambda_auto_is_bounded_and_subordinate_to_the_guard():
    ctl = LambdaControl(1e-4, auto=True)
    for _ in range(2000):  # a ratio far below the band pushes λ up ...
        ctl.observe(0.0)
    assert ctl.lam == pytest.approx(1e-2)  # ... to its ceiling of 100 x the start, no further
    ctl.on_collapse()
    assert ctl.lam == pytest.approx(5e-3)
    for _ in range(2000):
        ctl.observe(0.0)
    assert ctl.lam == pytest.approx(5e-3)  # auto never climbs back to a λ that collapsed
    for _ in range(2000):
        ctl.observe(1.0)
    assert ctl.lam == pytest.approx(1e-6)  # and never below 1/100 of the start


def test_fixed_lambda_only_observes():
    ctl = LambdaControl(1e-4, auto=False, band=(0.01, 0.1))
    for _ in range(60):
        ctl.observe(0.5)
    assert ctl.lam == 1e-4 and ctl.out_of_band == 60 and ctl.mean_ratio == pytest.approx(0.5)
    assert ctl.warning(60) and "mcir's heuristic band, not from the paper" in ctl.warning(60)
    assert ctl.warning(59) is None


def test_rollback_skips_the_snapshot_that_produced_the_bad_step():
    rb = Rollback(every=2)
    for step in range(0, 7):
        rb.take(step, {"step": step}, force=step == 0)
    assert rb.latest["step"] == 6 and rb.previous["step"] == 4
    assert rb.target(7)["step"] == 4  # the snapshot at 6 holds the weights that made step 7
    assert rb.target(9)["step"] == 6
    rb.rolled_back_to(rb.target(7))
    assert rb.latest["step"] == 4 and rb.previous is None and rb.target(5)["step"] == 4


def test_validation_collapse():
    assert validation_collapse(31.6, 32.52, 1.0) is None
    assert "below the start" in validation_collapse(28.02, 32.52, 1.0)
    assert validation_collapse(28.0, None, 1.0) is None
    assert validation_collapse(float("nan"), 32.5, 1.0) == "non-finite validation PSNR"
    assert validation_collapse(None, 32.5, 1.0) is None  # a DDP rank that does not validate


# --------------------------------------------------------------------------- config


def test_fitted_steps_keep_the_papers_ratios_and_fit_the_run():
    assert fitted_steps(300) == (4, 19, 38, 75)
    assert fitted_steps(1000) == (12, 62, 125, 250)
    assert fitted_steps(8000) == PAPER_STEPS == fitted_steps(500_000)
    # the floor: never faster than every 2 steps, the paper's 1:5:10:20 kept (not 1, 2, 3, 4)
    assert fitted_steps(3) == fitted_steps(40) == fitted_steps(160) == (2, 10, 20, 40)
    assert fitted_steps(200) == (2, 12, 25, 50)  # above the floor: the slowest updates 4 times
    assert parse_steps("paper") == "paper" and parse_steps("auto") == "auto"
    assert parse_steps("3,7") == (3, 7)


def _cfg(tmp_path, **kw) -> TrainConfig:
    return TrainConfig(data=[str(tmp_path)], output=str(tmp_path / "run"), **kw)


def test_config_validates_when_built(tmp_path):
    with pytest.raises(McirError, match="--iters must be at least 1"):
        _cfg(tmp_path, iters=0)
    with pytest.raises(McirError, match="the PSNR loss is signed"):
        _cfg(tmp_path, loss="psnr", lam_auto=True)
    assert _cfg(tmp_path, iters=300).negative_steps == PAPER_STEPS  # the paper's, unless asked


def test_a_resume_that_extends_iters_keeps_the_cosine_curve(tmp_path):
    cfg = _cfg(tmp_path, iters=100, schedule="cosine", lr=1e-4, eta_min=1e-6)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": cfg.to_json()}))
    longer = load_run_config(run, iters=200)
    assert (longer.iters, longer.schedule_iters) == (200, 100)
    f, g = lr_factor(cfg), lr_factor(longer)
    assert [f(s) for s in range(100)] == [g(s) for s in range(100)]
    assert g(150) == pytest.approx(1e-2)  # at its floor past the planned horizon


def test_ema_share_of_the_start():
    assert start_share(0.999, 1000) == pytest.approx(0.368, abs=1e-3)


# --------------------------------------------------------------------------- run folder


def test_run_folder_validation_history(tmp_path):
    folder = RunFolder(tmp_path)
    header = {"conventions": {}, "data": {}}
    for step, psnr in ((0, 30.0), (2, 30.5), (4, 30.2)):
        folder.record_validation({"step": step, "psnr": psnr}, header)
    data = json.loads((tmp_path / "val.json").read_text())
    assert data["best"] == {"step": 2, "psnr": 30.5}
    folder.record_validation({"step": 2, "psnr": 29.0}, header)  # a resumed step 2 replaces 2 and after
    assert [h["step"] for h in folder.validations(10)] == [0, 2]
    assert [h["step"] for h in folder.validations(1)] == [0]
    (tmp_path / "val.json").write_text("{}")
    with pytest.raises(McirError, match="val.json is damaged"):
        folder.validations(10)


def test_run_folder_log_truncation_and_unstarted(tmp_path):
    folder = RunFolder(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert folder.is_unstarted()
    lines = [{"event": "start", "step": 0}, {"step": 1, "l_rec": 0.1}, {"step": 2, "l_rec": 0.1}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"step": 3, "l_r')
    assert folder.is_unstarted()  # steps logged, but nothing saved to resume from
    (tmp_path / "state.pt").write_bytes(b"")
    assert not folder.is_unstarted()
    folder.truncate_log(1)
    assert [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()] == [0, 1]


def test_run_folder_lock_is_exclusive(tmp_path):
    folder = RunFolder(tmp_path)
    with folder.lock():
        with pytest.raises(McirError, match="another mcir process"):
            with RunFolder(tmp_path).lock():
                pass
    with RunFolder(tmp_path).lock():  # released
        pass


def test_discard_keeps_a_run_that_got_going(tmp_path):
    started = tmp_path / "a"
    started.mkdir()
    (started / "log.jsonl").write_text('{"step": 1, "l_rec": 0.1}\n')
    RunFolder(started).discard_if_unstarted()
    assert started.exists()
    empty = tmp_path / "b"
    (empty / "sub").mkdir(parents=True)
    RunFolder(empty).discard_if_unstarted()
    assert not empty.exists()


def test_a_multi_scale_preset_takes_the_scale_of_its_training_data(tmp_path):
    """`--model swinir-light --data DIV2K/` with only X4 LR: x4, said in the recipe note."""
    import torch

    from mcir_cli.data.imageio import write_image
    from mcir_cli.train.config import make_config

    root = tmp_path / "DIV2K"
    write_image(root / "DIV2K_train_HR" / "0001.png", torch.rand(3, 32, 32))
    write_image(root / "DIV2K_train_LR_bicubic" / "X4" / "0001x4.png", torch.rand(3, 8, 8))
    cfg = make_config([root], tmp_path / "run", model="swinir-light")
    assert cfg.scale == 4 and "x4: the one scale of the training data" in cfg.recipe_note
    with pytest.raises(McirError, match="several scales"):
        make_config([tmp_path / "nothing"], tmp_path / "run", model="swinir-light")


def test_a_full_disk_while_logging_is_one_line_naming_the_log(tmp_path):
    import errno

    from mcir_cli.train.rundir import RunLog

    log = RunLog(tmp_path / "log.jsonl")

    class Full:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    log.fh = Full()
    with pytest.raises(McirError, match="No space left on device") as info:
        log.write({"step": 1})
    assert "log.jsonl" in str(info.value)


def test_lambda_to_try_comes_from_the_ratio_per_unit_lambda():
    from mcir_cli.train.guard import lambda_for_band, lambda_hint

    # l_neg/l_rec = 0.2: λ = √(0.01·0.10) / 0.2 = 0.158 -> 0.2 (one significant digit)
    assert lambda_for_band(0.2, (0.01, 0.10)) == 0.2
    assert lambda_for_band(3e-4, (0.01, 0.10)) == 100.0
    assert lambda_for_band(0.0, (0.01, 0.10)) is None
    assert lambda_hint(0.2, (0.01, 0.10)).startswith("try λ = 0.2 (--lambda 0.2; mcir's heuristic")
    assert "the SPN term was zero: no negatives" in lambda_hint(0.0, (0.01, 0.10))
    ctl = LambdaControl(1e-4, band=(0.01, 0.10))  # per step over its own λ (the guard may halve it)
    ctl.observe(2e-5)
    ctl.on_collapse()
    ctl.observe(1e-5)
    assert ctl.ratio_per_lambda == pytest.approx(0.2) and ctl.mean_ratio == pytest.approx(1.5e-5)
    again = LambdaControl(1e-4)
    again.load_state_dict(ctl.state_dict())  # a resume keeps it
    assert again.ratio_per_lambda == pytest.approx(0.2)
