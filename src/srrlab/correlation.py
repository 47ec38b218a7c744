"""How well does a complexity measure rank generalisation? The statistics of docs/theory.md §6.

Input everywhere is a tidy table (:class:`pandas.DataFrame`) with one row per trained model and
columns prefixed ``hp.`` (hyperparameters), ``measure.`` (complexity measures, larger = more
complex) and ``gen.`` (generalisation quantities such as ``gen.gap_ce``). Every function accepts
column names with or without their prefix (``measure="srr"`` or ``"measure.srr"``,
``axes=["lr", "hp.batch_size"]``); unknown names raise one :class:`ValueError` that lists the
available columns. Rows with NaN in the measure or the gap are dropped and counted
(``n_dropped`` in every result), never silently.

Statistics (definitions, conventions and a worked example in ``docs/correlation.md``):

- :func:`kendall_tau`: τ-a of docs/theory.md §6, ``τ = 1/(n(n−1)) Σ_{i≠j} sign(x_i−x_j) sign(y_i−y_j)``, ties
  count 0 (Jiang et al. 2020, Kendall's rank-correlation coefficient).
- :func:`granulated_kendall`: Jiang et al.'s granulated coefficient, per-axis ``ψ_i`` (τ inside the
  groups where only axis i varies, averaged over groups) and ``Ψ = mean_i ψ_i``.
- :func:`conditional_mutual_information`: Jiang et al.'s conditional-independence score, the
  normalised ``I(V_μ; V_g | U_S) / H(V_g | U_S)`` over pairs of models, minimised over conditioning
  sets ``|S| ≤ 2``.
- :func:`robust_sign_error`: Dziugaite et al. 2020, the sign-error over coupled pairs of runs that
  differ in exactly one hyperparameter; mean, 90th percentile and max over environments.
- :func:`kendall_test`: τ-a with a two-sided permutation p-value (exact enumeration when n! fits in
  the requested permutations, Monte Carlo otherwise) and a percentile bootstrap interval over models.
- :func:`compare_measures`: a paired bootstrap of τ_a − τ_b for two measures against the same gap.
- :func:`correlation_table`: all of the above, one row per measure (the layout of Jiang et al.'s
  Table 1), with τ's p-value and interval and Ψ's within-group permutation p-value.

References: Y. Jiang, B. Neyshabur, H. Mobahi, D. Krishnan, S. Bengio, "Fantastic Generalization
Measures and Where to Find Them", ICLR 2020 (arXiv:1912.02178); G. K. Dziugaite, A. Drouin, B. Neal,
N. Rajkumar, E. Caballero, L. Wang, I. Mitliagkas, D. M. Roy, "In Search of Robust Measures of
Generalization", NeurIPS 2020 (arXiv:2010.11924).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

__all__ = [
    "HP_PREFIX",
    "MEASURE_PREFIX",
    "GEN_PREFIX",
    "NON_AXIS_COLUMNS",
    "GranulatedResult",
    "CMIResult",
    "RobustSignErrorResult",
    "KendallTest",
    "PairedComparison",
    "kendall_tau",
    "kendall_test",
    "granulated_kendall",
    "conditional_mutual_information",
    "robust_sign_error",
    "correlation_table",
    "compare_measures",
    "default_axes",
    "hoeffding_weight",
]

HP_PREFIX = "hp."
MEASURE_PREFIX = "measure."
GEN_PREFIX = "gen."
#: ``hp.*`` columns never chosen as default axes: they index replicates, not a designed grid.
NON_AXIS_COLUMNS = ("hp.seed",)

_CHUNK_ELEMENTS = 1 << 24  # pairwise blocks of at most ~16M entries (kendall_tau for large n)


# ----------------------------------------------------------------------------------------------
# column names


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def _resolve(table: pd.DataFrame, requests: Sequence[tuple[str, str, str]]) -> list[str]:
    """Resolve ``(what, name, prefix)`` requests to column names; one ValueError for all misses.

    A name resolves to itself when it is a column, else to ``prefix + name``.
    """
    columns = set(map(str, table.columns))
    out: list[str] = []
    missing: dict[str, list[str]] = {}
    prefixes: dict[str, str] = {}
    for what, name, prefix in requests:
        if not isinstance(name, str):
            raise TypeError(f"{what} names must be strings, got {name!r}")
        if name in columns:
            out.append(name)
        elif prefix + name in columns:
            out.append(prefix + name)
        else:
            missing.setdefault(what, []).append(name)
            prefixes[what] = prefix
    if missing:
        lines = []
        for what, names in missing.items():
            prefix = prefixes[what]
            available = [c for c in map(str, table.columns) if c.startswith(prefix)]
            shown = ", ".join(_strip(c, prefix) for c in available) or "(none)"
            lines.append(f"unknown {what} column(s) {names}; available {prefix}* columns: {shown}")
        raise ValueError("; ".join(lines))
    return out


def _hashable(values: pd.Series) -> pd.Series:
    """Values usable as group keys: unhashable cells (lists, dicts) are replaced by their repr."""
    if values.dtype != object:
        return values
    return values.map(lambda v: v if isinstance(v, Hashable) else repr(v))


def default_axes(table: pd.DataFrame) -> list[str]:
    """All ``hp.*`` columns (in column order) that take at least two distinct values (NaN counts as a
    value), except :data:`NON_AXIS_COLUMNS` (``hp.seed``: a replicate index, not a grid axis)."""
    out = []
    for c in map(str, table.columns):
        if c.startswith(HP_PREFIX) and c not in NON_AXIS_COLUMNS:
            if _hashable(table[c]).nunique(dropna=False) >= 2:
                out.append(c)
    return out


@dataclass
class _Data:
    """The rows kept for one (measure, gap) pair, with integer codes for the axes."""

    axes: list[str]  # column names (with prefix)
    names: list[str]  # axis names without prefix (result keys)
    measure: str
    gap: str
    mu: np.ndarray  # (n,) float
    g: np.ndarray  # (n,) float
    codes: np.ndarray  # (n, k) int, codes[:, a] = level of axis a (NaN is a level)
    levels: list[int]  # number of levels per axis
    uniques: list[np.ndarray]  # uniques[a][code] = the value of axis a
    index: pd.Index  # labels of the kept rows in the input table
    n_dropped: int


def _prepare(table: pd.DataFrame, axes: Iterable[str] | str | None, measure: str, gap: str) -> _Data:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if isinstance(axes, str):
        axes = [axes]
    axis_names = None if axes is None else list(axes)
    requests = [("measure", measure, MEASURE_PREFIX), ("gap", gap, GEN_PREFIX)]
    requests += [("axis", a, HP_PREFIX) for a in (axis_names or [])]
    resolved = _resolve(table, requests)
    m_col, g_col, axis_cols = resolved[0], resolved[1], resolved[2:]
    if axis_names is None:
        axis_cols = default_axes(table)
    if len(set(axis_cols)) != len(axis_cols):
        raise ValueError(f"repeated axis in {axis_cols}")
    mu = pd.to_numeric(table[m_col], errors="coerce").to_numpy(dtype=float)
    g = pd.to_numeric(table[g_col], errors="coerce").to_numpy(dtype=float)
    keep = ~(np.isnan(mu) | np.isnan(g))
    codes = np.zeros((int(keep.sum()), len(axis_cols)), dtype=np.int64)
    levels, uniques = [], []
    for a, col in enumerate(axis_cols):
        c, u = pd.factorize(_hashable(table[col])[keep], use_na_sentinel=False)
        codes[:, a] = c
        levels.append(max(len(u), 1))
        uniques.append(np.asarray(u, dtype=object))
    return _Data(axes=list(axis_cols), names=[_strip(c, HP_PREFIX) for c in axis_cols], measure=m_col, gap=g_col,
                 mu=mu[keep], g=g[keep], codes=codes, levels=levels, uniques=uniques, index=table.index[keep],
                 n_dropped=int((~keep).sum()))


def _group_ids(codes: np.ndarray) -> np.ndarray:
    """Row → id of its distinct row of ``codes`` (shape (n, k), k may be 0)."""
    if codes.shape[1] == 0:
        return np.zeros(codes.shape[0], dtype=np.int64)
    return np.unique(codes, axis=0, return_inverse=True)[1].reshape(-1)


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


# ----------------------------------------------------------------------------------------------
# robust sign error


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


# ----------------------------------------------------------------------------------------------
# uncertainty: permutation tests and bootstrap intervals


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
    the within-group permutations of Ψ (``np.random.default_rng`` on the children of
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


def _permutation_blocks(rng: np.random.Generator, n: int, permutations: int):
    """Blocks ``(b, n)`` of permutations of ``range(n)``: all n! of them in lexicographic order when
    :func:`_exact`, else ``permutations`` uniform random ones (argsort of uniform keys, drawn in
    blocks of :func:`_draw_block` rows)."""
    block = _draw_block(n)
    if _exact(n, permutations):
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


def _psi_permutation_p(mu_ranks: np.ndarray, g_ranks: np.ndarray, codes: np.ndarray, permutations: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Monte-Carlo permutation p-values of Ψ for m measures (``mu_ranks`` (m, n)) on the same models.

    Each draw permutes the gap, independently for every axis i, within the groups of ψ_i (models
    that share all other axes), recomputes every ψ_i and averages the defined ones. ψ_i is a
    weighted sum over the pairs inside its used groups, ``w = 2 / (s(s−1) G_i)`` (s: group size,
    G_i: used groups), so each axis is one (m, N_i) @ (N_i, b) product per block of draws.
    """
    m, n = mu_ranks.shape
    k = codes.shape[1]
    iu, ju = np.triu_indices(n, 1)
    terms = []  # per defined axis: (group ids, slot order, pair i, pair j, weighted measure signs)
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
        w = 2.0 / (s * (s - 1.0) * ok.sum())
        terms.append((group, np.argsort(group, kind="stable"), pi, pj, w * np.sign(mu_ranks[:, pi] - mu_ranks[:, pj])))
    if not terms:
        return np.full(m, math.nan)
    observed = sum(wm @ np.sign(g_ranks[pi] - g_ranks[pj]) for _, _, pi, pj, wm in terms) / len(terms)
    threshold = np.abs(observed) - _PSI_ATOL
    hits = np.zeros(m, dtype=np.int64)
    block = _draw_block(n)
    for start in range(0, permutations, block):
        b = min(block, permutations - start)
        total = np.zeros((m, b))
        for group, slots, pi, pj, wm in terms:
            # sorting group + ½·uniform shuffles the models inside each group; slot s of the sorted
            # order belongs to model slots[s], which receives the gap of model order[:, s]
            order = np.argsort(group + 0.5 * rng.random((b, n)), axis=1)
            perm = np.empty_like(order)
            perm[:, slots] = order
            gp = g_ranks[perm]
            total += wm @ np.sign(gp[:, pi] - gp[:, pj]).T.astype(np.float64)
        hits += (np.abs(total / len(terms)) >= threshold[:, None]).sum(1)
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


# ----------------------------------------------------------------------------------------------
# the table


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
    used): in each draw the gap is permuted, independently for every axis i, *within the groups of
    ψ_i* (models sharing all other axes), every ψ_i is recomputed and Ψ_perm is the mean of the
    defined ψ_i; ``p = (1 + #{|Ψ_perm| ≥ |Ψ|})/(1 + permutations)``. The null keeps each group's set
    of gaps and only breaks their link to the measure along the varied axis.

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
