"""Dziugaite et al. 2020's sign-error over coupled environments (docs/correlation.md, "Robust sign-error")."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._columns import _Data, _group_ids, _prepare

@dataclass
class RobustSignErrorResult:
    """Dziugaite et al. 2020's sign-error over coupled environments. Axis names without ``hp.``."""

    mean: float  # mean sign-error over environments
    p90: float  # 90th percentile (numpy linear interpolation)
    max: float  # the robust sign-error: the worst environment
    count: int  # environments kept
    n_filtered: int = 0  # environments dropped (zero total weight, or effective sample size < min_ess)
    per_axis: dict[str, dict[str, float]] = field(default_factory=dict)  # axis -> mean/p90/max/count
    environments: pd.DataFrame | None = None  # one row per kept environment
    n_models: int = 0
    n_dropped: int = 0
    measure: str = ""
    gap: str = ""


def hoeffding_weight(delta_gap: np.ndarray | float, n: int) -> np.ndarray:
    """Dziugaite et al.'s Monte-Carlo noise weight of a pair whose gaps differ by ``delta_gap``, each
    gap estimated on ``n`` held-out samples of a [0, 1]-bounded loss (the 0-1 error):
    ``w = max(0, 1 − 2 exp(−2 n (|Δ|/2)²))²``, then shifted ``(w − 0.5)_+`` so that pairs whose
    difference could be noise get weight 0."""
    delta = np.abs(np.asarray(delta_gap, dtype=float))
    w = np.clip(1.0 - 2.0 * np.exp(-2.0 * n * (delta / 2.0) ** 2), 0.0, None) ** 2
    return np.clip(w - 0.5, 0.0, None)


def _summary(losses: np.ndarray) -> dict[str, float]:
    if losses.size == 0:
        return {"mean": math.nan, "p90": math.nan, "max": math.nan, "count": 0}
    return {"mean": float(losses.mean()), "p90": float(np.percentile(losses, 90)), "max": float(losses.max()),
            "count": int(losses.size)}


def _sign_error(d: _Data, noise_n: int | None, min_ess: float, keep_environments: bool) -> RobustSignErrorResult:
    n, k = d.codes.shape
    iu, ju = np.triu_indices(n, 1)
    ndiff = (d.codes[iu] != d.codes[ju]).sum(1) if k else np.zeros(iu.size, dtype=np.int64)
    one = ndiff == 1
    i, j = iu[one], ju[one]
    axis_of = np.argmax(d.codes[i] != d.codes[j], axis=1) if i.size else np.zeros(0, dtype=np.int64)
    loss = 0.5 * (1.0 - np.sign(d.mu[i] - d.mu[j]) * np.sign(d.g[i] - d.g[j]))  # ties → 0.5
    weight = np.ones(i.size) if noise_n is None else hoeffding_weight(d.g[i] - d.g[j], noise_n)
    # an environment = an unordered pair of configurations (distinct hyperparameter tuples); replicates
    # (several models per configuration) are averaged inside it
    config = _group_ids(d.codes)
    lo, hi = np.minimum(config[i], config[j]), np.maximum(config[i], config[j])
    env = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)[1].reshape(-1) if i.size else np.zeros(0, int)
    n_env = int(env.max()) + 1 if env.size else 0
    w_sum = np.bincount(env, weights=weight, minlength=n_env)
    w_sq = np.bincount(env, weights=weight**2, minlength=n_env)
    l_sum = np.bincount(env, weights=weight * loss, minlength=n_env)
    env_axis = np.zeros(n_env, dtype=np.int64)
    env_axis[env] = axis_of
    with np.errstate(divide="ignore", invalid="ignore"):
        ess = np.where(w_sum > 0, w_sum**2 / np.where(w_sq > 0, w_sq, 1.0), 0.0)
        env_loss = np.where(w_sum > 0, l_sum / np.where(w_sum > 0, w_sum, 1.0), np.nan)
    kept = (w_sum > 0) & (ess >= min_ess - 1e-12)
    losses = env_loss[kept]
    per_axis = {name: _summary(env_loss[kept & (env_axis == a)]) for a, name in enumerate(d.names)}
    environments = None
    if keep_environments:
        first = np.zeros(n_env, dtype=np.int64)
        first[env[::-1]] = np.arange(env.size)[::-1]  # the first model pair of each environment
        f = first[kept]
        ax = env_axis[kept]
        environments = pd.DataFrame({
            "axis": [d.names[a] for a in ax],
            "value_a": [d.uniques[a][d.codes[i[p], a]] for a, p in zip(ax, f)],
            "value_b": [d.uniques[a][d.codes[j[p], a]] for a, p in zip(ax, f)],
            "row_a": d.index[i[f]], "row_b": d.index[j[f]],
            "n_pairs": np.bincount(env, minlength=n_env)[kept],
            "sign_error": losses, "weight": w_sum[kept], "ess": ess[kept],
        })
    s = _summary(losses)
    return RobustSignErrorResult(mean=s["mean"], p90=s["p90"], max=s["max"], count=s["count"],
                                 n_filtered=int((~kept).sum()), per_axis=per_axis, environments=environments,
                                 n_models=n, n_dropped=d.n_dropped, measure=d.measure, gap=d.gap)


def robust_sign_error(table: pd.DataFrame, axes: Iterable[str] | str | None, measure: str, gap: str = "gen.gap_ce",
                      *, noise_n: int | None = None, min_ess: float = 0.0) -> RobustSignErrorResult:
    """Sign-error over coupled environments (Dziugaite et al. 2020, the "coupled-network" experiments).

    An environment is an unordered pair of configurations (distinct tuples of axis values) that
    differ in exactly one axis. Its loss is the sign-error
    ``½ (1 − sign(μ_a − μ_b) sign(g_a − g_b))``: 0 when the measure orders the pair like the gap,
    1 when it orders it the other way, and ½ when either difference is a tie (their definition, so a
    constant measure scores ½ = a coin flip). With replicates the environment's loss is the weighted
    mean over all model pairs across the two configurations.

    ``mean``, ``p90`` and ``max`` (the paper's robust sign-error: the worst environment) are taken over
    environments; ``count`` = number of environments (one per one-axis-differing pair of
    configurations); ``per_axis`` gives the same summaries for the environments in which each axis
    varies; ``environments`` lists them (``model_a``/``model_b`` index the kept rows of the table).

    ``noise_n`` (off by default) turns on the paper's Monte-Carlo noise filter: each model pair is
    weighted by :func:`hoeffding_weight` of its gap difference, with ``noise_n`` the number of test
    samples behind each gap (meaningful for a 0-1 error gap such as ``gen.gap_err``). Environments
    with zero total weight, or an effective sample size ``(Σw)²/Σw²`` below ``min_ess`` (the paper
    uses 12 with several seeds per configuration), are dropped and counted in ``n_filtered``.
    """
    return _sign_error(_prepare(table, axes, measure, gap), noise_n, min_ess, keep_environments=True)

