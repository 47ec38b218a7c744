"""The numbers of a study report: its strata, one correlation table per stratum and network
reading, the within-level τ, the SRR verdicts, and the tidy ``correlation.csv`` / ``within.csv``.

:func:`study_tables` computes all of it from the study's table without writing anything; the
report (:func:`srrlab.report.write_study_report`) writes :meth:`StudyTables.texts` as they are, so
the same table and settings always give the same bytes (a committed ``correlation.csv`` can be
re-derived from its ``runs.csv``, :func:`srrlab.study.report_tables`).
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..correlation import GEN_PREFIX, HP_PREFIX, correlation_table
from ..runs import CORRELATED_STATUSES, MEASURABLE_STATUSES
from .study_common import SRR, column, strip, value_text
from .study_readings import Reading, readings_of
from .study_replicates import REPLICATE_COLUMNS, replicate_column, replicate_rows
from .study_verdicts import SRRVerdict, srr_verdict
from .study_within import (
    WITHIN_COLUMNS,
    SimpsonFlag,
    simpson_flags,
    simpson_text,
    within_levels,
)
from .tidy_csv import csv_text

__all__ = ["Stratum", "ReadingTable", "StudyTables", "study_tables", "reading_table", "CORRELATION_KEYS", "WITHIN_KEYS"]

#: The first columns of ``correlation.csv``, then the table's ψ per axis and statistics, then ``simpson``.
CORRELATION_KEYS = ["stratum", "network", "measure"]
#: The columns of ``within.csv``.
WITHIN_KEYS = ["stratum", "network", *WITHIN_COLUMNS]
_BY_LABELS = {"dim": "d"}


@dataclass
class ReadingTable:
    """One network reading's numbers on one stratum: its correlation table (``None`` with fewer
    than 2 included runs or no measures), the within-level τ (:func:`~srrlab.report.study_within.within_levels`),
    each measure's Simpson flags, the SRR verdict and, for a population replicated over seeds, the
    verdict seed by seed (:func:`~srrlab.report.study_replicates.replicate_rows`; None otherwise)."""

    reading: Reading
    correlation: pd.DataFrame | None = None
    within: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=WITHIN_COLUMNS))
    flags: dict[str, list[SimpsonFlag]] = field(default_factory=dict)
    verdict: SRRVerdict | None = None
    replicates: pd.DataFrame | None = None


@dataclass
class Stratum:
    """One population of the report: the runs sharing the values ``key`` of the ``by`` settings
    (``key = {}``: every run; ``pooled``: every run of a stratified study, widths pooled), and
    ``tables``: one :class:`ReadingTable` per network reading, the primary one first."""

    label: str  # "d = 64", "all models", "pooled over dim"
    key: dict[str, Any]
    pooled: bool
    runs: pd.DataFrame  # its measured runs (done or not-converged), drawn in the figures
    included: pd.DataFrame  # the runs that enter its correlation tables
    axes: list[str]  # the axes of its granulated coefficients and of its within-level τ
    converged_only: bool = True
    tables: list[ReadingTable] = field(default_factory=list)

    @property
    def correlation(self) -> pd.DataFrame | None:
        """The primary reading's correlation table (None with fewer than 2 included runs)."""
        return self.tables[0].correlation if self.tables else None

    @property
    def verdict(self) -> SRRVerdict | None:
        """The primary reading's SRR verdict."""
        return self.tables[0].verdict if self.tables else None

    @property
    def title(self) -> str:
        """``"d = 64, n = 14 converged models"``: what a table or panel is about."""
        kind = "converged models" if self.converged_only else "models (not-converged included)"
        return f"{self.label}, n = {len(self.included)} {kind}"

    @property
    def slug(self) -> str:
        """For file names: ``""`` (unstratified), ``"dim=64"``, ``"pooled"``."""
        if self.pooled:
            return "pooled"
        return ",".join(f"{k}={value_text(v)}" for k, v in self.key.items())


@dataclass
class StudyTables:
    """Everything :func:`study_tables` computed: the resolved columns, the readings, the strata
    (with their tables) and the tidy ``correlation`` and ``within`` frames."""

    axis_cols: list[str]
    by_cols: list[str]
    gap: str
    included_statuses: tuple[str, ...]
    measured: pd.DataFrame
    readings: list[Reading]
    strata: list[Stratum]
    correlation: pd.DataFrame
    within: pd.DataFrame
    replicates: pd.DataFrame | None = None

    def texts(self) -> dict[str, str]:
        """The exact text of ``correlation.csv`` and ``within.csv``, and of ``replicates.csv`` for a
        population replicated over seeds."""
        texts = {"correlation.csv": csv_text(self.correlation), "within.csv": csv_text(self.within)}
        if self.replicates is not None:
            texts["replicates.csv"] = csv_text(self.replicates)
        return texts


def reading_table(st: Stratum, reading: Reading, gap: str, *, permutations: int, bootstrap: int, seed: int,
                  named: bool) -> ReadingTable:
    """The numbers of one reading on one stratum (the one place a reading is computed). ``named``:
    the verdict sentence names the reading (when the study has several)."""
    rows = reading.view(st.included)
    if len(rows) < 2 or not reading.measures:
        return ReadingTable(reading)
    draws = dict(permutations=permutations, bootstrap=bootstrap, seed=seed)
    corr = correlation_table(rows, measures=reading.measures, axes=st.axes, gap=gap, **draws)
    within = within_levels(rows, reading.measures, st.axes, gap, **draws)
    flags = {m: simpson_flags(corr.loc[m], within[within["measure"] == m]) for m in corr.index}
    label = f"{st.title}, {reading.network} network" if named else st.title
    verdict = srr_verdict(corr, rows, gap, bootstrap=bootstrap, seed=seed, label=label, simpson=flags.get(SRR, []))
    replicates = None
    seeds = replicate_column(rows)
    if seeds is not None and f"measure.{SRR}" in reading.measures:
        replicates = replicate_rows(rows, verdict.rival, gap, seeds, **draws)
    return ReadingTable(reading, corr, within, flags, verdict, replicates)


def study_tables(table: pd.DataFrame, *, axes: Sequence[str] | str, gap: str = "gen.gap_ce",
                 by: Sequence[str] | str = (), include_not_converged: bool = False, permutations: int = 10_000,
                 bootstrap: int = 2_000, seed: int = 0) -> StudyTables:
    """Strata, readings and every table of the report of ``table`` (arguments as
    :func:`srrlab.report.write_study_report`); writes nothing. An unknown axis, stratum or gap, or
    a table whose readings are inconsistent, raises ValueError."""
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if "status" not in table.columns:
        raise ValueError("table has no 'status' column")
    axes = [axes] if isinstance(axes, str) else list(axes)
    by = [by] if isinstance(by, str) else list(by)
    axis_cols = [column(table, a, HP_PREFIX, "axis") for a in axes]
    by_cols = [column(table, b, HP_PREFIX, "stratum (by)") for b in by]
    gap_col = column(table, gap, GEN_PREFIX, "gap")
    readings = readings_of(table)
    measured = table[table["status"].astype(str).isin(MEASURABLE_STATUSES)]
    included = MEASURABLE_STATUSES if include_not_converged else CORRELATED_STATUSES
    strata = _strata(measured, by_cols, axis_cols, included)
    for st in strata:
        st.tables = [reading_table(st, r, gap_col, permutations=permutations, bootstrap=bootstrap, seed=seed,
                                   named=len(readings) > 1) for r in readings]
    return StudyTables(axis_cols, by_cols, gap_col, tuple(included), measured, readings, strata,
                       _correlation_frame(strata), _within_frame(strata), _replicates_frame(strata))


def _correlation_frame(strata: Sequence[Stratum]) -> pd.DataFrame:
    """``correlation.csv``: one row per stratum, reading and measure (strata, readings and measures
    in the report's order); ψ columns of every stratum, NaN where a stratum lacks the axis."""
    frames = [rt.correlation.reset_index().assign(stratum=st.label, network=rt.reading.network,
                                                  simpson=[simpson_text(rt.flags[m]) for m in rt.correlation.index])
              for st in strata for rt in st.tables if rt.correlation is not None]
    if not frames:
        return pd.DataFrame(columns=[*CORRELATION_KEYS, *_statistics(), "simpson"])
    out = pd.concat(frames, ignore_index=True)
    psi = [c for c in out.columns if str(c).startswith("psi.")]
    rest = [c for c in out.columns if c not in psi and c not in CORRELATION_KEYS and c != "simpson"]
    return out[[*CORRELATION_KEYS, *psi, *rest, "simpson"]]


def _within_frame(strata: Sequence[Stratum]) -> pd.DataFrame:
    """``within.csv``: one row per stratum, reading, measure, axis and level."""
    frames = [rt.within.assign(stratum=st.label, network=rt.reading.network)
              for st in strata for rt in st.tables if len(rt.within)]
    if not frames:
        return pd.DataFrame(columns=WITHIN_KEYS)
    return pd.concat(frames, ignore_index=True)[WITHIN_KEYS]


def _replicates_frame(strata: Sequence[Stratum]) -> pd.DataFrame | None:
    """``replicates.csv``: one row per stratum, reading and seed slice; None without seeds."""
    frames = [rt.replicates.assign(stratum=st.label, network=rt.reading.network)
              for st in strata for rt in st.tables if rt.replicates is not None]
    if not frames:
        return None
    return pd.concat(frames, ignore_index=True)[REPLICATE_COLUMNS]


@functools.cache
def _statistics() -> tuple[str, ...]:
    """The statistic columns of :func:`~srrlab.correlation.correlation_table` (no axes), for the header
    of an empty file."""
    empty = pd.DataFrame({"gen.gap_ce": np.zeros(0), "measure.m": np.zeros(0)})
    return tuple(correlation_table(empty, axes=[], permutations=0, bootstrap=0).columns)


def _stratum_label(key: dict[str, Any]) -> str:
    return ", ".join(f"{_BY_LABELS.get(k, k)} = {value_text(v)}" for k, v in key.items()) or "all models"


def _strata(measured: pd.DataFrame, by_cols: Sequence[str], axis_cols: Sequence[str],
            included_statuses: Sequence[str]) -> list[Stratum]:
    converged_only = tuple(included_statuses) == CORRELATED_STATUSES

    def make(label, key, pooled, runs, axes):
        return Stratum(label, key, pooled, runs, runs[runs["status"].isin(included_statuses)], list(axes),
                       converged_only=converged_only)

    if not by_cols:
        return [make("all models", {}, False, measured, axis_cols)]
    inner = [a for a in axis_cols if a not in by_cols]
    out = []
    keys = measured[list(by_cols)].drop_duplicates()
    keys = keys.sort_values(list(by_cols), key=lambda s: pd.to_numeric(s, errors="coerce").fillna(0)) \
        if len(keys) else keys
    for _, k in keys.iterrows():
        key = {strip(c, HP_PREFIX): k[c] for c in by_cols}
        sel = np.logical_and.reduce([measured[c] == k[c] for c in by_cols])
        out.append(make(_stratum_label(key), key, False, measured[sel], inner))
    if len(out) > 1:  # with a single stratum the pooled table would repeat it
        names = ", ".join(strip(c, HP_PREFIX) for c in by_cols)
        out.append(make(f"pooled over {names}", {}, True, measured, axis_cols))
    return out
