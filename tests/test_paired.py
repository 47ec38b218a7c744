"""Seed-paired statistics of the regularisation experiment (srrlab.report.paired): values against
closed forms and a naive reference, and calibration on simulated seeds (size, coverage, power)."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from srrlab.report.paired import (EFFECT_VERDICTS, PairedEffect, detectable_effect, effect_sentence, holm,
                                  paired_effect, pooled_effect, t_test_power)

REPS = 3000


def _binomial_band(p: float, reps: int, z: float = 4.0) -> tuple[float, float]:
    half = z * math.sqrt(p * (1 - p) / reps)
    return p - half, p + half


def test_interval_and_test_match_a_hand_computed_t_interval():
    d = np.array([0.5, -0.2, 1.1, 0.3, 0.0, 0.8, -0.4, 0.6])
    e = paired_effect(d)
    n, m, s = len(d), d.mean(), d.std(ddof=1)
    t = stats.t.ppf(0.975, n - 1)
    assert e.n == n and e.mean == pytest.approx(m) and e.sd == pytest.approx(s)
    assert (e.ci_low, e.ci_high) == pytest.approx((m - t * s / math.sqrt(n), m + t * s / math.sqrt(n)))
    assert e.p_value == pytest.approx(stats.ttest_1samp(d, 0.0).pvalue)
    # the interval excludes 0 exactly when the test rejects at 5 %
    for shift in np.linspace(-1.5, 1.5, 31):
        f = paired_effect(d + shift)
        assert (f.p_value < 0.05) == (f.ci_low > 0 or f.ci_high < 0)


def test_level_widens_the_interval_and_nans_are_dropped():
    d = [0.1, 0.4, -0.3, 0.2, float("nan"), 0.5]
    e95, e99 = paired_effect(d), paired_effect(d, level=0.99)
    assert e95.n == 5 and e99.ci_low < e95.ci_low < e95.ci_high < e99.ci_high


def test_degenerate_inputs():
    assert paired_effect([]).n == 0 and paired_effect([]).verdict() == "too few seeds"
    one = paired_effect([0.7])
    assert one.n == 1 and one.mean == 0.7 and np.isnan(one.ci_low) and one.verdict() == "too few seeds"
    same = paired_effect([0.5, 0.5, 0.5])
    assert (same.ci_low, same.ci_high, same.p_value, same.detectable) == (0.5, 0.5, 0.0, 0.0)
    assert same.verdict() == "improves"
    zero = paired_effect([0.0, 0.0])
    assert zero.p_value == 1.0 and zero.verdict() == "no effect detected"
    with pytest.raises(ValueError, match="level"):
        paired_effect([1.0, 2.0], level=95)
    assert set(EFFECT_VERDICTS) >= {paired_effect(x).verdict() for x in ([1, 2, 3], [-1, -2, -3], [-1, 1, 0.1])}


def test_power_at_zero_effect_is_the_level_and_grows_with_the_effect():
    assert t_test_power(0.0, 12, 1.0) == pytest.approx(0.05, abs=1e-9)
    powers = [t_test_power(e, 12, 1.0) for e in (0.2, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(powers, powers[1:])) and powers[-1] > 0.99
    assert t_test_power(-0.5, 12, 1.0) == pytest.approx(t_test_power(0.5, 12, 1.0))
    with pytest.raises(ValueError, match="n must"):
        t_test_power(1.0, 1, 1.0)


def test_detectable_effect_inverts_power_and_approaches_the_normal_formula():
    for n in (3, 10, 20):
        delta = detectable_effect(n, 2.0)
        assert t_test_power(delta, n, 2.0) == pytest.approx(0.8, abs=1e-9)
        assert detectable_effect(n, 4.0) == pytest.approx(2 * delta)  # linear in the standard deviation
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # large n: (z_{1-α/2} + z_power) σ / √n
    assert detectable_effect(4000, 1.0) * math.sqrt(4000) == pytest.approx(z, rel=2e-3)
    assert detectable_effect(10, 1.0, power=0.9) > detectable_effect(10, 1.0)
    assert np.isnan(detectable_effect(1, 1.0)) and detectable_effect(5, 0.0) == 0.0


@pytest.mark.parametrize("null", ["normal", "heavy-tailed"])
def test_the_test_rejects_a_true_null_at_its_level_and_the_interval_covers(null):
    rng = np.random.default_rng(1)
    n = 10
    draws = rng.normal(0.3, 1.0, (REPS, n)) if null == "normal" else 0.3 + rng.standard_t(5, (REPS, n))
    effects = [paired_effect(d, power=None) for d in draws]
    reject = np.mean([e.p_value < 0.05 for e in effects])
    cover = np.mean([e.ci_low <= 0.3 <= e.ci_high for e in effects])
    lo, hi = _binomial_band(0.05, REPS)
    # the size is tested on the differences around their true mean (the null is E d = 0.3 here)
    size = np.mean([paired_effect(d - 0.3, power=None).p_value < 0.05 for d in draws])
    assert lo <= size <= hi
    lo, hi = _binomial_band(0.95, REPS)
    assert lo <= cover <= hi
    assert reject > size  # a true effect of 0.3 σ is found more often than a null one


def test_an_effect_of_the_detectable_size_is_found_with_the_stated_power():
    rng = np.random.default_rng(2)
    n, sd = 12, 1.5
    delta = detectable_effect(n, sd)
    found = np.mean([paired_effect(d, power=None).p_value < 0.05 for d in rng.normal(delta, sd, (REPS, n))])
    lo, hi = _binomial_band(0.8, REPS)
    assert lo <= found <= hi


def test_pooled_effect_averages_the_variants_per_seed():
    table = pd.DataFrame({"crate": [0.5, 0.1, 0.3, 0.9], "crate-t": [0.2, -0.1, np.nan, 0.4],
                          "crate-c": [0.0, 0.3, 0.2, 0.1]}, index=[0, 1, 2, 3])
    effect, dropped = pooled_effect(table)
    means = [(0.5 + 0.2 + 0.0) / 3, (0.1 - 0.1 + 0.3) / 3, (0.9 + 0.4 + 0.1) / 3]  # seed 2 lacks crate-t
    assert dropped == 1 and effect.n == 3
    assert effect.mean == pytest.approx(np.mean(means)) and effect.sd == pytest.approx(np.std(means, ddof=1))
    with pytest.raises(ValueError, match="one column per variant"):
        pooled_effect(pd.DataFrame())


def test_sentences_say_which_way_and_how_much():
    up = PairedEffect(20, 0.41, 0.6, 0.12, 0.70, 0.008, 0.39)
    assert effect_sentence(up) == "improves by 0.41 [0.12, 0.70] points (95% interval, p = 0.008)"
    down = PairedEffect(20, -0.5, 0.6, -0.8, -0.2, 0.002, 0.39)
    assert effect_sentence(down).startswith("hurts by 0.50 [0.20, 0.80] points")
    flat = PairedEffect(20, 0.1, 0.9, -0.31, 0.52, 0.6, 0.55)
    assert effect_sentence(flat) == ("no effect larger than 0.52 points (Δ = +0.10 [-0.31, +0.52], p = 0.60; "
                                     "80% power at ±0.55)")
    # a loss: a negative difference improves
    assert effect_sentence(down, "nats", higher_is_better=False).startswith("improves by 0.50")
    assert down.verdict(higher_is_better=False) == "improves"
    assert effect_sentence(paired_effect([1.0])) == "too few seeds to say (n = 1)"


def _naive_holm(p):
    """Holm's procedure written out: step down through the sorted p-values."""
    idx = [i for i in range(len(p)) if math.isfinite(p[i])]
    idx.sort(key=lambda i: p[i])
    m, out, running = len(idx), [float("nan")] * len(p), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def test_holm_matches_the_procedure_and_controls_the_familywise_error():
    p = [0.01, 0.04, float("nan"), 0.03, 0.2, 0.005]
    np.testing.assert_allclose(holm(p), _naive_holm(p), equal_nan=True)
    assert np.isnan(holm(p)[2]) and holm([])[:0].size == 0 and np.isnan(holm([float("nan")])).all()
    rng = np.random.default_rng(4)
    family = rng.uniform(size=(REPS, 10))  # ten true nulls per family
    any_rejection = np.mean([(holm(row) < 0.05).any() for row in family])
    assert any_rejection <= 0.05 + 4 * math.sqrt(0.05 * 0.95 / REPS)
    assert np.mean((family < 0.05).any(axis=1)) > 0.3  # unadjusted, about 1 − 0.95^10 = 0.40
