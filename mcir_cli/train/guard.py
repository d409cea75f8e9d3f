"""The collapse guard and λ control: L = L_rec − λ·L_neg is unbounded below, so a run
needs a rule for what a collapse is, somewhere to roll back to, and a λ that adapts
without undoing the guard. Plain objects with state dicts, testable without a run."""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from mcir_cli.choices import RATIO_BAND

MIN_HISTORY = 10  # healthy steps before the running-median test applies (non-finite values: from the first)
AUTO_RANGE = 100.0  # --lambda auto keeps λ within [λ0/100, λ0·100]
AUTO_RATE = 1.05  # and moves it by this factor per step
DOMINANCE_PATIENCE = 5  # steps with λ·L_neg > |L_rec| in a row before it is a collapse


def contrast_ratio(lam: float, l_neg: float, l_rec: float) -> float:
    """λ·L_neg / |L_rec|: the SPN term's share of the objective (|.| keeps it meaningful
    for a signed loss; 0 when L_rec is 0)."""
    return lam * l_neg / abs(l_rec) if l_rec else 0.0


def lambda_for_band(ratio_per_lambda: float, band: tuple[float, float]) -> float | None:
    """mcir's heuristic suggestion, not the paper's: the λ that puts the contrast ratio at
    the band's geometric middle (√(lo·hi): 3.2 % for 1–10 %), from the run's mean ratio
    per unit λ (l_neg/|l_rec|; the ratio is linear in λ at given losses), to one
    significant digit; None when the SPN term was zero (negatives equal to the target)."""
    if not ratio_per_lambda > 0 or not math.isfinite(ratio_per_lambda):
        return None
    return float(f"{math.sqrt(band[0] * band[1]) / ratio_per_lambda:.1g}")


def lambda_hint(ratio_per_lambda: float, band: tuple[float, float]) -> str:
    """What to try when a run's contrast ratio left the band: `lambda_for_band`, said as
    mcir's heuristic."""
    lam = lambda_for_band(ratio_per_lambda, band)
    if lam is None:
        return "the SPN term was zero: no negatives (plain fine-tuning), or negatives equal to the target"
    return (f"try λ = {lam:g} (--lambda {lam:g}; mcir's heuristic: the λ that puts the ratio at "
            f"{math.sqrt(band[0] * band[1]):.1%}, the band's geometric middle, as the ratio scales with λ)")


@dataclass
class CollapseGuard:
    """Decides whether a step collapsed. Valid for every reconstruction loss mcir offers:
    the blow-up test compares a positive error (losses.error_magnitude), not the signed
    loss, with its running median."""

    factor: float = 10.0
    window: int = 100
    errors: deque = field(default_factory=deque)
    dominated: int = 0  # consecutive steps where the SPN term outweighed L_rec

    def __post_init__(self) -> None:
        self.errors = deque(self.errors, maxlen=self.window)  # the window, not a second 100

    def check(self, loss: float, grad_norm: float, error: float, ratio: float) -> str | None:
        """The reason this step is a collapse, or None for a healthy one."""
        if not math.isfinite(loss):
            return "non-finite loss"
        if not math.isfinite(grad_norm):
            return "non-finite gradient"
        if len(self.errors) >= MIN_HISTORY:
            # F x the median, and 4 x the worst healthy step of the window: small batches
            # of flat and textured patches spread over more than 10x on their own
            median, worst = statistics.median(self.errors), max(self.errors)
            if error > self.factor * median and error > 4 * worst:
                return f"l_rec {error:.4g} > {self.factor:g} x running median {median:.4g} (and 4 x the window's worst)"
        if ratio > 1.0 and self.dominated + 1 >= DOMINANCE_PATIENCE:
            return (f"λ·l_neg outweighed l_rec for {DOMINANCE_PATIENCE} steps (ratio {ratio:.3g}): "
                    "the run is pushed away from its history, not toward the ground truth")
        return None

    def accept(self, error: float, ratio: float) -> None:
        """Record a healthy step."""
        self.errors.append(error)
        self.dominated = self.dominated + 1 if ratio > 1.0 else 0

    def forget_dominance(self) -> None:
        self.dominated = 0

    def state_dict(self) -> dict[str, Any]:
        return {"rec_history": list(self.errors), "dominated": self.dominated}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.errors = deque(state.get("rec_history", ()), maxlen=self.window)
        self.dominated = int(state.get("dominated", 0))


Decision = Literal["continue", "roll back", "stop"]


def collapse_decision(reason: str | None, collapses: int, max_collapses: int) -> Decision:
    """What the loop does after a step (or a validation): go on when nothing collapsed;
    else roll back to the last good state, and stop there once the run has collapsed
    `max_collapses` times (`collapses` counts this one)."""
    if reason is None:
        return "continue"
    return "roll back" if collapses < max_collapses else "stop"


def validation_collapse(psnr: float | None, start_psnr: float | None, drop_db: float) -> str | None:
    """A validation far below the starting weights' is a collapse, however finite the
    losses looked (DCTLSA x4 with λ = 1: 32.52 -> 28.02 dB in 20 steps, below bicubic).
    None (no validation: DDP ranks other than 0 do not validate) is no collapse."""
    if psnr is None:
        return None
    if not math.isfinite(psnr):
        return "non-finite validation PSNR"
    if start_psnr is None or psnr >= start_psnr - drop_db:
        return None
    return f"validation PSNR {psnr:.2f} dB is {start_psnr - psnr:.2f} dB below the start's {start_psnr:.2f}"


@dataclass
class LambdaControl:
    """λ, optionally steered toward a contrast-ratio band (mcir's heuristic: neither the
    paper nor the authors' code gives a target for λ·L_neg/L_rec). Bounded, and
    subordinate to the guard: a collapse halves λ and lowers the ceiling to it, so auto
    can never climb back to the λ that collapsed."""

    lam: float
    auto: bool = False
    band: tuple[float, float] = RATIO_BAND
    ceiling: float | None = None
    floor: float | None = None
    out_of_band: int = 0
    ratio_sum: float = 0.0
    ratio_n: int = 0
    unit_sum: float = 0.0  # Σ ratio/λ = Σ l_neg/|l_rec|, each step's over its own λ
    unit_n: int = 0

    def __post_init__(self) -> None:
        if self.ceiling is None:
            self.ceiling = self.lam * AUTO_RANGE
        if self.floor is None:
            self.floor = self.lam / AUTO_RANGE

    def observe(self, ratio: float) -> None:
        """After a healthy step: the run's mean ratio, the out-of-band streak, and (auto)
        one bounded multiplicative move toward the band."""
        lo, hi = self.band
        self.ratio_sum, self.ratio_n = self.ratio_sum + ratio, self.ratio_n + 1
        if self.lam > 0:
            self.unit_sum, self.unit_n = self.unit_sum + ratio / self.lam, self.unit_n + 1
        self.out_of_band = self.out_of_band + 1 if not lo <= ratio <= hi else 0
        if not self.auto:
            return
        if ratio < lo:
            self.lam = min(self.lam * AUTO_RATE, self.ceiling)
        elif ratio > hi:
            self.lam = max(self.lam / AUTO_RATE, self.floor)

    def on_collapse(self) -> None:
        self.lam /= 2
        self.ceiling = min(self.ceiling, self.lam)
        self.floor = min(self.floor, self.lam)

    @property
    def mean_ratio(self) -> float | None:
        return self.ratio_sum / self.ratio_n if self.ratio_n else None

    @property
    def ratio_per_lambda(self) -> float | None:
        """The run's mean l_neg/|l_rec| (what `lambda_for_band` needs)."""
        return self.unit_sum / self.unit_n if self.unit_n else None

    def warning(self, patience: int) -> str | None:
        """The out-of-band warning, once, when the streak reaches `patience` steps."""
        if self.out_of_band != patience:
            return None
        lo, hi = self.band
        retry = "another --lambda" if self.auto else "--lambda auto or another --lambda"
        return (f"contrast ratio λ·l_neg/l_rec has stayed outside {lo:.0%}–{hi:.0%} for {patience} steps "
                f"(mcir's heuristic band, not from the paper); consider {retry}")

    def state_dict(self) -> dict[str, Any]:
        return {"lam": self.lam, "lam_ceiling": self.ceiling, "lam_floor": self.floor,
                "out_of_band": self.out_of_band, "ratio_sum": self.ratio_sum, "ratio_n": self.ratio_n,
                "unit_sum": self.unit_sum, "unit_n": self.unit_n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lam = float(state["lam"])
        self.ceiling = float(state.get("lam_ceiling", self.ceiling))
        self.floor = float(state.get("lam_floor", self.floor))
        self.out_of_band = int(state.get("out_of_band", 0))
        self.ratio_sum, self.ratio_n = float(state.get("ratio_sum", 0.0)), int(state.get("ratio_n", 0))
        self.unit_sum, self.unit_n = float(state.get("unit_sum", 0.0)), int(state.get("unit_n", 0))


@dataclass
class Rollback:
    """The last good states (CPU copies) the guard rolls back to: one every `every` steps,
    and the one before it (a snapshot right before the bad step holds the weights that
    produced the bad loss: rolling back onto them replays the collapse)."""

    every: int
    latest: dict[str, Any] | None = None
    previous: dict[str, Any] | None = None

    def take(self, step: int, snapshot: dict[str, Any], force: bool = False) -> None:
        if force or step % self.every == 0:
            self.previous, self.latest = self.latest, snapshot

    def target(self, first_bad_step: int) -> dict[str, Any]:
        """The newest snapshot older than the weights that produced `first_bad_step` (the
        collapsed step, or the first step of a dominance streak: snapshots are not taken
        inside one, so the one before it is never inside it either); right after a resume
        at a snapshot step there is no older one."""
        assert self.latest is not None
        if self.latest["step"] < first_bad_step - 1 or self.previous is None:
            return self.latest
        return self.previous

    def rolled_back_to(self, snapshot: dict[str, Any]) -> None:
        self.latest, self.previous = snapshot, None  # newer snapshots are suspect
