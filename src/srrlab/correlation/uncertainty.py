"""Uncertainty of the rank statistics: permutation p-values, bootstrap intervals, the paired comparison of
two measures, and Ψ's joint-permutation null (docs/correlation.md, "Uncertainty")."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._columns import GEN_PREFIX, MEASURE_PREFIX, _group_ids, _resolve
from .rank import kendall_tau

_DRAW_BLOCK_ELEMENTS = 1 << 21  # pair entries per block of permutation/bootstrap draws (~8 MB in float32)
_PSI_ATOL = 1e-12  # Ψ is a float average: |Ψ_perm| ≥ |Ψ_obs| − 1e-12 counts as "at least as extreme"


@dataclass
class KendallTest:
    """Kendall's τ-a with a permutation p-value and a bootstrap percentile interval
    (:func:`kendall_test`)."""

    tau: float  # τ-a, exactly kendall_tau(x, y)
    p_value: float  # two-sided permutation p-value of τ = 0 (NaN if permutations = 0)
    ci_low: float  # percentile bootstrap interval over models (NaN if bootstrap = 0)
    ci_high: float
    n: int  # number of (x, y) pairs
    exact: bool  # True: all n! permutations enumerated; False: Monte Carlo (or no p-value)
    permutations: int  # permutations the p-value rests on: n! when exact, 0 when p is NaN
    bootstrap: int  # bootstrap resamples requested
    confidence: float
    seed: int


@dataclass
class PairedComparison:
    """Two measures' τ against the same gap, compared on the same bootstrap resamples of models
    (:func:`compare_measures`)."""

    a: str  # column names, as resolved
    b: str
    tau_a: float  # τ-a of each measure, on the rows where both measures and the gap are finite
    tau_b: float
    diff: float  # tau_a − tau_b
    ci_low: float  # percentile bootstrap interval of the difference (NaN if bootstrap = 0)
    ci_high: float
    p_value: float  # two-sided bootstrap p-value of diff = 0
    n: int  # rows used
    n_dropped: int  # rows dropped: a non-finite value in either measure or in the gap
    bootstrap: int = 0
    confidence: float = 0.95
    seed: int = 0
    gap: str = ""

    @property
    def separated(self) -> bool:
        """True when the bootstrap interval of the difference excludes 0."""
        return bool(self.ci_low > 0 or self.ci_high < 0)


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _check_uncertainty(permutations, bootstrap, seed, confidence) -> tuple[int, int, int, float]:
    permutations = _check_count("permutations", permutations)
    bootstrap = _check_count("bootstrap", bootstrap)
    seed = _check_count("seed", seed)
    ok = isinstance(confidence, (int, float, np.integer, np.floating)) and not isinstance(confidence, bool)
    if not ok or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")
    return permutations, bootstrap, seed, float(confidence)


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """The three independent random streams of ``seed``: permutations of τ, bootstrap resamples, and
    the joint permutations of Ψ's null (``np.random.default_rng`` on the children of
    ``SeedSequence(seed)``). Separate streams: changing one count never changes the other draws."""
    perm, boot, psi = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    return perm, boot, psi


def _dense_ranks(v: np.ndarray) -> np.ndarray:
    """Dense ranks (0, 1, …; equal values share a rank): their pairwise signs are those of ``v``."""
    return np.unique(v, return_inverse=True)[1].reshape(v.shape).astype(np.int32)


def _upper_signs(ranks: np.ndarray, iu: np.ndarray, ju: np.ndarray, dtype) -> np.ndarray:
    """``sign(r_i − r_j)`` over the pairs ``i < j`` (last axis), as ``dtype``."""
    return np.sign(ranks[..., iu] - ranks[..., ju]).astype(dtype)


def _exact(n: int, permutations: int) -> bool:
    """Exact enumeration when all n! permutations fit in the requested number."""
    return permutations > 0 and n <= 20 and math.factorial(n) <= permutations


def _draw_block(n: int) -> int:
    """Draws per block: a function of n only, so every caller splits the same draws the same way."""
    return max(1, _DRAW_BLOCK_ELEMENTS // max(n * (n - 1) // 2, n, 1))


def _permutation_blocks(rng: np.random.Generator, n: int, permutations: int, exact: bool = True):
    """Blocks ``(b, n)`` of permutations of ``range(n)``: all n! of them in lexicographic order when
    ``exact`` and :func:`_exact`, else ``permutations`` uniform random ones (argsort of uniform keys,
    drawn in blocks of :func:`_draw_block` rows)."""
    block = _draw_block(n)
    if exact and _exact(n, permutations):
        it = itertools.permutations(range(n))
        while chunk := list(itertools.islice(it, block)):
            yield np.array(chunk, dtype=np.intp)
        return
    for start in range(0, permutations, block):
        yield np.argsort(rng.random((min(block, permutations - start), n)), axis=1)


def _resample_blocks(rng: np.random.Generator, n: int, bootstrap: int):
    """Blocks ``(b, n)`` of bootstrap resamples: row r lists the n model indices drawn, with
    replacement, for resample r."""
    block = _draw_block(n)
    for start in range(0, bootstrap, block):
        yield rng.integers(0, n, size=(min(block, bootstrap - start), n))


def _bootstrap_resamples(n: int, bootstrap: int, seed: int = 0) -> np.ndarray:
    """The ``(bootstrap, n)`` resample indices that :func:`kendall_test`, :func:`correlation_table`
    and :func:`compare_measures` use for n models and this seed (for checks and plots)."""
    blocks = list(_resample_blocks(_streams(seed)[1], n, bootstrap))
    return np.concatenate(blocks) if blocks else np.zeros((0, n), dtype=np.int64)


def _tau_draws(x_ranks: np.ndarray, y_ranks: np.ndarray, permutations: int, bootstrap: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, bool, int]:
    """Permutation p-values and bootstrap τ of m measures against one y (the gap), all on the same
    draws. ``x_ranks`` (m, n), ``y_ranks`` (n,), n ≥ 2.

    With ``Sx`` (m, N) and ``Sy`` (N,) the signs over the N = n(n−1)/2 pairs i < j:

    - permutation π of y: ``T_π = Sx · Sy∘π`` (one (m, N) @ (N, b) product per block of draws);
      ``τ_π = 2 T_π / (n(n−1))``.
    - resample with counts c (how often each model was drawn): the resample's τ-a counts pairs of
      distinct draws, and two draws of the same model are tied (sign 0), so
      ``τ = 2 Σ_{i<j} c_i c_j Sx_ij Sy_ij / (n(n−1))`` (one (m, N) @ (N, b) product per block).

    Every sum is an integer of magnitude ≤ n²/2, exact in float32 for n < 4096 (float64 above), so
    "at least as extreme" is decided exactly. Returns (p (m,), τ_boot (m, bootstrap), exact, used).
    """
    m, n = x_ranks.shape
    perm_rng, boot_rng, _ = _streams(seed)
    iu, ju = np.triu_indices(n, 1)
    dtype = np.float32 if n < 4096 else np.float64
    sx = _upper_signs(x_ranks, iu, ju, dtype)  # (m, N)
    sy = _upper_signs(y_ranks, iu, ju, dtype)  # (N,)
    scale = 2.0 / (n * (n - 1))
    p = np.full(m, math.nan)
    exact, used = False, 0
    if permutations > 0:
        exact = _exact(n, permutations)
        observed = np.abs(sx @ sy).astype(np.float64) - 0.5  # integers: ≥ obs − ½ ⇔ ≥ obs
        hits = np.zeros(m, dtype=np.int64)
        for perms in _permutation_blocks(perm_rng, n, permutations):
            t = sx @ _upper_signs(y_ranks[perms], iu, ju, dtype).T  # (m, b)
            hits += (np.abs(t) >= observed[:, None]).sum(1)
            used += perms.shape[0]
        p = hits / used if exact else (1.0 + hits) / (1.0 + used)
    concord = sx * sy  # (m, N)
    boot = np.empty((m, bootstrap))
    start = 0
    for idx in _resample_blocks(boot_rng, n, bootstrap):
        b = idx.shape[0]
        counts = np.bincount((idx + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        weights = (counts[:, iu] * counts[:, ju]).astype(dtype)  # (b, N): c_i c_j
        boot[:, start:start + b] = (concord @ weights.T).astype(np.float64) * scale
        start += b
    return p, boot, exact, used


def _interval(draws: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval along the last axis (numpy's linear interpolation); NaN without draws."""
    if draws.shape[-1] == 0:
        nan = np.full(draws.shape[:-1], math.nan)
        return nan, nan.copy()
    lo, hi = np.percentile(draws, [50.0 * (1.0 - confidence), 50.0 * (1.0 + confidence)], axis=-1)
    return lo, hi


def kendall_test(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray, *, permutations: int = 10_000,
                 bootstrap: int = 2_000, seed: int = 0, confidence: float = 0.95) -> KendallTest:
    """Kendall's τ-a (:func:`kendall_tau`) with a permutation test and a bootstrap interval.

    - ``p_value``: two-sided permutation test of τ = 0. y is permuted relative to x; a permutation
      counts when ``|τ_perm| ≥ |τ_obs|`` (the pair sums are integers, so ties count exactly). When
      ``n! ≤ permutations`` all n! permutations are enumerated (``exact=True``,
      ``p = #/n!``, ``permutations = n!``); otherwise ``permutations`` random permutations give the
      Monte-Carlo ``p = (1 + #)/(1 + permutations)``, never 0. ``permutations=0``: p is NaN.
    - ``ci_low``/``ci_high``: percentile bootstrap over models. The n (x, y) pairs are resampled with
      replacement ``bootstrap`` times; a resample's τ-a treats two copies of the same model as a
      tied pair (sign 0) and divides by n(n−1), as τ-a does. The interval is the
      ``(1 − confidence)/2`` and ``(1 + confidence)/2`` percentiles (numpy's linear interpolation)
      of those τ. ``bootstrap=0``: the interval is NaN.

    Reproducible: ``seed`` gives independent streams for permutations and resamples (children of
    ``SeedSequence(seed)`` through ``np.random.default_rng``), and the draws depend only on
    ``(seed, n, permutations, bootstrap)``, so :func:`correlation_table` and
    :func:`compare_measures` see the same draws for the same seed and n. ``n < 2`` or any NaN gives
    NaN everywhere (as :func:`kendall_tau`), no error. Vectorised: one matrix product per block of
    draws, memory bounded by blocks of ~2M pair entries.
    """
    permutations, bootstrap, seed, confidence = _check_uncertainty(permutations, bootstrap, seed, confidence)
    tau = kendall_tau(x, y)  # also checks the shapes
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    n = x.size
    nan = math.nan
    if math.isnan(tau):
        return KendallTest(tau=nan, p_value=nan, ci_low=nan, ci_high=nan, n=n, exact=False, permutations=0,
                           bootstrap=bootstrap, confidence=confidence, seed=seed)
    p, boot, exact, used = _tau_draws(_dense_ranks(x)[None, :], _dense_ranks(y), permutations, bootstrap, seed)
    lo, hi = _interval(boot, confidence)
    return KendallTest(tau=tau, p_value=float(p[0]), ci_low=float(lo[0]), ci_high=float(hi[0]), n=n, exact=exact,
                       permutations=used, bootstrap=bootstrap, confidence=confidence, seed=seed)


def _psi_pair_weights(codes: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per defined axis i: the pairs ``(pi, pj)`` (``pi < pj``) inside its used groups and their weights
    ``w = 2 / (s(s−1) G_i)`` (s: group size, G_i: used groups), so that
    ``ψ_i = Σ_pairs w sign(μ_pi − μ_pj) sign(g_pi − g_pj)`` (:func:`~srrlab.correlation.granulated_kendall`)."""
    n, k = codes.shape
    iu, ju = np.triu_indices(n, 1)
    out = []
    for a in range(k):
        group = _group_ids(np.delete(codes, a, axis=1))
        n_groups = int(group.max()) + 1
        size = np.bincount(group, minlength=n_groups)
        distinct = np.bincount(np.unique(np.stack([group, codes[:, a]], 1), axis=0)[:, 0], minlength=n_groups)
        ok = distinct >= 2
        if not ok.any():
            continue  # ψ_a undefined, left out of Ψ as in granulated_kendall
        sel = (group[iu] == group[ju]) & ok[group[iu]]
        pi, pj = iu[sel], ju[sel]
        s = size[group[pi]].astype(float)
        out.append((pi, pj, 2.0 / (s * (s - 1.0) * ok.sum())))
    return out


def _psi_permutation_p(mu_ranks: np.ndarray, g_ranks: np.ndarray, codes: np.ndarray, permutations: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Monte-Carlo p-values of Ψ for m measures (``mu_ranks`` (m, n)) on the same models, under the null
    that the measure's values are exchangeable across the models, whatever their gaps and
    hyperparameters (a measure that knows nothing of the gap).

    One draw is one permutation of the measure over all models, applied to every axis at once, so
    the permuted ψ_i keep the covariance they have through shared models (the null of Ψ = mean ψ_i
    is the null of the statistic actually computed). Ψ is linear in the measure's pair signs:
    ``Ψ = Σ_{i<j} W_ij sign(μ_i − μ_j)`` with ``W_ij = (1/A) Σ_axes w_ij sign(g_i − g_j)`` (A: defined
    axes). Permuting the measure by σ is the same as permuting W's rows and columns by σ⁻¹, so each
    block of draws is one (m, N) @ (N, b) product shared by all measures.
    """
    m, n = mu_ranks.shape
    terms = _psi_pair_weights(codes)
    if not terms:
        return np.full(m, math.nan)
    W = np.zeros((n, n))
    for pi, pj, w in terms:
        v = w * np.sign(g_ranks[pi] - g_ranks[pj]) / len(terms)
        np.add.at(W, (pi, pj), v)
        np.add.at(W, (pj, pi), -v)
    iu, ju = np.triu_indices(n, 1)
    sm = np.sign(mu_ranks[:, iu] - mu_ranks[:, ju]).astype(np.float64)  # (m, N)
    observed = sm @ W[iu, ju]
    threshold = np.abs(observed) - _PSI_ATOL
    hits = np.zeros(m, dtype=np.int64)
    for perms in _permutation_blocks(rng, n, permutations, exact=False):
        total = sm @ W[perms[:, iu], perms[:, ju]].T  # (m, b)
        hits += (np.abs(total) >= threshold[:, None]).sum(1)
    return (1.0 + hits) / (1.0 + permutations)


def compare_measures(table: pd.DataFrame, a: str, b: str, gap: str = "gen.gap_ce", *, bootstrap: int = 2_000,
                     seed: int = 0, confidence: float = 0.95) -> PairedComparison:
    """Does measure ``a`` rank the gap better than measure ``b``? A paired bootstrap of τ_a − τ_b.

    Rows are kept where both measures and the gap are finite (the others are counted in
    ``n_dropped``), so both τ are computed on the same n models, and ``tau_a``/``tau_b`` may differ
    from each measure's own τ in :func:`correlation_table` when the measures miss different rows.
    Each bootstrap resample of the models (the same resamples as :func:`kendall_test` with this
    seed and n) gives τ_a and τ_b on the *same* models, hence one difference; the interval is the
    percentile interval of those differences and ``p_value = min(1, 2·min(P(d ≤ 0), P(d ≥ 0)))``
    over the resamples. ``separated``: the interval excludes 0. Fewer than 2 rows, or
    ``bootstrap=0``, give NaN (``tau_a``, ``tau_b`` and ``diff`` stay defined from 2 rows on).
    """
    _, bootstrap, seed, confidence = _check_uncertainty(0, bootstrap, seed, confidence)
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    col_a, col_b, col_g = _resolve(table, [("measure", a, MEASURE_PREFIX), ("measure", b, MEASURE_PREFIX),
                                           ("gap", gap, GEN_PREFIX)])
    values = [pd.to_numeric(table[c], errors="coerce").to_numpy(dtype=float) for c in (col_a, col_b, col_g)]
    keep = np.isfinite(values[0]) & np.isfinite(values[1]) & np.isfinite(values[2])
    va, vb, vg = (v[keep] for v in values)
    n = int(keep.sum())
    tau_a, tau_b = kendall_tau(va, vg), kendall_tau(vb, vg)
    lo = hi = p = math.nan
    if n >= 2 and bootstrap > 0:
        _, boot, _, _ = _tau_draws(np.stack([_dense_ranks(va), _dense_ranks(vb)]), _dense_ranks(vg), 0, bootstrap,
                                   seed)
        diffs = boot[0] - boot[1]  # both are integers × the same 2/(n(n−1)): the sign of d is exact
        lo, hi = (float(v) for v in _interval(diffs, confidence))
        p = min(1.0, 2.0 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return PairedComparison(a=col_a, b=col_b, tau_a=tau_a, tau_b=tau_b, diff=tau_a - tau_b, ci_low=lo, ci_high=hi,
                            p_value=p, n=n, n_dropped=int((~keep).sum()), bootstrap=bootstrap,
                            confidence=confidence, seed=seed, gap=col_g)

