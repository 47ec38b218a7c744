"""Rank statistics of spec §6 (srrlab.correlation): values against hand computations and brute force."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from srrlab.correlation import uncertainty
from srrlab.correlation import (
    KendallTest,
    PairedComparison,
    compare_measures,
    conditional_mutual_information,
    correlation_table,
    default_axes,
    granulated_kendall,
    hoeffding_weight,
    kendall_tau,
    kendall_test,
    robust_sign_error,
)


def brute_tau(x, y):
    n = len(x)
    s = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                s += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return s / (n * (n - 1))


def grid(**axes):
    """Full grid over the given axes, as hp.* columns."""
    names = list(axes)
    rows = [dict(zip([f"hp.{a}" for a in names], values)) for values in itertools.product(*axes.values())]
    return pd.DataFrame(rows)


def brute_cmi(mu, g, hps, S):
    """The normalised conditional mutual information of one conditioning set, by explicit counting."""
    n = len(mu)
    pairs = [(i, j) for i in range(n) for j in range(n) if i != j and hps[i] != hps[j]]
    joint, cell, cell_m, cell_g = Counter(), Counter(), Counter(), Counter()
    for i, j in pairs:
        u = tuple((hps[i][a], hps[j][a]) for a in S)
        vm, vg = np.sign(mu[i] - mu[j]), np.sign(g[i] - g[j])
        joint[u, vm, vg] += 1
        cell[u] += 1
        cell_m[u, vm] += 1
        cell_g[u, vg] += 1
    N = len(pairs)
    mi = sum(c / N * math.log(c * cell[u] / (cell_m[u, vm] * cell_g[u, vg])) for (u, vm, vg), c in joint.items())
    h = -sum(c / N * math.log(c / cell[u]) for (u, vg), c in cell_g.items())
    return mi / h


# ---------------------------------------------------------------------------------------------- kendall_tau


def test_kendall_tau_matches_scipy_without_ties():
    rng = np.random.default_rng(0)
    for n in (2, 3, 10, 57):
        x, y = rng.normal(size=n), rng.normal(size=n)
        assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_kendall_tau_with_ties_is_tau_a():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, size=25).astype(float)
    y = rng.integers(0, 4, size=25).astype(float)
    assert kendall_tau(x, y) == pytest.approx(brute_tau(x, y), abs=1e-12)
    # τ-a differs from scipy's tie-corrected τ-b when there are ties
    assert kendall_tau(x, y) != pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-6)
    assert kendall_tau([1, 1, 1, 1], [1, 2, 3, 4]) == 0.0
    assert kendall_tau([2.0, 2.0], [2.0, 2.0]) == 0.0
    # a hand value: pairs (12: +·+), (13: 0·+), (23: −·+) → (1 + 0 − 1)·2 / 6 = 0
    assert kendall_tau([1, 2, 1], [1, 2, 3]) == pytest.approx(0.0)
    # (12: +·+), (13: +·+), (23: 0·−) → 2·2/6 = 2/3
    assert kendall_tau([1, 2, 2], [1, 3, 2]) == pytest.approx(2 / 3)


def test_kendall_tau_symmetry_and_extremes():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=40), rng.normal(size=40)
    assert kendall_tau(x, y) == pytest.approx(kendall_tau(y, x), abs=1e-15)
    assert kendall_tau(x, x) == pytest.approx(1.0)
    assert kendall_tau(x, -x) == pytest.approx(-1.0)
    assert kendall_tau(x, np.exp(x)) == pytest.approx(1.0)  # rank-based


def test_kendall_tau_degenerate_and_chunked():
    assert math.isnan(kendall_tau([], []))
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([1.0, np.nan], [2.0, 3.0]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2, 3], [1, 2])
    import srrlab.correlation.rank as corr

    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 5, size=300), rng.normal(size=300)
    full = kendall_tau(x, y)
    old = corr._CHUNK_ELEMENTS
    try:
        corr._CHUNK_ELEMENTS = 1000  # force row blocks of 3
        assert kendall_tau(x, y) == pytest.approx(full, abs=1e-12)
    finally:
        corr._CHUNK_ELEMENTS = old


# ---------------------------------------------------------------------------------------------- granulated


def hand_table():
    """3×2 grid (a ∈ {0,1,2}, b ∈ {0,1}) with ties, values chosen for hand computation."""
    t = grid(a=[0, 1, 2], b=[0, 1])  # rows: (0,0) (0,1) (1,0) (1,1) (2,0) (2,1)
    t["measure.m"] = [1, 5, 2, 4, 3, 3]
    t["gen.gap_ce"] = [1, 4, 3, 5, 2, 6]
    return t


def test_granulated_hand_computed():
    t = hand_table()
    r = granulated_kendall(t, ["a", "hp.b"], "m", "gap_ce")
    # axis a, group b=0: models a=0,1,2 with μ (1,2,3), g (1,3,2): pairs 01 (+,+), 02 (+,+), 12 (+,−) → τ = 1/3
    #         group b=1: μ (5,4,3), g (4,5,6): every pair discordant → τ = −1;  ψ_a = (1/3 − 1)/2 = −1/3
    # axis b, group a=0: μ 1→5, g 1→4 → +1;  a=1: μ 2→4, g 3→5 → +1;  a=2: μ 3→3 (tie) → 0;  ψ_b = 2/3
    assert r.psi["a"] == pytest.approx(-1 / 3)
    assert r.psi["b"] == pytest.approx(2 / 3)
    assert r.Psi == pytest.approx((-1 / 3 + 2 / 3) / 2)
    assert r.groups_used == {"a": 2, "b": 3}
    assert r.groups_skipped == {"a": 0, "b": 0}
    assert r.tau == pytest.approx(brute_tau(t["measure.m"].to_numpy(), t["gen.gap_ce"].to_numpy()))
    assert (r.n_models, r.n_dropped) == (6, 0)
    # names with prefixes give the same result
    r2 = granulated_kendall(t, ["hp.a", "b"], "measure.m", "gen.gap_ce")
    assert (r2.psi, r2.Psi, r2.tau) == (r.psi, r.Psi, r.tau)


def test_granulated_2x2x2_and_single_axis():
    t = grid(x=[0, 1], y=[0, 1], z=[0, 1])
    # gap grows with x and y, falls with z; the measure follows x and y but not z
    t["gen.gap_ce"] = 4 * t["hp.x"] + 2 * t["hp.y"] - t["hp.z"]
    t["measure.m"] = 4 * t["hp.x"] + 2 * t["hp.y"] + t["hp.z"]
    r = granulated_kendall(t, ["x", "y", "z"], "m")
    # every group has 2 models; x and y pairs concordant (τ = 1), z pairs discordant (τ = −1)
    assert r.psi == {"x": 1.0, "y": 1.0, "z": -1.0}
    assert r.Psi == pytest.approx(1 / 3)
    assert r.groups_used == {"x": 4, "y": 4, "z": 4}
    # one axis: a single group of all models, ψ = τ
    r1 = granulated_kendall(t, ["x"], "m")
    assert r1.psi["x"] == pytest.approx(r1.tau)
    assert r1.groups_used == {"x": 1}


def test_granulated_skips_incomplete_groups():
    t = hand_table().iloc[:5]  # drop model (a=2, b=1)
    r = granulated_kendall(t, ["a", "b"], "m")
    # axis b: group a=2 now has only b=0 → skipped; ψ_b = mean(+1, +1) = 1
    assert r.groups_skipped == {"a": 0, "b": 1}
    assert r.groups_used == {"a": 2, "b": 2}
    assert r.psi["b"] == pytest.approx(1.0)
    # axis a: group b=0 unchanged (1/3); group b=1 has a=0,1: μ 5→4, g 4→5 → −1
    assert r.psi["a"] == pytest.approx((1 / 3 - 1) / 2)


def test_granulated_drops_nan_rows():
    t = hand_table()
    t.loc[5, "measure.m"] = np.nan  # same as removing model (2, 1)
    r = granulated_kendall(t, ["a", "b"], "m")
    assert (r.n_models, r.n_dropped) == (5, 1)
    assert r.psi["b"] == pytest.approx(1.0)
    t.loc[0, "gen.gap_ce"] = np.nan
    assert granulated_kendall(t, ["a", "b"], "m").n_dropped == 2


# ---------------------------------------------------------------------------------------------- CMI


def cmi_table(seed=0):
    t = grid(a=[0, 1], b=[0, 1, 2], c=[0, 1])
    rng = np.random.default_rng(seed)
    t["gen.gap_ce"] = t["hp.b"] + 0.7 * t["hp.c"] + rng.normal(scale=0.5, size=len(t))
    return t


def test_cmi_zero_for_a_measure_explained_by_an_axis():
    t = cmi_table()
    # the measure depends only on axis a, which the gap does not depend on; given U_{a} it is constant,
    # so the conditional distribution of (V_μ, V_g) factors exactly in every cell
    t["measure.m"] = 3.0 * t["hp.a"]
    r = conditional_mutual_information(t, ["a", "b", "c"], "m")
    assert r.value == pytest.approx(0.0, abs=1e-12)
    assert r.per_set[("a",)] == pytest.approx(0.0, abs=1e-12)
    assert r.per_set[("a", "b")] == pytest.approx(0.0, abs=1e-12)
    assert "a" in r.argmin
    assert len(r.per_set) == 1 + 3 + 3  # ∅, singletons, pairs
    assert r.n_pairs == 12 * 11


def test_cmi_one_for_the_gap_order():
    t = cmi_table()
    t["measure.m"] = np.exp(t["gen.gap_ce"])  # same order as the gap
    r = conditional_mutual_information(t, ["a", "b", "c"], "m")
    assert r.value == pytest.approx(1.0, abs=1e-12)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in r.per_set.values())


def test_cmi_matches_brute_force_and_lies_in_unit_interval():
    rng = np.random.default_rng(5)
    for seed in range(3):
        t = cmi_table(seed)
        t["measure.m"] = np.round(rng.normal(size=len(t)), 1) + 0.3 * t["hp.b"]
        r = conditional_mutual_information(t, ["a", "b", "c"], "m")
        hps = [tuple(row) for row in t[["hp.a", "hp.b", "hp.c"]].to_numpy()]
        mu, g = t["measure.m"].to_numpy(), t["gen.gap_ce"].to_numpy()
        for S, v in r.per_set.items():
            idx = tuple("abc".index(s) for s in S)
            assert v == pytest.approx(brute_cmi(mu, g, hps, idx), abs=1e-12)
            assert 0.0 <= v <= 1.0
        assert r.value == min(r.per_set.values())
        assert r.per_set[r.argmin] == r.value
    # max_conditioning limits the sets
    r1 = conditional_mutual_information(t, ["a", "b", "c"], "m", max_conditioning=1)
    assert set(r1.per_set) == {(), ("a",), ("b",), ("c",)}
    r0 = conditional_mutual_information(t, ["a", "b", "c"], "m", max_conditioning=0)
    assert set(r0.per_set) == {()}


def test_cmi_undefined_when_the_gap_order_is_fixed_by_the_set():
    t = grid(a=[0, 1], b=[0, 1])
    t["gen.gap_ce"] = 2.0 * t["hp.a"] + t["hp.b"]  # the gap's order is fixed by (a, b)
    t["measure.m"] = [0.3, 0.1, 0.4, 0.2]
    r = conditional_mutual_information(t, ["a", "b"], "m")
    assert math.isnan(r.per_set[("a", "b")])  # H(V_g | U_{a,b}) = 0
    assert r.value == min(v for v in r.per_set.values() if not math.isnan(v))


# ---------------------------------------------------------------------------------------------- sign error


def test_sign_error_extremes_and_count():
    t = grid(a=[0, 1], b=[0, 1, 2], c=["x", "y"])
    t["gen.gap_ce"] = np.random.default_rng(0).normal(size=len(t))
    t["measure.same"] = 2 * t["gen.gap_ce"] + 1
    t["measure.opposite"] = -t["gen.gap_ce"]
    t["measure.const"] = 1.0
    same = robust_sign_error(t, ["a", "b", "c"], "same")
    opposite = robust_sign_error(t, ["a", "b", "c"], "opposite")
    const = robust_sign_error(t, ["a", "b", "c"], "const")
    # one-axis-differing pairs: a: 6·1, b: 4·3, c: 6·1
    n_pairs = sum(
        1 for i, j in itertools.combinations(range(len(t)), 2)
        if (t.iloc[i][["hp.a", "hp.b", "hp.c"]] != t.iloc[j][["hp.a", "hp.b", "hp.c"]]).sum() == 1)
    assert n_pairs == 6 + 12 + 6
    for r in (same, opposite, const):
        assert r.count == n_pairs == len(r.environments)
    assert (same.mean, same.p90, same.max) == (0.0, 0.0, 0.0)
    assert (opposite.mean, opposite.p90, opposite.max) == (1.0, 1.0, 1.0)
    assert (const.mean, const.max) == (0.5, 0.5)  # ties count ½
    assert {k: v["count"] for k, v in same.per_axis.items()} == {"a": 6, "b": 12, "c": 6}


def test_sign_error_hand_computed():
    t = grid(a=[0, 1], b=[0, 1])  # rows (0,0) (0,1) (1,0) (1,1)
    t["measure.m"] = [1.0, 2.0, 3.0, 1.5]
    t["gen.gap_ce"] = [1.0, 3.0, 2.0, 2.0]
    r = robust_sign_error(t, ["a", "b"], "m")
    # b varies: (00,01): μ +, g + → 0;   (10,11): μ −, g 0 (tie) → ½
    # a varies: (00,10): μ +, g + → 0;   (01,11): μ −, g − → 0
    errors = sorted([0.0, 0.5, 0.0, 0.0])
    assert r.count == 4
    assert r.mean == pytest.approx(0.125)
    assert r.max == pytest.approx(0.5)
    assert r.p90 == pytest.approx(np.percentile(errors, 90))  # 0.35
    assert r.per_axis["b"]["mean"] == pytest.approx(0.25)
    assert r.per_axis["a"]["max"] == 0.0
    env = r.environments.set_index(["row_a", "row_b"])
    assert env.loc[(2, 3), "sign_error"] == 0.5
    assert env.loc[(2, 3), "axis"] == "b"


def test_sign_error_replicates_and_noise_filter():
    t = grid(a=[0, 1], b=[0, 1])
    t = pd.concat([t.assign(**{"hp.seed": s}) for s in range(3)], ignore_index=True)
    rng = np.random.default_rng(1)
    t["gen.gap_err"] = 0.1 * t["hp.a"] + rng.normal(scale=0.001, size=len(t))
    t["measure.m"] = t["hp.a"] + rng.normal(scale=0.01, size=len(t))
    assert "hp.seed" not in default_axes(t)
    r = robust_sign_error(t, ["a", "b"], "m", "gap_err")
    assert r.count == 4  # environments are pairs of configurations, replicates averaged inside
    assert (r.environments["n_pairs"] == 9).all()
    # a-environments: μ and g both follow a → error 0
    assert r.per_axis["a"]["max"] == 0.0
    # with the Hoeffding filter (n = 10 000 test samples) only the a-environments (|Δg| ≈ 0.1) survive
    rf = robust_sign_error(t, ["a", "b"], "m", "gap_err", noise_n=10_000)
    assert rf.count == 2 and rf.n_filtered == 2
    assert rf.mean == 0.0
    assert hoeffding_weight(0.0, 10_000) == 0.0
    assert 0.4 < float(hoeffding_weight(0.1, 10_000)) <= 0.5


# ---------------------------------------------------------------------------------------------- table


def study_table(n_measures=30, seed=0):
    t = grid(batch_size=[32, 64], lr=[1e-3, 1e-4], width=[192, 384], dropout=[0.0, 0.1],
             model=["crate", "crate-c", "crate-n", "crate-t"])
    t["hp.seed"] = 0
    t["hp.epochs"] = 10  # constant: not a default axis
    rng = np.random.default_rng(seed)
    t["gen.gap_ce"] = rng.normal(size=len(t)) + 0.5 * np.log10(t["hp.lr"])
    for k in range(n_measures):
        t[f"measure.m{k}"] = rng.normal(size=len(t)) + 0.1 * k * t["gen.gap_ce"]
    return t


def test_correlation_table_layout_and_values():
    t = study_table(n_measures=4)
    t.loc[[3, 10], "measure.m2"] = np.nan
    tab = correlation_table(t)
    axes = ["batch_size", "lr", "width", "dropout", "model"]
    assert list(tab.index) == ["m0", "m1", "m2", "m3"]
    assert list(tab.columns) == [f"psi.{a}" for a in axes] + [
        "tau", "tau_p", "tau_lo", "tau_hi", "Psi", "Psi_p", "cmi", "sign_error.mean", "sign_error.p90",
        "sign_error.max", "sign_error.count", "n_models", "n_dropped"]
    for m in tab.index:
        gk = granulated_kendall(t, axes, m)
        cmi = conditional_mutual_information(t, axes, m)
        se = robust_sign_error(t, axes, m)
        row = tab.loc[m]
        for a in axes:
            assert row[f"psi.{a}"] == pytest.approx(gk.psi[a], abs=1e-12)
        assert row["tau"] == pytest.approx(gk.tau, abs=1e-12)
        assert row["Psi"] == pytest.approx(gk.Psi, abs=1e-12)
        assert row["cmi"] == pytest.approx(cmi.value, abs=1e-12)
        assert row["sign_error.mean"] == pytest.approx(se.mean, abs=1e-12)
        assert row["sign_error.p90"] == pytest.approx(se.p90, abs=1e-12)
        assert row["sign_error.max"] == pytest.approx(se.max, abs=1e-12)
        assert row["sign_error.count"] == se.count
    assert tab.loc["m2", "n_dropped"] == 2 and tab.loc["m2", "n_models"] == 62
    assert tab.loc["m0", "n_dropped"] == 0 and tab.loc["m0", "n_models"] == 64
    # the full grid has 4·32 + 6·16 one-axis-differing pairs
    assert tab.loc["m0", "sign_error.count"] == 224
    # a subset of measures/axes, with and without prefixes
    sub = correlation_table(t, measures=["measure.m3", "m1"], axes=["lr", "hp.model"], gap="gen.gap_ce")
    assert list(sub.index) == ["m3", "m1"]
    assert list(sub.columns[:2]) == ["psi.lr", "psi.model"]


def test_unknown_columns_give_one_clear_error():
    t = study_table(n_measures=2)
    with pytest.raises(ValueError) as e:
        correlation_table(t, measures=["nope", "m1"], axes=["lr", "depth"], gap="gap_xx")
    msg = str(e.value)
    for word in ("nope", "depth", "gap_xx", "m0", "batch_size", "gap_ce"):
        assert word in msg
    with pytest.raises(ValueError, match="srr"):
        granulated_kendall(t, ["lr"], "srr")
    with pytest.raises(ValueError, match="depth"):
        conditional_mutual_information(t, ["depth"], "m0")
    with pytest.raises(ValueError, match="unknown gap"):
        robust_sign_error(t, ["lr"], "m0", "gap_zz")


def test_correlation_table_without_uncertainty():
    # the fast table (its speed is measured in benchmarks/kendall_uncertainty.py, not asserted here)
    t = study_table(n_measures=30)
    tab = correlation_table(t, permutations=0, bootstrap=0)
    assert tab.shape == (30, 5 + 13)
    assert tab[["tau_p", "tau_lo", "tau_hi", "Psi_p"]].isna().all().all()
    full = correlation_table(t, permutations=50, bootstrap=20)
    pd.testing.assert_series_equal(tab["tau"], full["tau"])  # the point estimates do not depend on it


# ---------------------------------------------------------------------------------------------- uncertainty


def brute_exact_p(x, y):
    """Two-sided exact permutation p-value of τ-a = 0, over all n! orders of y (numpy, no shortcuts)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    perms = np.array(list(itertools.permutations(range(n))))
    yp = y[perms]
    sx = np.sign(x[:, None] - x[None, :])
    taus = (sx[None] * np.sign(yp[:, :, None] - yp[:, None, :])).sum((1, 2)) / (n * (n - 1))
    obs = abs(brute_tau(x, y))
    return float(np.mean(np.abs(taus) >= obs - 1e-12))


def naive_resample_tau(x, y, idx):
    """τ-a of the explicitly resampled arrays: copies of one model are tied pairs (sign 0)."""
    return brute_tau(np.asarray(x)[idx], np.asarray(y)[idx])


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8])
def test_kendall_test_exact_p_equals_brute_force_enumeration(n):
    rng = np.random.default_rng(100 + n)
    cases = [
        (rng.normal(size=n), rng.normal(size=n)),  # no ties
        (np.round(rng.normal(size=n)), np.round(rng.normal(size=n))),  # many ties
        (x := rng.normal(size=n), x + 0.5 * rng.normal(size=n)),  # correlated
        (rng.normal(size=n), np.ones(n)),  # y all tied: τ = 0, p = 1
    ]
    for x, y in cases:
        for permutations in (math.factorial(n), 50_000):
            r = kendall_test(x, y, permutations=permutations, bootstrap=0)
            assert isinstance(r, KendallTest)
            assert r.exact and r.permutations == math.factorial(n) and r.n == n
            assert r.tau == kendall_tau(x, y)
            assert r.p_value == pytest.approx(brute_exact_p(x, y), rel=1e-12)
    assert kendall_test(rng.normal(size=n), np.ones(n), bootstrap=0, permutations=10**5).p_value == 1.0


def test_kendall_test_monte_carlo_p_is_close_to_the_exact_one():
    rng = np.random.default_rng(7)
    x = rng.normal(size=8)
    y = x + 1.5 * rng.normal(size=8)
    exact = brute_exact_p(x, y)
    assert 0.05 < exact < 0.9  # an informative case
    r = kendall_test(x, y, permutations=20_000, bootstrap=0)  # < 8! = 40 320: Monte Carlo
    assert not r.exact and r.permutations == 20_000
    assert abs(r.p_value - exact) < 0.015  # MC sd ≤ 0.0036
    assert r.p_value > 0  # (1 + #)/(1 + P) is never 0


def test_kendall_test_interval_contains_tau_and_is_reproducible():
    rng = np.random.default_rng(3)
    for n, noise in [(15, 0.5), (20, 1.0), (32, 2.0), (40, 5.0), (25, 0.3)]:
        x = rng.normal(size=n)
        y = x + noise * rng.normal(size=n)
        r = kendall_test(x, y, permutations=2_000, bootstrap=1_000)
        assert r.ci_low < r.tau < r.ci_high
        assert -1 <= r.ci_low < r.ci_high <= 1
        again = kendall_test(x, y, permutations=2_000, bootstrap=1_000)
        assert (again.p_value, again.ci_low, again.ci_high) == (r.p_value, r.ci_low, r.ci_high)
        other = kendall_test(x, y, permutations=2_000, bootstrap=1_000, seed=1)
        assert (other.ci_low, other.ci_high) != (r.ci_low, r.ci_high)
        assert other.seed == 1 and r.seed == 0 and r.confidence == 0.95 and r.bootstrap == 1_000


def test_kendall_test_monotone_pair_has_a_small_p_value():
    x = np.arange(12.0)
    r = kendall_test(x, x**3)
    assert r.tau == 1.0 and not r.exact
    assert r.p_value == pytest.approx(1 / 10_001)  # no random permutation reaches |τ| = 1
    r6 = kendall_test(x[:6], -x[:6])
    assert r6.exact and r6.p_value == pytest.approx(2 / 720)  # only the identity and the reversal


def test_bootstrap_tau_equals_naive_tau_of_the_resampled_arrays():
    rng = np.random.default_rng(11)
    n, B = 12, 300
    x = np.round(rng.normal(size=n), 1)  # a few ties too
    y = x + rng.normal(size=n)
    idx = uncertainty._bootstrap_resamples(n, B, seed=5)
    assert idx.shape == (B, n)
    naive = np.array([naive_resample_tau(x, y, i) for i in idx])
    ranks = uncertainty._dense_ranks
    _, boot, _, _ = uncertainty._tau_draws(ranks(x)[None], ranks(y), 0, B, 5)
    np.testing.assert_allclose(boot[0], naive, rtol=0, atol=1e-12)
    r = kendall_test(x, y, permutations=0, bootstrap=B, seed=5, confidence=0.9)
    assert math.isnan(r.p_value) and r.permutations == 0
    assert r.ci_low == pytest.approx(np.percentile(naive, 5), abs=1e-12)
    assert r.ci_high == pytest.approx(np.percentile(naive, 95), abs=1e-12)


def test_kendall_test_nan_and_switches():
    nan_r = kendall_test([1.0, np.nan, 3.0], [1.0, 2.0, 3.0])
    assert all(math.isnan(v) for v in (nan_r.tau, nan_r.p_value, nan_r.ci_low, nan_r.ci_high))
    assert nan_r.n == 3 and not nan_r.exact and nan_r.permutations == 0
    one = kendall_test([1.0], [2.0])
    assert math.isnan(one.tau) and math.isnan(one.p_value) and math.isnan(one.ci_low)
    r = kendall_test(np.arange(10.0), np.arange(10.0) % 3, bootstrap=0)
    assert math.isnan(r.ci_low) and math.isnan(r.ci_high) and 0 < r.p_value <= 1


def test_uncertainty_arguments_are_validated():
    x = np.arange(5.0)
    with pytest.raises(ValueError, match="permutations"):
        kendall_test(x, x, permutations=-1)
    with pytest.raises(ValueError, match="permutations"):
        kendall_test(x, x, permutations=2.5)
    with pytest.raises(ValueError, match="bootstrap"):
        kendall_test(x, x, bootstrap=-3)
    with pytest.raises(ValueError, match="seed"):
        kendall_test(x, x, seed=-1)
    with pytest.raises(ValueError, match="confidence"):
        kendall_test(x, x, confidence=1.0)
    t = study_table(n_measures=2)
    with pytest.raises(ValueError, match="permutations"):
        correlation_table(t, permutations=-5)
    with pytest.raises(ValueError, match="bootstrap"):
        compare_measures(t, "m0", "m1", bootstrap=-1)
    with pytest.raises(ValueError, match="confidence"):
        compare_measures(t, "m0", "m1", confidence=0)


def test_table_uncertainty_columns_equal_kendall_test():
    t = study_table(n_measures=3).sample(n=40, random_state=0)  # an incomplete grid
    t.loc[t.index[[1, 7, 20]], "measure.m1"] = np.nan  # m1 has its own kept rows (n = 37)
    kw = dict(permutations=3_000, bootstrap=500, seed=4, confidence=0.9)
    tab = correlation_table(t, **kw)
    for m in tab.index:
        keep = t[f"measure.{m}"].notna()
        r = kendall_test(t.loc[keep, f"measure.{m}"], t.loc[keep, "gen.gap_ce"], **kw)
        assert r.n == tab.loc[m, "n_models"]
        assert tab.loc[m, "tau"] == pytest.approx(r.tau, abs=1e-12)
        assert (tab.loc[m, "tau_p"], tab.loc[m, "tau_lo"], tab.loc[m, "tau_hi"]) == (r.p_value, r.ci_low, r.ci_high)
    # a tiny table: both enumerate all 5! permutations
    small = pd.DataFrame({"hp.a": [0, 0, 1, 1, 2], "gen.gap_ce": [0.1, 0.3, 0.2, 0.5, 0.4],
                          "measure.x": [1.0, 2.0, 2.0, 4.0, 3.0]})
    tab = correlation_table(small, permutations=200, bootstrap=100)
    r = kendall_test(small["measure.x"], small["gen.gap_ce"], permutations=200, bootstrap=100)
    assert r.exact and tab.loc["x", "tau_p"] == r.p_value == pytest.approx(brute_exact_p(small["measure.x"],
                                                                                      small["gen.gap_ce"]))
    assert (tab.loc["x", "tau_lo"], tab.loc["x", "tau_hi"]) == (r.ci_low, r.ci_high)
    off = correlation_table(small, permutations=0, bootstrap=0)
    assert off[["tau_p", "tau_lo", "tau_hi", "Psi_p"]].isna().all().all()
    assert off.loc["x", "tau"] == tab.loc["x", "tau"]


def test_psi_permutation_p_value():
    t = grid(a=[0, 1], b=[0, 1, 2], c=[0, 1, 2, 3])  # 24 models
    rng = np.random.default_rng(0)
    t["gen.gap_ce"] = rng.normal(size=len(t))
    t["measure.same"] = t["gen.gap_ce"]
    t["measure.noise"] = rng.normal(size=len(t))
    tab = correlation_table(t, permutations=2_000, bootstrap=0)
    assert tab.loc["same", "Psi"] == 1.0
    assert tab.loc["same", "Psi_p"] == pytest.approx(1 / 2_001)
    assert tab.loc["noise", "Psi_p"] > 0.2
    # one axis: its only group is all models, so the within-group null is τ's null
    one = grid(a=list(range(30)))
    rng = np.random.default_rng(1)
    one["gen.gap_ce"] = rng.normal(size=30)
    one["measure.m"] = 0.3 * one["gen.gap_ce"] + rng.normal(size=30)
    row = correlation_table(one, permutations=20_000, bootstrap=0).loc["m"]
    assert row["Psi"] == pytest.approx(row["tau"], abs=1e-12)
    assert 0.01 < row["tau_p"] < 0.9
    assert abs(row["Psi_p"] - row["tau_p"]) < 0.02  # two Monte-Carlo estimates of one p-value


def test_compare_measures_paired_bootstrap():
    rng = np.random.default_rng(2)
    n = 40
    t = pd.DataFrame({"gen.gap_ce": rng.normal(size=n)})
    t["measure.good"] = t["gen.gap_ce"] + 0.3 * rng.normal(size=n)
    t["measure.noise"] = rng.normal(size=n)
    t.loc[[3, 9], "measure.noise"] = np.nan
    t.loc[5, "gen.gap_ce"] = np.nan
    c = compare_measures(t, "good", "measure.noise", bootstrap=1_000, seed=3)
    assert isinstance(c, PairedComparison)
    assert c.n == 37 and c.n_dropped == 3
    keep = t.notna().all(axis=1)
    assert c.tau_a == kendall_tau(t.loc[keep, "measure.good"], t.loc[keep, "gen.gap_ce"])
    assert c.tau_b == kendall_tau(t.loc[keep, "measure.noise"], t.loc[keep, "gen.gap_ce"])
    assert c.diff == c.tau_a - c.tau_b
    assert c.ci_low <= c.diff <= c.ci_high
    assert c.separated and c.p_value < 0.01
    # the same resamples as kendall_test: the interval of a − (a measure tied everywhere) is a's own
    t["measure.flat"] = 1.0
    flat = compare_measures(t, "good", "flat", bootstrap=1_000, seed=3)
    kept = t["gen.gap_ce"].notna()
    assert flat.n == 39 and flat.n_dropped == 1 and flat.tau_b == 0.0
    r = kendall_test(t.loc[kept, "measure.good"], t.loc[kept, "gen.gap_ce"], permutations=0, bootstrap=1_000, seed=3)
    assert (flat.ci_low, flat.ci_high) == (r.ci_low, r.ci_high)
    same = compare_measures(t, "good", "good", bootstrap=500)
    assert same.diff == 0 and same.p_value == 1.0 and not same.separated
    assert compare_measures(t, "measure.good", "noise", bootstrap=1_000, seed=3) == c
    assert math.isnan(compare_measures(t, "good", "noise", bootstrap=0).ci_low)
