"""A population replicated over seeds, slice by slice: does the verdict of one seed's models survive
in the whole population, and how much narrower are the intervals? (docs/study.md, "Seeds").

A study whose grid repeats its design over seeds (``seed = [0, 1, …]``, a replication axis of
:data:`srrlab.study.spec.REPLICATION_AXES`) holds one copy of the design per seed. For each stratum
and network reading with two or more seeds among its ranked models, :func:`replicate_rows` computes,
on each seed's models alone and then on all of them: SRR's τ with its bootstrap interval and
permutation p, the same for the *whole population's* best other measure (the rival of the
stratum's verdict, held fixed so that the slices compare one pair of measures), their paired
bootstrap difference (:func:`srrlab.correlation.compare_measures`) and the verdict's words
(:attr:`srrlab.report.study_verdicts.SRRVerdict.word`). Every slice uses the report's
permutation, bootstrap and seed settings, so ``replicates.csv`` re-derives from ``runs.csv``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..correlation import MEASURE_PREFIX, compare_measures, kendall_test
from .study_common import SRR, value_text

__all__ = ["REPLICATE_COLUMN", "REPLICATE_COLUMNS", "replicate_column", "replicate_rows", "ALL_SEEDS"]

#: The tidy-table column that replicates a design (``hp.seed``).
REPLICATE_COLUMN = "hp.seed"
#: The label of the slice holding every seed.
ALL_SEEDS = "all seeds"
#: The columns of ``replicates.csv`` (``stratum`` and ``network`` first, as in ``correlation.csv``).
REPLICATE_COLUMNS = ["stratum", "network", "slice", "n", "srr_tau", "srr_lo", "srr_hi", "srr_width", "srr_p", "rival",
                     "rival_tau", "rival_lo", "rival_hi", "rival_width", "diff", "diff_lo", "diff_hi", "diff_p",
                     "verdict"]


def replicate_column(included: pd.DataFrame) -> str | None:
    """``hp.seed`` when the ranked models ``included`` hold two or more seeds, else None."""
    if REPLICATE_COLUMN not in included.columns:
        return None
    return REPLICATE_COLUMN if included[REPLICATE_COLUMN].dropna().nunique() >= 2 else None


def _word(diff: float, lo: float, hi: float) -> str:
    """The verdict's words for a paired difference (as :attr:`SRRVerdict.word`)."""
    if not np.isfinite(diff):
        return "–"
    word = "leads" if diff >= 0 else "trails"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return word
    return word if (lo > 0 or hi < 0) else f"{word} within uncertainty"


def _tau(rows: pd.DataFrame, measure: str, gap: str, **draws: Any) -> tuple[float, float, float, float]:
    values = pd.to_numeric(rows[MEASURE_PREFIX + measure], errors="coerce").to_numpy(dtype=float)
    g = pd.to_numeric(rows[gap], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(values) & np.isfinite(g)
    test = kendall_test(values[keep], g[keep], **draws)
    return test.tau, test.ci_low, test.ci_high, test.p_value


def replicate_rows(rows: pd.DataFrame, rival: str | None, gap: str, column: str, *, permutations: int,
                   bootstrap: int, seed: int) -> pd.DataFrame:
    """One row per seed of ``column`` (in increasing order), then one for all of them, of the ranked
    models ``rows`` of one reading (plain ``measure.*`` names, :meth:`Reading.view`): the columns of
    :data:`REPLICATE_COLUMNS` but ``stratum`` and ``network``. ``rival``: the other measure SRR is
    compared with on every slice (None: the rival columns are empty)."""
    if MEASURE_PREFIX + SRR not in rows.columns:
        raise ValueError(f"the rows have no {MEASURE_PREFIX + SRR!r} column: replicate slices compare SRR")
    draws = dict(permutations=permutations, bootstrap=bootstrap, seed=seed)
    values = sorted(rows[column].dropna().unique(), key=lambda v: (pd.to_numeric(v, errors="coerce"), str(v)))
    slices = [(f"seed {value_text(v)}", rows[rows[column] == v]) for v in values] + [(ALL_SEEDS, rows)]
    out = []
    for label, sub in slices:
        s_tau, s_lo, s_hi, s_p = _tau(sub, SRR, gap, **draws)
        rec: dict[str, Any] = dict(slice=label, n=int(len(sub)), srr_tau=s_tau, srr_lo=s_lo, srr_hi=s_hi,
                                   srr_width=s_hi - s_lo, srr_p=s_p, rival=rival)
        nan = math.nan
        if rival is not None:
            r_tau, r_lo, r_hi, _ = _tau(sub, rival, gap, **draws)
            cmp = compare_measures(sub, SRR, rival, gap, bootstrap=bootstrap, seed=seed)
            rec.update(rival_tau=r_tau, rival_lo=r_lo, rival_hi=r_hi, rival_width=r_hi - r_lo, diff=cmp.diff,
                       diff_lo=cmp.ci_low, diff_hi=cmp.ci_high, diff_p=cmp.p_value,
                       verdict=_word(cmp.diff, cmp.ci_low, cmp.ci_high))
        else:
            rec.update(rival_tau=nan, rival_lo=nan, rival_hi=nan, rival_width=nan, diff=nan, diff_lo=nan,
                       diff_hi=nan, diff_p=nan, verdict="–")
        out.append(rec)
    return pd.DataFrame(out, columns=REPLICATE_COLUMNS[2:])
