"""The collapse guard, λ control, rollback points and validation collapse
(`mcir_cli.train.guard`) on their own: no model, no run."""

from __future__ import annotations

import json
import math
import random

import pytest

from mcir_cli.losses.reconstruction import error_magnitude
from mcir_cli.train.guard import (
    DOMINANCE_PATIENCE,
    CollapseGuard,
    LambdaControl,
    Rollback,
    contrast_ratio,
    validation_collapse,
)

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)


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


def test_rollback_goes_back_past_a_dominance_streak():
    """A dominance collapse at step 10 after a streak from step 6: the weights of step 5
    produced the first dominated loss, so the target is older than 5 (no snapshot is taken
    inside the streak, as the loop does)."""
    rb, guard = Rollback(every=1), CollapseGuard()
    for step in range(1, 10):
        ratio = 3.0 if step >= 6 else 0.0
        guard.accept(0.02, ratio)
        if not guard.dominated:
            rb.take(step, {"step": step})
    assert guard.check(-1.0, 1.0, 0.02, 3.0) is not None  # step 10: the fifth in a row
    assert (rb.latest["step"], rb.previous["step"]) == (5, 4)
    assert rb.target(10 - guard.dominated)["step"] == 4
    assert rb.target(10)["step"] == 5  # the old rule: a snapshot whose weights were already dominated


def test_validation_collapse():
    assert validation_collapse(31.6, 32.52, 1.0) is None
    assert "below the start" in validation_collapse(28.02, 32.52, 1.0)
    assert validation_collapse(28.0, None, 1.0) is None
    assert validation_collapse(float("nan"), 32.5, 1.0) == "non-finite validation PSNR"
    assert validation_collapse(None, 32.5, 1.0) is None  # a DDP rank that does not validate


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
