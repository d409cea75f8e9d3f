"""`seed_image_stats`, the verdict of `mcir study`, calibrated by simulation: with seeds and
images as two sources of variance (seed-to-seed spread like the one measured in the IMDN
fine-tuning study, ~0.0014 dB), a study with no true effect says "better"/"worse" in at
most 5 % of simulated studies (plus Monte-Carlo error), and a true effect of the size it
calls detectable is found at the power it claims."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mcir_cli import seed_image_stats
from mcir_cli.compare.stats import _detectable_factor

SIMS = 2000
MC = 3 * math.sqrt(0.05 * 0.95 / SIMS)  # three Monte-Carlo standard errors of a 5 % rate


def _studies(rng, k, n, sd_seed, sd_image, sd_noise, effect=0.0):
    """SIMS simulated studies: Δ[s, i] = effect + seed effect + image effect + noise."""
    return (effect + rng.normal(0, sd_seed, (SIMS, k, 1)) + rng.normal(0, sd_image, (SIMS, 1, n))
            + rng.normal(0, sd_noise, (SIMS, k, n)))


def _called(stats) -> bool:
    return stats.verdict.startswith(("better", "worse"))


# (seeds, images, sd of seed effects, sd of images' own effects, sd of noise)
NULL_CASES = [
    (3, 44, 0.0014, 0.0, 0.0014),  # the measured IMDN study: seeds as noisy as images
    (3, 44, 0.0014, 0.001, 0.0014),  # images with effects of their own (the old test's worst case)
    (3, 44, 0.0, 0.0, 0.0014),  # no seed effect at all
    (2, 44, 0.0014, 0.0, 0.0014),
    (5, 20, 0.001, 0.002, 0.003),
    (10, 5, 0.001, 0.001, 0.001),
]


@pytest.mark.parametrize("k,n,sa,sb,se", NULL_CASES)
def test_no_effect_is_called_at_most_at_the_nominal_rate(k, n, sa, sb, se):
    rng = np.random.default_rng(1000 * k + n)
    rate = np.mean([_called(seed_image_stats(d)) for d in _studies(rng, k, n, sa, sb, se)])
    assert rate <= 0.05 + MC, f"false verdicts in {rate:.1%} of studies with no effect"


def test_the_old_images_only_test_was_not_calibrated():
    """The check above can fail: a sign-flip test over images of seed-mean Δ (the study's
    old p) ignores the seed-to-seed spread and calls most null studies significant."""
    rng = np.random.default_rng(7)
    hits = 0
    for d in _studies(rng, 3, 44, 0.0014, 0.0, 0.0014)[:300]:
        per_image = d.mean(axis=0)
        t = per_image.mean() / (per_image.std(ddof=1) / math.sqrt(per_image.size))
        hits += abs(t) > 2.017  # the images-only test at 5 % (43 df), what sign flips approximate
    assert hits / 300 > 0.5


@pytest.mark.parametrize("k,n,sa,se", [(3, 44, 0.0014, 0.0014), (5, 20, 0.002, 0.003)])
def test_a_true_effect_is_found_at_the_power_it_claims(k, n, sa, se):
    """At the effect a design calls detectable (80 % power, from the true variances),
    about 80 % of simulated studies find it, and every one of them says "better"."""
    se_true = math.sqrt((n * sa**2 + se**2) / (k * n))
    effect = _detectable_factor(float(k - 1), 0.05, 0.8) * se_true
    rng = np.random.default_rng(k)
    verdicts = [seed_image_stats(d).verdict for d in _studies(rng, k, n, sa, 0.0, se, effect)]
    power = np.mean([v.startswith("better") for v in verdicts])
    assert not any(v.startswith("worse") for v in verdicts)
    assert abs(power - 0.8) <= 0.03 + 3 * math.sqrt(0.8 * 0.2 / SIMS), f"power {power:.1%}, claimed 80 %"


def test_detectable_effect_follows_the_design():
    """More seeds, smaller detectable effect; the verdict names it. With many degrees of
    freedom the factor is the normal one, z(0.975) + z(0.8)."""
    assert _detectable_factor(1e6, 0.05, 0.8) == pytest.approx(1.959964 + 0.841621, abs=1e-4)
    rng = np.random.default_rng(3)
    d = rng.normal(0, 0.0014, (10, 1)) + rng.normal(0, 0.0014, (10, 44))
    three, ten = seed_image_stats(d[:3]), seed_image_stats(d)
    assert ten.detectable < three.detectable
    assert f"cannot show a difference below {three.detectable:.4f} dB" in three.verdict
    assert three.df == 2 and three.ci[0] < three.mean < three.ci[1]
    # the CI and p come from one standard error: the CI excludes 0 exactly when p < 0.05
    for shift in np.linspace(-0.004, 0.004, 17):
        s = seed_image_stats(d[:3] + shift)
        assert (s.ci[0] > 0 or s.ci[1] < 0) == (s.p < 0.05)


def test_edge_cases():
    one_seed = seed_image_stats(np.full((1, 5), 0.1))
    assert math.isnan(one_seed.p) and one_seed.verdict.startswith("one seed")
    assert one_seed.to_dict()["p"] is None and one_seed.to_dict()["ci"] == [None, None]
    same = seed_image_stats(np.zeros((3, 4)))
    assert same.p == 1.0 and same.verdict.startswith("identical")
    clear = seed_image_stats(0.05 + 0.001 * np.random.default_rng(0).standard_normal((3, 40)))
    assert clear.verdict.startswith("better") and clear.p < 0.001 and clear.seeds_better == 3
    assert seed_image_stats(-0.05 + np.zeros((3, 1)) + [[0.001], [0.0], [-0.001]]).verdict.startswith("worse")
    with pytest.raises(ValueError):
        seed_image_stats(np.array([[np.nan, 1.0]]))
