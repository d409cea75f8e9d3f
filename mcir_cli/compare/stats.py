"""Paired statistics of two models' per-image scores: numpy (and scipy's t distribution),
no I/O, plain text.

For one metric on one dataset, `new - base` image by image: the mean delta, a 95 %
paired-bootstrap percentile interval, the share of images that improved and a two-sided
sign-flip permutation p-value (exact up to 16 images), plus `verdict`, the one sentence
that says what those numbers mean. For a study (seeds x images), `seed_image_stats` treats
seeds and images as two crossed sources of variance. Kept apart from loading and rendering
so that the numbers can be checked against hand-computed answers and by simulation.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize as _scipy_optimize
from scipy import stats as _scipy_stats

_EXACT_MAX_N = 16  # exact sign-flip enumeration up to 2**16 patterns
_CHUNK = 4_000_000  # elements per resampling chunk (bounds memory for large datasets)


def score_delta(base: float, new: float) -> float:
    """`new - base` for one image, with both-infinite (identical images on both sides)
    counted as 0, the rule `deltas_of` applies to arrays."""
    if math.isinf(base) and math.isinf(new) and (base > 0) == (new > 0):
        return 0.0
    return new - base


@dataclass
class PairedStats:
    """Paired comparison of one metric on one dataset: `new` vs `base`, image by image."""

    n: int  # images used
    mean_delta: float  # mean of new - base
    ci_low: float  # 95 % paired bootstrap percentile interval of the mean delta
    ci_high: float
    win_rate: float  # share of images with delta > 0
    wins: int
    p_value: float  # two-sided sign-flip permutation test of the mean delta
    exact: bool  # p from full enumeration of the 2**n sign patterns
    n_resamples: int
    seed: int
    skipped: int = 0  # images with a non-finite delta (PSNR inf on one side only)
    dataset: str = ""
    metric: str = "psnr"
    base_label: str = ""
    new_label: str = ""

    @property
    def significant(self) -> bool:
        """CI excludes 0 and p < 0.05."""
        return self.n > 1 and (self.ci_low > 0 or self.ci_high < 0) and self.p_value < 0.05

    def to_dict(self) -> dict:
        return asdict(self)


def deltas_of(base: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-image `new - base`, with both-infinite (identical-image PSNR on both sides)
    counted as 0; images whose delta is still not finite are skipped. Returns
    (finite deltas, number skipped)."""
    base = np.asarray(base, dtype=np.float64).reshape(-1)
    new = np.asarray(new, dtype=np.float64).reshape(-1)
    if base.shape != new.shape:
        raise ValueError(f"paired arrays differ in length: {base.size} vs {new.size}")
    with np.errstate(invalid="ignore"):
        delta = new - base
    both_inf = np.isinf(base) & np.isinf(new) & (np.sign(base) == np.sign(new))
    delta[both_inf] = 0.0
    finite = np.isfinite(delta)
    return delta[finite], int((~finite).sum())


def _bootstrap_ci(d: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    n = d.size
    if n == 1 or np.all(d == d[0]):
        return float(d[0]), float(d[0])
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        k = min(step, n_resamples - start)
        idx = rng.integers(0, n, size=(k, n))
        means[start : start + k] = d[idx].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _sign_flip_p(d: np.ndarray, n_resamples: int, seed: int) -> tuple[float, bool]:
    n = d.size
    observed = abs(d.mean())
    if n <= _EXACT_MAX_N:
        patterns = np.arange(2**n, dtype=np.int64)[:, None]
        signs = ((patterns >> np.arange(n)) & 1) * 2 - 1
        perm = np.abs(signs @ d / n)
        count = int((perm >= observed - 1e-12).sum())
        return count / 2**n, True
    rng = np.random.default_rng(seed)
    count = 0
    step = max(1, _CHUNK // n)
    for start in range(0, n_resamples, step):
        k = min(step, n_resamples - start)
        signs = rng.integers(0, 2, size=(k, n)) * 2 - 1
        perm = np.abs(signs @ d / n)
        count += int((perm >= observed - 1e-12).sum())
    return (count + 1) / (n_resamples + 1), False


def paired_stats(base: np.ndarray, new: np.ndarray, n_resamples: int = 10_000, seed: int = 0,
                 *, dataset: str = "", metric: str = "psnr", base_label: str = "",
                 new_label: str = "") -> PairedStats:
    """Paired statistics of `new - base` over images (see PairedStats). Infinite PSNR on
    both sides counts as delta 0; infinite on one side only is skipped (`skipped`).
    With no usable image every number is NaN and n = 0."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    d, skipped = deltas_of(base, new)
    common = dict(n_resamples=n_resamples, seed=seed, skipped=skipped, dataset=dataset,
                  metric=metric, base_label=base_label, new_label=new_label)
    if d.size == 0:
        nan = float("nan")
        return PairedStats(n=0, mean_delta=nan, ci_low=nan, ci_high=nan, win_rate=nan,
                           wins=0, p_value=nan, exact=True, **common)
    wins = int((d > 0).sum())
    low, high = _bootstrap_ci(d, n_resamples, seed)
    p, exact = _sign_flip_p(d, n_resamples, seed)
    return PairedStats(n=int(d.size), mean_delta=float(d.mean()), ci_low=low, ci_high=high,
                       win_rate=wins / d.size, wins=wins, p_value=float(p), exact=exact,
                       **common)


# the last digit the field's tables print: PSNR to 0.01 dB, SSIM to 0.0001. A mean Δ below
# half of it rounds to zero in any paper's table, whatever its p: "negligible", not "real".
PRINTED_STEP = {"psnr": 0.01, "ssim": 0.0001}


def _decimals(stats: PairedStats) -> int:
    """The table's digits (PSNR 2, SSIM 4), or as many as show two significant digits of
    a mean Δ those would print as 0.00: a verdict must show the size it is about. One
    precision for the mean and its CI, so the three numbers read alike."""
    table = 4 if stats.metric == "ssim" else 2
    x = abs(stats.mean_delta)
    if x == 0 or not _below_printed_step(stats):
        return table
    return min(max(table, 1 - math.floor(math.log10(x))), 10)


def _below_printed_step(stats: PairedStats) -> bool:
    """The mean Δ rounds to zero at the field's printed digits (PRINTED_STEP)."""
    return abs(stats.mean_delta) < PRINTED_STEP.get(stats.metric, 0.01) / 2


def _fmt_delta(x: float, metric: str, decimals: int) -> str:
    return f"{x:+.{decimals}f}" + ("" if metric == "ssim" else " dB")


def _fmt_ci(x: float, decimals: int) -> str:
    return f"{x:+.{decimals}f}"


def fmt_p(p: float) -> str:
    """A p-value as every table shows it: 3 decimals, "< 0.001" below, "-" when undefined."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if math.isfinite(p) else "-"


def p_phrase(p: float) -> str:
    """The p of a sentence: "p = 0.953", "p < 0.001"."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def verdict(stats: PairedStats, with_labels: bool = False) -> str:
    """One plain sentence stating the gain, its 95 % CI, the win count, p and what that
    means. `with_labels` names the two models (useful with more than two results)."""
    head = stats.dataset or stats.metric.upper()
    if with_labels and (stats.new_label or stats.base_label):
        head = f"{stats.new_label} vs {stats.base_label}, {head}"
    if stats.metric != "psnr":
        head = f"{head} ({stats.metric.upper()})"
    note = ""
    if stats.skipped:
        note = (f" ({stats.skipped} image{'s' if stats.skipped != 1 else ''} skipped: "
                f"{stats.metric.upper()} infinite on one side only.)")
    if stats.n == 0:
        return f"{head}: no image with a finite difference to compare.{note}"
    m, dp = stats.metric, _decimals(stats)
    if stats.n == 1:
        return (f"{head}: {_fmt_delta(stats.mean_delta, m, dp)} on the only image — a single "
                f"image cannot show whether the difference is real.{note}")
    if stats.mean_delta == 0 and stats.ci_low == 0 and stats.ci_high == 0:
        return f"{head}: identical scores on all {stats.n} images (Δ 0).{note}"
    text = (f"{head}: {_fmt_delta(stats.mean_delta, m, dp)} [95 % CI {_fmt_ci(stats.ci_low, dp)}, "
            f"{_fmt_ci(stats.ci_high, dp)}], better on {stats.wins} of {stats.n} images, "
            f"{p_phrase(stats.p_value)}")
    if stats.significant:
        kind = "improvement" if stats.mean_delta > 0 else "regression"
        if _below_printed_step(stats):
            unit = "" if m == "ssim" else " dB"
            text += (f" — a consistent but negligible {kind} (CI excludes 0, p < 0.05, yet "
                     f"smaller than the {PRINTED_STEP.get(m, 0.01):g}{unit} a results table prints).")
        else:
            text += f" — a real {kind} (CI excludes 0, p < 0.05)."
    else:
        excludes = stats.ci_low > 0 or stats.ci_high < 0
        min_p = 2 / 2**stats.n
        if min_p >= 0.05:
            text += (f" — too few images to call: with {stats.n} images no difference can reach "
                     f"p < 0.05 (the smallest possible p is {min_p:.3g})")
            if excludes:
                text += "; the CI excludes 0, but a bootstrap over so few images is optimistic"
        elif excludes:
            text += (" — not established at 5 %: the bootstrap CI excludes 0 but the permutation "
                     "test does not (p ≥ 0.05)")
        else:
            text += " — not distinguishable from noise at 5 %"
        text += "."
    return text + note


@dataclass
class SeedImageStats:
    """Δ of one arm against a baseline over K seeds x n images (`seed_image_stats`)."""

    mean: float  # mean Δ over every (seed, image) pair
    ci: tuple[float, float]  # 95 % t interval from the same variance as p
    p: float  # two-sided t test over seeds, images' own effects in its error (NaN with one seed)
    df: float  # degrees of freedom: seeds − 1
    se: float  # standard error of `mean`
    detectable: float  # smallest |Δ| found at `power` and `alpha` with this design and noise
    win_rate: float  # share of (seed, image) pairs with Δ > 0
    ties: float  # share with Δ == 0
    per_seed: list[float]  # each seed's mean Δ over images
    seeds_better: int
    seeds: int
    images: int
    verdict: str
    alpha: float = 0.05
    power: float = 0.8

    def to_dict(self) -> dict:
        """JSON-ready: undefined numbers (one seed) become None."""
        d = asdict(self)
        d["ci"] = list(self.ci)
        return {k: [_json_number(x) for x in v] if k == "ci" else _json_number(v) for k, v in d.items()}


def _json_number(x: object) -> object:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _mean_squares(d: np.ndarray) -> tuple[float, float, float]:
    """Two-way crossed layout without replication: mean squares of seeds, images and the
    residual (seed x image)."""
    k, n = d.shape
    m, rows, cols = d.mean(), d.mean(axis=1), d.mean(axis=0)
    ms_seed = n * float(((rows - m) ** 2).sum()) / (k - 1)
    if n == 1:
        return ms_seed, 0.0, 0.0
    ms_image = k * float(((cols - m) ** 2).sum()) / (n - 1)
    resid = d - rows[:, None] - cols[None, :] + m
    return ms_seed, ms_image, float((resid**2).sum()) / ((k - 1) * (n - 1))


def _standard_error(d: np.ndarray) -> float:
    """Standard error of the mean Δ with seed effects a, image effects b and noise e:
    Var(mean) = σa²/K + σb²/n + σe²/(K·n). The seed means' spread (MS_seed) estimates
    σa²/K + σe²/(K·n) times K·n; the image term is added from (MS_image − MS_resid)⁺.
    Tested with K − 1 degrees of freedom (the seed count is the sample size): exact when
    images carry no effect of their own, conservative when they do (tests/compare/test_stats_seeds.py
    simulates both)."""
    k, n = d.shape
    ms_s, ms_i, ms_e = _mean_squares(d)
    return math.sqrt((ms_s + max(ms_i - ms_e, 0.0)) / (k * n))


@functools.lru_cache(maxsize=256)
def _detectable_factor(df: float, alpha: float, power: float) -> float:
    """δ/SE at which a two-sided t test with `df` degrees of freedom rejects with
    probability `power` (noncentral t, solved exactly)."""
    crit = float(_scipy_stats.t.ppf(1 - alpha / 2, df))

    def miss(nc: float) -> float:  # the far tail is below 1e-3 wherever it matters; scipy may return NaN there
        far = float(_scipy_stats.nct.sf(crit, df, -nc))
        return float(_scipy_stats.nct.sf(crit, df, nc)) + (far if math.isfinite(far) else 0.0) - power

    return float(_scipy_optimize.brentq(miss, 0.0, 4.0 * crit + 10.0))


def seed_image_stats(deltas: np.ndarray, alpha: float = 0.05, power: float = 0.8,
                     baseline: str = "plain fine-tuning", unit: str = "dB") -> SeedImageStats:
    """Mean Δ, CI, p and verdict for a seeds x images array of Δ (arm − baseline, the same
    seed's runs paired image by image). Seed-to-seed and image-to-image variation both
    enter the standard error (`_standard_error`) and the seed count sets the degrees of
    freedom, so three seeds carry three seeds' worth of evidence however many images there
    are; the verdict says how small a difference the design could have shown
    (`detectable`, at `power`). Calibrated by simulation in tests/compare/test_stats_seeds.py."""
    d = np.asarray(deltas, dtype=np.float64)
    d = d[None, :] if d.ndim == 1 else d
    if d.ndim != 2 or d.size == 0 or not np.all(np.isfinite(d)):
        raise ValueError("deltas must be a non-empty, finite seeds x images array")
    k, n = d.shape
    mean, per_seed = float(d.mean()), d.mean(axis=1)
    common = dict(win_rate=float(np.mean(d > 0)), ties=float(np.mean(d == 0)), per_seed=[float(x) for x in per_seed],
                  seeds_better=int(np.sum(per_seed > 0)), seeds=k, images=n, alpha=alpha, power=power)
    nan = float("nan")
    if k < 2:
        return SeedImageStats(mean, (nan, nan), nan, nan, nan, nan, verdict=(
            "one seed: seed-to-seed variation is unknown, so no verdict (run 3 or more seeds)"), **common)
    se, df = _standard_error(d), float(k - 1)
    t_half = float(_scipy_stats.t.ppf(1 - alpha / 2, df))
    detectable = _detectable_factor(df, alpha, power) * se
    if se == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * _scipy_stats.t.sf(abs(mean) / se, df))
    ci = (mean - t_half * se, mean + t_half * se)
    if se == 0 and mean == 0:
        text = f"identical to {baseline} on every image and seed"
    elif p < alpha:
        text = (f"{'better' if mean > 0 else 'worse'} than {baseline} ({p_phrase(p)}, "
                f"seeds and images both counted as noise)")
    else:
        text = (f"not distinguishable from {baseline} at {alpha * 100:g} %: {k} seeds x {n} images cannot show "
                f"a difference below {detectable:.4f} {unit} ({power * 100:g} % power)")
    return SeedImageStats(mean, ci, p, df, se, detectable, verdict=text, **common)
