"""Names and small helpers shared by the parts of the study report (:mod:`srrlab.report.study`)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..correlation import MEASURE_PREFIX
from ..runs import FINAL_STATUSES, STUDY_STATUSES, parse_measure_key
from .format import new_figure, save_png

#: Every status a grid point can have (srrlab.runs), in the order the report lists them.
STATUSES = FINAL_STATUSES + tuple(s for s in STUDY_STATUSES if s not in FINAL_STATUSES)

SRR = "srr"
GAP_LABELS = {"gen.gap_ce": "generalisation gap: test CE − train CE",
              "gen.gap_err": "generalisation gap: train acc − test acc"}
MAX_LISTED = 30  # failed/diverged/not-converged runs listed one by one in report.md


def strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def column(table: pd.DataFrame, name: str, prefix: str, what: str) -> str:
    """``name`` if it is a column, else ``prefix + name``; ValueError listing the candidates."""
    if name in table.columns:
        return name
    if prefix + name in table.columns:
        return prefix + name
    available = ", ".join(c for c in map(str, table.columns) if c.startswith(prefix)) or "(none)"
    raise ValueError(f"unknown {what} column {name!r}; available {prefix}* columns: {available}")


def value_text(v: object) -> str:
    """A hyperparameter value for text: floats in %g, everything else str."""
    if isinstance(v, (float, np.floating)):
        return "NaN" if math.isnan(v) else f"{float(v):g}"
    return str(v)


def sorted_levels(values: pd.Series) -> list:
    """Distinct values: numbers ascending, anything else in order of first appearance (the grid's order)."""
    uniques = list(pd.unique(values))
    if all(isinstance(u, (int, float, np.number)) and not isinstance(u, bool) for u in uniques):
        return sorted(uniques)
    return uniques


def level_mask(values: pd.Series, level: object) -> pd.Series:
    """The rows of ``values`` at ``level`` (a NaN level selects the missing values)."""
    if isinstance(level, (float, np.floating)) and math.isnan(level):
        return values.isna()
    return values == level


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def measure_name(name: object) -> str:
    """A measure's name without ``measure.`` and without its reading (``measure.l2@protocol`` → ``l2``)."""
    return parse_measure_key(strip(str(name), MEASURE_PREFIX))[0]


def is_srr(name: object) -> bool:
    return strip(str(name), MEASURE_PREFIX) == SRR


def is_srr_family(name: object) -> bool:
    """SRR and its parts/conventions (``srr``, ``srr-rate``, …): network-free, and not competitors of SRR."""
    return measure_name(name).split("-")[0] == SRR


def srr_first(names: Sequence[str]) -> list[str]:
    names = list(names)
    return [n for n in names if is_srr(n)] + [n for n in names if not is_srr(n)]


def percent(values: pd.Series) -> pd.Series:
    """Accuracies as percentages (fractions in [0, 1] are multiplied by 100)."""
    v = pd.to_numeric(values, errors="coerce")
    return v * 100.0 if v.dropna().abs().max() <= 1.0 + 1e-9 else v


def message_figure(path: Path, title: str, message: str) -> Path:
    fig = new_figure(6.0, 3.2)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11, transform=ax.transAxes)
    return save_png(fig, path)
