"""The tidy table's columns as the rank statistics see them: prefixes, name resolution, default axes,
and the rows kept for one (measure, gap) pair with integer codes for the axes (docs/correlation.md, "Input")."""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

HP_PREFIX = "hp."
MEASURE_PREFIX = "measure."
GEN_PREFIX = "gen."
#: ``hp.*`` columns never chosen as default axes: they index replicates, not a designed grid.
NON_AXIS_COLUMNS = ("hp.seed",)


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

