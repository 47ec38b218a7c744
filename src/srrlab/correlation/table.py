"""The correlation table: every statistic of every measure, one row per measure (Jiang et al.'s Table 1 layout)."""
from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import pandas as pd

from ._columns import GEN_PREFIX, HP_PREFIX, MEASURE_PREFIX, _Data, _prepare, _resolve, _strip, default_axes
from .coupled import _sign_error
from .rank import GranulatedResult, _cmi, _granulated
from .uncertainty import _check_uncertainty, _dense_ranks, _interval, _psi_permutation_p, _streams, _tau_draws

def correlation_table(table: pd.DataFrame, measures: Iterable[str] | str | None = None,
                      axes: Iterable[str] | str | None = None, gap: str = "gen.gap_ce", *,
                      max_conditioning: int = 2, noise_n: int | None = None, min_ess: float = 0.0,
                      permutations: int = 10_000, bootstrap: int = 2_000, seed: int = 0,
                      confidence: float = 0.95) -> pd.DataFrame:
    """One row per measure, the layout of Jiang et al.'s Table 1 (docs/theory.md §6).

    Index: measure names without ``measure.`` (default: every ``measure.*`` column, in column order).
    Columns: ``psi.<axis>`` (one per axis, :func:`granulated_kendall`), ``tau`` (overall τ), ``tau_p``,
    ``tau_lo``, ``tau_hi`` (its permutation p-value and bootstrap interval, :func:`kendall_test`),
    ``Psi``, ``Psi_p`` (Ψ's permutation p-value, below), ``cmi``
    (:func:`conditional_mutual_information`), ``sign_error.mean`` / ``.p90`` / ``.max`` /
    ``.count`` (:func:`robust_sign_error`), then ``n_models`` and ``n_dropped`` (rows dropped for NaN
    in that measure or the gap). Default axes: :func:`default_axes` (``hp.*`` columns taking ≥ 2
    values, ``hp.seed`` excluded). Values equal those of the individual functions.

    ``tau_p``/``tau_lo``/``tau_hi`` equal ``kendall_test(measure, gap, permutations=…, bootstrap=…,
    seed=…, confidence=…)`` on the measure's kept rows: the draws depend only on the seed and the
    number of models, so all measures with the same kept rows share one set of permuted gap signs
    and one set of resamples (one matrix product per block of draws for all of them).

    ``Psi_p`` is always a Monte-Carlo test (``permutations`` draws, exact enumeration is never
    used) of the null that the measure's values are exchangeable across the models (it knows nothing
    of the gap): each draw permutes the measure over all kept models, once for every axis together,
    recomputes every ψ_i and averages the defined ones;
    ``p = (1 + #{|Ψ_perm| ≥ |Ψ|})/(1 + permutations)``. One joint permutation keeps the covariance
    the ψ_i have through shared models, which independent within-group permutations per axis lose
    (they made Ψ's test reject about twice its nominal rate; docs/correlation.md).

    ``permutations=0`` makes ``tau_p`` and ``Psi_p`` NaN, ``bootstrap=0`` makes ``tau_lo``/``tau_hi``
    NaN: with both 0 the table costs what it did without uncertainty.
    """
    permutations, bootstrap, seed, confidence = _check_uncertainty(permutations, bootstrap, seed, confidence)
    if isinstance(measures, str):
        measures = [measures]
    if isinstance(axes, str):
        axes = [axes]
    measure_list = None if measures is None else list(measures)
    axis_list = None if axes is None else list(axes)
    requests = [("gap", gap, GEN_PREFIX)] + [("measure", m, MEASURE_PREFIX) for m in (measure_list or [])]
    requests += [("axis", a, HP_PREFIX) for a in (axis_list or [])]
    resolved = _resolve(table, requests)  # one error for every unknown name
    gap_col = resolved[0]
    measure_cols = resolved[1:1 + len(measure_list or [])] if measure_list is not None else \
        [c for c in map(str, table.columns) if c.startswith(MEASURE_PREFIX)]
    axis_cols = resolved[1 + len(measure_list or []):] if axis_list is not None else default_axes(table)
    names = [_strip(a, HP_PREFIX) for a in axis_cols]
    columns = [f"psi.{a}" for a in names] + ["tau", "tau_p", "tau_lo", "tau_hi", "Psi", "Psi_p", "cmi",
                                              "sign_error.mean", "sign_error.p90", "sign_error.max",
                                              "sign_error.count", "n_models", "n_dropped"]
    rows = []
    # measures whose kept rows carry the same gaps and axis codes share their draws
    shared: dict[tuple, list[tuple[int, _Data, GranulatedResult]]] = {}
    for r, m in enumerate(measure_cols):
        d = _prepare(table, axis_cols, m, gap_col)
        gk = _granulated(d)
        cmi = _cmi(d, max_conditioning)
        se = _sign_error(d, noise_n, min_ess, keep_environments=False)
        rows.append([gk.psi[a] for a in names] + [gk.tau, math.nan, math.nan, math.nan, gk.Psi, math.nan, cmi.value,
                                                  se.mean, se.p90, se.max, se.count, gk.n_models, gk.n_dropped])
        shared.setdefault((d.g.size, d.g.tobytes(), d.codes.tobytes()), []).append((r, d, gk))
    at = {c: columns.index(c) for c in ("tau_p", "tau_lo", "tau_hi", "Psi_p")}
    for members in shared.values():
        g_ranks = _dense_ranks(members[0][1].g)
        with_tau = [(r, d) for r, d, gk in members if math.isfinite(gk.tau)]
        if with_tau and (permutations or bootstrap):
            mu = np.stack([_dense_ranks(d.mu) for _, d in with_tau])
            p, boot, _, _ = _tau_draws(mu, g_ranks, permutations, bootstrap, seed)
            lo, hi = _interval(boot, confidence)
            for q, (r, _) in enumerate(with_tau):
                rows[r][at["tau_p"]], rows[r][at["tau_lo"]], rows[r][at["tau_hi"]] = float(p[q]), float(lo[q]), \
                    float(hi[q])
        with_psi = [(r, d) for r, d, gk in members if math.isfinite(gk.Psi)]
        if with_psi and permutations:
            mu = np.stack([_dense_ranks(d.mu) for _, d in with_psi])
            p = _psi_permutation_p(mu, g_ranks, members[0][1].codes, permutations, _streams(seed)[2])
            for q, (r, _) in enumerate(with_psi):
                rows[r][at["Psi_p"]] = float(p[q])
    out = pd.DataFrame(rows, columns=columns, index=pd.Index([_strip(m, MEASURE_PREFIX) for m in measure_cols],
                                                             name="measure"))
    for c in ("sign_error.count", "n_models", "n_dropped"):
        out[c] = out[c].astype(int)
    return out
