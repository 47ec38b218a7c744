"""Seed-paired differences: the statistics of the regularisation experiment (docs/regularizer.md,
"How the verdict is reached").

A regularised arm and its CE baseline trained with the same seed share the initialisation and the
data order, so their difference ``d_s = metric_SRR − metric_CE`` on seed ``s`` is the unit of
evidence. For ``n`` seeds with mean ``d̄`` and sample standard deviation ``s_d``:

- the interval is Student's ``d̄ ± t_{1−α/2, n−1} · s_d / √n`` (level ``1 − α``, default 95%);
- the test is the paired t-test of ``E d = 0`` (two-sided; its p-value and the interval agree:
  ``p < α`` exactly when the interval excludes 0);
- the *detectable effect* is the smallest true mean difference ``δ`` that the same test would
  reject with probability ``power`` (default 80%) at level ``α`` with ``n`` seeds, were the
  seed-to-seed standard deviation of ``d`` equal to the measured ``s_d``: the root of
  ``P(|T| > t_{1−α/2, n−1}) = power`` with ``T`` noncentral t, ``n − 1`` degrees of freedom and
  noncentrality ``δ √n / s_d``;
- the *pooled* effect over model variants (:func:`pooled_effect`) averages, for each seed, the
  differences of the variants that all have that seed, and applies the same to those ``n`` means:
  each seed is one replicate of the whole design, so the variants' effects are weighted equally.

:func:`effect_sentence` turns an effect into the verdict's words: *improves by x [lo, hi]*,
*hurts by x [lo, hi]* (when the interval excludes 0), or *no effect larger than y* (otherwise,
``y = max(|lo|, |hi|)``: the interval rules out larger effects either way).
tests/test_paired.py checks the test's size, the interval's coverage and the detectable effect's
power on simulated seeds.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

__all__ = ["PairedEffect", "paired_effect", "pooled_effect", "t_test_power", "detectable_effect", "effect_sentence",
           "holm", "EFFECT_VERDICTS"]

#: Verdicts of a paired effect: the interval lies above 0, below 0, or holds 0; fewer than two pairs.
EFFECT_VERDICTS = ("improves", "hurts", "no effect detected", "too few seeds")


@dataclass(frozen=True)
class PairedEffect:
    """The mean of ``n`` paired differences with its interval, paired t-test and detectable effect.

    ``sd`` is the differences' sample standard deviation, ``ci_low``/``ci_high`` the interval at
    ``level``, ``p_value`` the two-sided paired t-test's, ``detectable`` the smallest true mean
    difference the design rejects with probability ``power`` at ``α = 1 − level`` (NaN for n < 2,
    0 when every difference is equal).
    """

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    p_value: float
    detectable: float
    level: float = 0.95
    power: float | None = 0.8

    def verdict(self, higher_is_better: bool = True) -> str:
        """One of :data:`EFFECT_VERDICTS`: the interval lies on the better side of 0, the worse
        side, or holds it (``higher_is_better=False`` for a loss)."""
        if self.n < 2 or not np.isfinite(self.ci_low):
            return "too few seeds"
        if self.ci_low > 0:
            return "improves" if higher_is_better else "hurts"
        if self.ci_high < 0:
            return "hurts" if higher_is_better else "improves"
        return "no effect detected"

    @property
    def bound(self) -> float:
        """The largest effect, either way, that the interval leaves open: ``max(|lo|, |hi|)``."""
        return max(abs(self.ci_low), abs(self.ci_high))

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        d = asdict(self)
        d.pop("level"), d.pop("power")
        return {f"{prefix}{k}": v for k, v in d.items()}


def _check_level(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


def t_test_power(effect: float, n: int, sd: float, *, alpha: float = 0.05) -> float:
    """The probability that the two-sided paired t-test at level ``alpha`` rejects with ``n`` pairs
    whose differences have mean ``effect`` and standard deviation ``sd`` (noncentral t; exact for
    normal differences)."""
    if n < 2:
        raise ValueError(f"n must be at least 2 pairs for a t-test, got {n}")
    if not sd > 0:
        raise ValueError(f"sd must be positive, got {sd}")
    alpha = _check_level("alpha", alpha)
    df = n - 1
    crit = stats.t.ppf(1 - alpha / 2, df)
    nc = abs(effect) * math.sqrt(n) / sd
    # scipy returns NaN for the far tail of a large noncentrality, where it is below 1e-20: count it as 0
    upper, lower = np.nan_to_num([stats.nct.sf(crit, df, nc), stats.nct.cdf(-crit, df, nc)], nan=0.0)
    return float(min(1.0, upper + lower))


def detectable_effect(n: int, sd: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest mean difference ``δ > 0`` with :func:`t_test_power` ``(δ, n, sd, alpha) = power``:
    the effect a design of ``n`` seed pairs detects with that power. 0 when ``sd`` is 0 (every pair
    agrees), NaN for ``n < 2``."""
    power = _check_level("power", power)
    alpha = _check_level("alpha", alpha)
    if n < 2 or not np.isfinite(sd):
        return float("nan")
    if sd == 0:
        return 0.0
    if power <= alpha:
        raise ValueError(f"power ({power}) must exceed alpha ({alpha}): the test rejects with probability alpha at δ = 0")
    hi = sd * (stats.t.ppf(1 - alpha / 2, n - 1) + stats.norm.ppf(power) + 1.0) / math.sqrt(n) * 2
    while t_test_power(hi, n, sd, alpha=alpha) < power:  # pragma: no cover - the bracket above holds for n >= 2
        hi *= 2
    return float(optimize.brentq(lambda e: t_test_power(e, n, sd, alpha=alpha) - power, 0.0, hi, xtol=1e-12 * sd))


def paired_effect(differences: Sequence[float] | np.ndarray, *, level: float = 0.95, power: float | None = 0.8
                  ) -> PairedEffect:
    """:class:`PairedEffect` of the seed-paired ``differences`` (NaNs dropped); ``power=None`` skips
    the detectable effect (NaN; it takes a root search, ~20 ms)."""
    level = _check_level("level", level)
    d = np.asarray(differences, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        nan = float("nan")
        return PairedEffect(0, nan, nan, nan, nan, nan, nan, level, power)
    mean = float(d.mean())
    if n < 2:
        nan = float("nan")
        return PairedEffect(1, mean, nan, nan, nan, nan, nan, level, power)
    sd = float(d.std(ddof=1))
    alpha = 1.0 - level
    if sd == 0:  # every seed moved by the same amount: the interval is that point
        p = 1.0 if mean == 0 else 0.0
        return PairedEffect(n, mean, 0.0, mean, mean, p, float("nan") if power is None else 0.0, level, power)
    se = sd / math.sqrt(n)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    detectable = float("nan") if power is None else detectable_effect(n, sd, alpha=alpha, power=power)
    return PairedEffect(n, mean, sd, mean - half, mean + half, p, detectable, level, power)


def pooled_effect(differences: pd.DataFrame, *, level: float = 0.95, power: float | None = 0.8) -> tuple[PairedEffect, int]:
    """The effect pooled over variants: ``differences`` has one row per seed and one column per
    variant (NaN where a variant lacks the seed); the seeds that every variant has are averaged
    over the variants and :func:`paired_effect` is applied to those means. Returns the effect and
    the number of seeds left out because some variant lacks them."""
    if not isinstance(differences, pd.DataFrame) or differences.shape[1] == 0:
        raise ValueError("differences must be a DataFrame with one column per variant and one row per seed")
    complete = differences.dropna(how="any")
    return paired_effect(complete.mean(axis=1).to_numpy(), level=level, power=power), int(len(differences) - len(complete))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaNs kept as NaN, not counted): with the
    ``m`` finite p-values sorted, ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j))``. Rejecting where
    ``p̃ < α`` keeps the chance of any false rejection in the family at most ``α``."""
    p = np.asarray(p_values, dtype=float).ravel()
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adjusted)
    return out


def effect_sentence(effect: PairedEffect, unit: str = "points", *, digits: int = 2, higher_is_better: bool = True) -> str:
    """The verdict's words: ``improves by 0.41 [0.12, 0.70] points (p = 0.008)``, ``hurts by …``, or
    ``no effect larger than 0.52 points (Δ = +0.10 [−0.31, +0.52], p = 0.6; 80% power at ±0.55)``.
    With ``higher_is_better=False`` (a loss) a negative difference improves."""
    f = f"{{:.{digits}f}}"
    if effect.n < 2 or not np.isfinite(effect.ci_low):
        return f"too few seeds to say (n = {effect.n})"
    pct = f"{effect.level:.0%}"
    p = _p_text(effect.p_value)
    lo, hi = effect.ci_low, effect.ci_high
    word = effect.verdict(higher_is_better)
    if word in ("improves", "hurts"):
        size = abs(effect.mean)
        a, b = sorted((abs(lo), abs(hi)))
        return f"{word} by {f.format(size)} [{f.format(a)}, {f.format(b)}] {unit} ({pct} interval, {p})"
    power = (f"; {effect.power:.0%} power at ±{f.format(effect.detectable)}"
             if effect.power is not None and np.isfinite(effect.detectable) else "")
    return (f"no effect larger than {f.format(effect.bound)} {unit} (Δ = {effect.mean:+.{digits}f} "
            f"[{lo:+.{digits}f}, {hi:+.{digits}f}], {p}{power})")


def _p_text(p: float) -> str:
    if not np.isfinite(p):
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"
