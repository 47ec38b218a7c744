"""Simpson's check: Kendall τ within each level of each grid axis, and the flags it raises.

A pooled τ over a grid mixes two kinds of pairs of models: pairs inside one level of an axis
(same variant, say) and pairs across levels. A measure can rank the gap across levels only —
it tells the variants apart and nothing inside a variant — or even against the gap inside every
level (Simpson's paradox). :func:`within_levels` computes τ, its bootstrap interval and its
permutation p-value on the rows of every level (``within.csv``); :func:`simpson_flags` reads them
against the pooled τ (rules in docs/correlation.md, "Within-level check").
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..correlation import HP_PREFIX, MEASURE_PREFIX, correlation_table
from .format import fmt
from .study_common import level_mask, sorted_levels, strip

__all__ = ["WITHIN_COLUMNS", "MIN_LEVEL_N", "SimpsonFlag", "within_levels", "simpson_flags", "simpson_text",
           "within_lines"]

#: Columns of :func:`within_levels` (``within.csv`` adds ``stratum`` and ``network`` in front).
WITHIN_COLUMNS = ["measure", "axis", "level", "n", "tau", "tau_lo", "tau_hi", "tau_p"]
#: A level enters the flags when its τ rests on at least this many models (2 models give τ = ±1 or 0).
MIN_LEVEL_N = 3
CARRIED, REVERSED = "carried", "reversed"


def within_levels(rows: pd.DataFrame, measures: Sequence[str], axes: Sequence[str], gap: str, *,
                  permutations: int, bootstrap: int, seed: int) -> pd.DataFrame:
    """τ of every measure against ``gap`` on the rows of each level of each axis: one row per
    (measure, axis, level), measures in the given order, axes in theirs, levels ascending
    (:data:`WITHIN_COLUMNS`; ``axis`` without ``hp.``). ``n`` counts the level's rows where the
    measure and the gap are finite; ``tau``, ``tau_lo``, ``tau_hi``, ``tau_p`` equal
    :func:`srrlab.correlation.kendall_test` on them with these ``permutations``, ``bootstrap`` and
    ``seed`` (computed by :func:`~srrlab.correlation.correlation_table`, which draws once for all
    measures with the same rows and gives kendall_test's values to the last bit)."""
    measures = list(measures)
    tables = {}  # (axis, level index) -> (level, the level's correlation table)
    for axis in axes:
        for k, level in enumerate(sorted_levels(rows[axis])):
            part = rows[level_mask(rows[axis], level)]
            tables[axis, k] = (level, correlation_table(part, measures=measures, axes=[], gap=gap,
                                                        permutations=permutations, bootstrap=bootstrap, seed=seed))
    records = []
    for m in measures:
        name = strip(m, MEASURE_PREFIX)
        for (axis, _), (level, corr) in tables.items():
            r = corr.loc[name]
            records.append([name, strip(axis, HP_PREFIX), level, int(r["n_models"]), float(r["tau"]),
                            float(r["tau_lo"]), float(r["tau_hi"]), float(r["tau_p"])])
    out = pd.DataFrame(records, columns=WITHIN_COLUMNS)
    out["level"] = out["level"].astype(object)
    return out


@dataclass(frozen=True)
class SimpsonFlag:
    """A measure's pooled τ read against its τ within the levels of one ``axis`` (rules:
    :func:`simpson_flags`): ``kind`` is ``"carried"`` or ``"reversed"``; ``tau_min``/``tau_max``:
    the range of the within-level τ over the ``levels`` levels that count (n ≥
    :data:`MIN_LEVEL_N`), ``tau_within`` their mean weighted by pairs (the τ of the within-level
    pairs) and ``tau_pooled`` the pooled τ."""

    axis: str
    kind: str
    tau_min: float
    tau_max: float
    levels: int
    tau_within: float
    tau_pooled: float

    def describe(self) -> str:
        """``"carried by variant"`` / ``"reversed within batch_size"`` (the ``simpson`` column)."""
        return f"carried by {self.axis}" if self.kind == CARRIED else f"reversed within {self.axis}"

    def span(self) -> str:
        return f"within each {self.axis} τ runs from {fmt(self.tau_min, 2)} to {fmt(self.tau_max, 2)}"

    def clause(self, subject: str) -> str:
        """``"SRR's τ is carried by the variant axis: within each variant τ runs from -0.43 to 0.21,
        none separated from 0"``."""
        if self.kind == CARRIED:
            return f"{subject}'s τ is carried by the {self.axis} axis: {self.span()}, none separated from 0"
        return (f"{subject}'s τ is reversed within the {self.axis} axis: {self.span()}, every one of the "
                "opposite sign to the pooled τ")


def _separated(lo: float, hi: float) -> bool:
    """The interval [lo, hi] excludes 0 (False when undefined)."""
    return bool(lo > 0 or hi < 0)


def _flag(axis: str, pooled: pd.Series, levels: pd.DataFrame) -> SimpsonFlag | None:
    tau = float(pooled["tau"])
    if not _separated(float(pooled["tau_lo"]), float(pooled["tau_hi"])):
        return None  # nothing to qualify: the pooled τ itself is not told from 0
    used = levels[(levels["n"] >= MIN_LEVEL_N) & np.isfinite(levels["tau"].to_numpy(dtype=float))]
    if len(used) < 2:
        return None
    taus = used["tau"].to_numpy(dtype=float)
    n = used["n"].to_numpy(dtype=float)
    within = float(np.sum(n * (n - 1) * taus) / np.sum(n * (n - 1)))
    if (np.sign(taus) == -np.sign(tau)).all():
        kind = REVERSED
    elif within * np.sign(tau) < abs(tau) / 2 and not any(map(_separated, used["tau_lo"], used["tau_hi"])):
        kind = CARRIED
    else:
        return None
    return SimpsonFlag(axis, kind, float(taus.min()), float(taus.max()), len(used), within, tau)


def simpson_flags(pooled: pd.Series, within: pd.DataFrame) -> list[SimpsonFlag]:
    """The flags of one measure, axis by axis: ``pooled`` its row of the correlation table
    (``tau``, ``tau_lo``, ``tau_hi``), ``within`` its rows of :func:`within_levels`.

    Only a pooled τ whose interval excludes 0 is flagged, on an axis with at least 2 levels of
    n ≥ :data:`MIN_LEVEL_N` (the levels that count). ``reversed``: every such level's τ is
    non-zero with the sign opposite to the pooled τ. Else ``carried``: none of their intervals
    excludes 0 *and* less than half of the pooled τ remains within the levels (their mean weighted
    by pairs, n(n−1), the τ of the within-level pairs, is below half the pooled τ in its
    direction). The second condition keeps small levels out of the flag: a level of 3 or 4 models
    cannot exclude 0 even at τ = 1, so without it a measure that ranks every level perfectly would
    be "carried" by that axis."""
    flags = [_flag(axis, pooled, levels) for axis, levels in within.groupby("axis", sort=False)]
    return [f for f in flags if f is not None]


def simpson_text(flags: Sequence[SimpsonFlag]) -> str:
    """The ``simpson`` cell: ``"carried by variant; reversed within batch_size"``, ``""`` without flags."""
    return "; ".join(f.describe() for f in flags)


def within_lines(flags: dict[str, list[SimpsonFlag]]) -> list[str]:
    """report.md lines under a correlation table: every flagged measure with its within-level τ range."""
    flagged = {m: fs for m, fs in flags.items() if fs}
    if not flagged:
        return ["Within-level check: no measure's τ is carried by one axis or reversed within its levels "
                "(τ inside every level of every axis: `within.csv`).", ""]
    lines = ["Within-level check (τ inside every level of every axis: `within.csv`; docs/correlation.md):", ""]
    for m, fs in flagged.items():
        parts = [f"{f.describe()} ({f.span()} over {f.levels} levels, "
                 + ("none separated from 0" if f.kind == CARRIED else "every one of the opposite sign")
                 + f"; within-level pairs τ = {fmt(f.tau_within, 2)}, pooled τ = {fmt(f.tau_pooled, 2)})"
                 for f in fs]
        lines.append(f"- `{m}`: " + "; ".join(parts))
    return lines + [""]
