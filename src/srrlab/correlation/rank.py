"""Kendall's τ-a, Jiang et al.'s granulated coefficient Ψ and their conditional-mutual-information score
(docs/theory.md §6; docs/correlation.md)."""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ._columns import _Data, _group_ids, _prepare

_CHUNK_ELEMENTS = 1 << 24  # pairwise blocks of at most ~16M entries (kendall_tau for large n)

# ----------------------------------------------------------------------------------------------
# Kendall's τ


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's τ-a of docs/theory.md §6 (Jiang et al. 2020, "Kendall's rank-correlation coefficient"):

    ``τ = 1/(n(n−1)) Σ_{i≠j} sign(x_i − x_j) sign(y_i − y_j)``.

    Ties count 0 (no tie correction, so τ-a = scipy's τ-b only on tie-free data). ``n < 2`` gives
    NaN, and so does any NaN in ``x`` or ``y``. Vectorised over all pairs; beyond a few thousand
    values the pairs are processed in row blocks of ~16M entries.
    """
    x = np.asarray(x, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {x.size} and {y.size}")
    n = x.size
    if n < 2 or np.isnan(x).any() or np.isnan(y).any():
        return math.nan
    block = max(1, _CHUNK_ELEMENTS // n)
    total = 0.0
    for start in range(0, n, block):
        stop = min(n, start + block)
        sx = np.sign(x[start:stop, None] - x[None, :])
        sy = np.sign(y[start:stop, None] - y[None, :])
        total += float(np.einsum("ij,ij->", sx, sy))  # the diagonal contributes 0
    return total / (n * (n - 1))


def _pair_signs(v: np.ndarray) -> np.ndarray:
    return np.sign(v[:, None] - v[None, :])


# ----------------------------------------------------------------------------------------------
# granulated Kendall coefficient


@dataclass
class GranulatedResult:
    """Jiang et al.'s granulated Kendall coefficient (docs/theory.md §6). Dict keys are axis names without
    the ``hp.`` prefix."""

    psi: dict[str, float]  # ψ_i: mean τ over the groups used for axis i (NaN if none)
    Psi: float  # Ψ = mean of the defined ψ_i
    groups_used: dict[str, int]  # groups in which axis i takes ≥ 2 values
    groups_skipped: dict[str, int]  # groups in which it takes < 2 values
    tau: float  # overall τ over all kept models
    n_models: int
    n_dropped: int  # rows dropped for NaN in the measure or the gap
    axes: list[str] = field(default_factory=list)
    measure: str = ""
    gap: str = ""


def _granulated(d: _Data) -> GranulatedResult:
    n, k = d.codes.shape
    concord = _pair_signs(d.mu) * _pair_signs(d.g)  # (n, n), zero diagonal
    psi, used, skipped = {}, {}, {}
    for a, name in enumerate(d.names):
        others = np.delete(d.codes, a, axis=1)
        group = _group_ids(others)
        n_groups = int(group.max()) + 1 if n else 0
        size = np.bincount(group, minlength=n_groups)
        # distinct values of axis a inside each group
        distinct = np.bincount(np.unique(np.stack([group, d.codes[:, a]], 1), axis=0)[:, 0], minlength=n_groups)
        same = group[:, None] == group[None, :]
        sums = np.bincount(group, weights=(concord * same).sum(1), minlength=n_groups)
        ok = distinct >= 2
        taus = sums[ok] / (size[ok] * (size[ok] - 1.0))
        psi[name] = float(taus.mean()) if taus.size else math.nan
        used[name], skipped[name] = int(ok.sum()), int((~ok).sum())
    defined = [v for v in psi.values() if not math.isnan(v)]
    tau = float(concord.sum() / (n * (n - 1))) if n >= 2 else math.nan
    return GranulatedResult(psi=psi, Psi=float(np.mean(defined)) if defined else math.nan, groups_used=used,
                            groups_skipped=skipped, tau=tau, n_models=n, n_dropped=d.n_dropped,
                            axes=list(d.names), measure=d.measure, gap=d.gap)


def granulated_kendall(table: pd.DataFrame, axes: Iterable[str] | str | None, measure: str,
                       gap: str = "gen.gap_ce") -> GranulatedResult:
    """Granulated Kendall coefficient of Jiang et al. 2020 (their "granulated Kendall's coefficient",
    ``ψ_i = (1/m_i) Σ τ(models with θ_{−i} fixed)``, ``m_i = |Θ_1×…×Θ_{i−1}×Θ_{i+1}×…×Θ_n|``,
    ``Ψ = (1/n) Σ_i ψ_i``; docs/theory.md §6).

    For each axis i, models are grouped by the values of all *other* axes (groups keyed by the tuple
    of values); τ (:func:`kendall_tau`) is computed inside each group, where only θ_i varies, and
    ``ψ_i`` is the mean over groups. Groups in which axis i takes fewer than two distinct values
    (incomplete grids) are skipped and counted in ``groups_skipped``; on a full grid
    ``groups_used[i] = m_i``. ``Ψ`` is the mean of the ``ψ_i`` that are defined. Replicates (several
    models with the same hyperparameters) stay separate models inside their group. ``tau`` is the
    overall τ over all kept models.

    ``axes=None`` uses :func:`default_axes`. Rows with NaN in the measure or gap are dropped
    (``n_dropped``); NaN in an axis is treated as one more value of that axis.
    """
    return _granulated(_prepare(table, axes, measure, gap))


# ----------------------------------------------------------------------------------------------
# conditional mutual information


@dataclass
class CMIResult:
    """Jiang et al.'s conditional-mutual-information score. Sets are tuples of axis names without
    the ``hp.`` prefix (``()`` is the empty conditioning set)."""

    value: float  # min over conditioning sets of I(V_μ;V_g|U_S) / H(V_g|U_S), in [0, 1]
    per_set: dict[tuple[str, ...], float]  # normalised value per set (NaN where H(V_g|U_S) = 0)
    argmin: tuple[str, ...] | None  # the minimising set (None if every set is NaN)
    mutual_information: dict[tuple[str, ...], float] = field(default_factory=dict)  # I(V_μ;V_g|U_S), nats
    entropy: dict[tuple[str, ...], float] = field(default_factory=dict)  # H(V_g|U_S), nats
    n_pairs: int = 0  # ordered pairs of models used
    n_models: int = 0
    n_dropped: int = 0
    measure: str = ""
    gap: str = ""


def _pair_index(d: _Data) -> tuple[np.ndarray, np.ndarray]:
    """Ordered pairs (i, j), i ≠ j, of models whose hyperparameters differ on at least one axis."""
    n = d.codes.shape[0]
    differs = (d.codes[:, None, :] != d.codes[None, :, :]).any(-1) if d.codes.shape[1] else ~np.eye(n, dtype=bool)
    np.fill_diagonal(differs, False)
    return np.nonzero(differs)


def _cmi(d: _Data, max_conditioning: int) -> CMIResult:
    if max_conditioning < 0:
        raise ValueError(f"max_conditioning must be ≥ 0, got {max_conditioning}")
    i, j = _pair_index(d)
    n_pairs = i.size
    vm = np.sign(d.mu[i] - d.mu[j]).astype(np.int64) + 1  # V_μ ∈ {−1, 0, +1} → {0, 1, 2}
    vg = np.sign(d.g[i] - d.g[j]).astype(np.int64) + 1
    joint_code = vm * 3 + vg
    per_set, mi_d, h_d = {}, {}, {}
    k = len(d.names)
    for size in range(min(max_conditioning, k) + 1):
        for subset in itertools.combinations(range(k), size):
            key = tuple(d.names[a] for a in subset)
            if n_pairs == 0:
                per_set[key], mi_d[key], h_d[key] = math.nan, math.nan, math.nan
                continue
            cell = np.zeros(n_pairs, dtype=np.int64)
            for a in subset:  # U_S = (θ_S, θ'_S): the ordered pair of values of the axes in S
                L = d.levels[a]
                cell = (cell * L + d.codes[i, a]) * L + d.codes[j, a]
            cell = np.unique(cell, return_inverse=True)[1].reshape(-1)
            n_cells = int(cell.max()) + 1
            counts = np.bincount(cell * 9 + joint_code, minlength=n_cells * 9).reshape(n_cells, 3, 3).astype(float)
            n_u = counts.sum((1, 2))  # pairs per cell
            n_um = counts.sum(2)  # (cell, V_μ)
            n_ug = counts.sum(1)  # (cell, V_g)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = counts * n_u[:, None, None] / (n_um[:, :, None] * n_ug[:, None, :])
                mi = float(np.where(counts > 0, counts * np.log(np.where(counts > 0, ratio, 1.0)), 0.0).sum()) / n_pairs
                p_g = n_ug / n_u[:, None]
                h = float(-np.where(n_ug > 0, n_ug * np.log(np.where(n_ug > 0, p_g, 1.0)), 0.0).sum()) / n_pairs
            mi = max(mi, 0.0)
            mi_d[key], h_d[key] = mi, h
            per_set[key] = min(mi / h, 1.0) if h > 0 else math.nan
    finite = {s: v for s, v in per_set.items() if not math.isnan(v)}
    argmin = min(finite, key=finite.__getitem__) if finite else None
    return CMIResult(value=finite[argmin] if finite else math.nan, per_set=per_set, argmin=argmin,
                     mutual_information=mi_d, entropy=h_d, n_pairs=int(n_pairs), n_models=int(d.codes.shape[0]),
                     n_dropped=d.n_dropped, measure=d.measure, gap=d.gap)


def conditional_mutual_information(table: pd.DataFrame, axes: Iterable[str] | str | None, measure: str,
                                   gap: str = "gen.gap_ce", max_conditioning: int = 2) -> CMIResult:
    """Conditional-independence score of Jiang et al. 2020 (section "Conditional Independence Test:
    Towards Capturing the Causal Relationships"; the random variables are defined in their appendix
    "Definition of Random Variables").

    Over ordered pairs ``(θ, θ')`` of models (all ``i ≠ j`` whose hyperparameters differ on at least
    one axis; uniform probability over these pairs):

    - ``V_μ = sign(μ(θ) − μ(θ'))`` and ``V_g = sign(g(θ) − g(θ'))``, each in ``{−1, 0, +1}``
      (a tie is its own symbol);
    - ``U_S = (θ_S, θ'_S)``, the ordered pair of the two models' values on the axes in ``S``;
    - ``I(V_μ; V_g | U_S) = Σ_u p(u) Σ_{a,b} p(a,b|u) log[p(a,b|u) / (p(a|u) p(b|u))]``, each cell
      weighted by its probability ``p(u)`` = its fraction of the pairs;
    - normalised by ``H(V_g | U_S) = −Σ_u p(u) Σ_b p(b|u) log p(b|u)``, so each value lies in [0, 1]
      (``I(X;Y|U) ≤ H(Y|U)``); the log base cancels.

    ``value`` = min over all ``S`` with ``|S| ≤ max_conditioning`` (the empty set included) of the
    normalised score; ``per_set`` holds each set's value and ``argmin`` the minimiser. A set where
    ``H(V_g | U_S) = 0`` (the gap's order is fixed by the hyperparameters in ``S``) gives 0/0: NaN,
    left out of the minimum. A measure that is a function of the axes in some ``S`` scores exactly 0
    (it carries no information about the gap beyond ``S``); a measure ordering the models exactly
    like the gap scores 1.
    """
    return _cmi(_prepare(table, axes, measure, gap), max_conditioning)

