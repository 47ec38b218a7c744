"""The network readings of a study's table: which ``measure.*`` columns measure which network.

A study measures every model on one network, its *primary reading* (named in ``gen.measure_network``:
``"trained"`` or ``"protocol"``; ``"trained"`` when the column is absent), in the plain
``measure.<name>`` columns, and may measure it again on a second network, in
``measure.<name>@<network>`` columns (:func:`srrlab.runs.measure_key`). A measure whose value does
not depend on the network (SRR and its parts, the weight norms: ``network_free`` in
:mod:`srrlab.measures.registry`) gets no second column (``StudySpec.reading_key``): its plain column
belongs to every reading. A :class:`Reading` turns the table into the plain-named table of one
reading (:meth:`Reading.view`), so everything downstream handles every reading alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..correlation import MEASURE_PREFIX
from ..runs import parse_measure_key
from .study_common import srr_first

__all__ = ["Reading", "readings_of", "primary_network", "NETWORK_COLUMN", "DEFAULT_NETWORK"]

#: The column naming the network of the plain ``measure.*`` columns.
NETWORK_COLUMN = "gen.measure_network"
#: The primary reading's network when the table does not say.
DEFAULT_NETWORK = "trained"
_HEADINGS = {"trained": "trained network (LayerNorms kept)",
             "protocol": "protocol network (pre-operator LayerNorms removed)"}


@dataclass(frozen=True)
class Reading:
    """One network reading: ``network`` (``"trained"``, ``"protocol"``, …), whether it is the
    ``primary`` one, and ``columns``: each plain measure column of the reading
    (``measure.l2``) → the table column holding it (``measure.l2@protocol``), SRR first."""

    network: str
    primary: bool
    columns: dict[str, str]

    @property
    def heading(self) -> str:
        """``"trained network (LayerNorms kept)"``: what the reading is, for a heading."""
        return _HEADINGS.get(self.network, f"{self.network} network")

    @property
    def measures(self) -> list[str]:
        """The reading's plain measure columns, in order."""
        return list(self.columns)

    def view(self, table: pd.DataFrame) -> pd.DataFrame:
        """``table`` as this reading sees it: every non-measure column, then the reading's measures
        under their plain names."""
        others = [c for c in table.columns if not str(c).startswith(MEASURE_PREFIX)]
        view = table.loc[:, others + list(self.columns.values())]
        view.columns = others + list(self.columns)
        return view


def primary_network(table: pd.DataFrame) -> str:
    """The network of the plain ``measure.*`` columns: the one value of ``gen.measure_network``
    (missing values ignored), :data:`DEFAULT_NETWORK` without one. Several values: ValueError."""
    if NETWORK_COLUMN not in table.columns:
        return DEFAULT_NETWORK
    values = [str(v) for v in pd.unique(table[NETWORK_COLUMN].dropna())]
    if len(values) > 1:
        raise ValueError(f"the rows of the table measured different networks ({NETWORK_COLUMN}: "
                         f"{', '.join(values)}); one report ranks one primary reading: report the rows of each "
                         f"network separately, or measure every row on the same network")
    return values[0] if values else DEFAULT_NETWORK


def readings_of(table: pd.DataFrame) -> list[Reading]:
    """The readings of ``table``: the primary one (the plain ``measure.*`` columns), then one per
    other network of a ``measure.<name>@<network>`` column, in the order of their first column. A
    second reading holds, for each plain measure, its ``@network`` column under the plain name, or
    the plain column itself when there is none (a network-free measure: SRR, its parts, the weight
    norms), then any ``@network`` measure without a plain column. Every reading lists SRR first,
    then its measures in the order of the plain columns."""
    primary = primary_network(table)
    plain: dict[str, str] = {}
    others: dict[str, dict[str, str]] = {}
    for col in map(str, table.columns):
        if not col.startswith(MEASURE_PREFIX):
            continue
        name, network = parse_measure_key(col)
        if network is None:
            plain[col] = col
        elif network == primary:
            raise ValueError(f"column {col!r} names the primary reading's network {primary!r} ({NETWORK_COLUMN}), "
                             f"whose values are the plain column {MEASURE_PREFIX + name!r}; a second reading "
                             f"must be another network: rename or drop the column")
        else:
            others.setdefault(network, {})[MEASURE_PREFIX + name] = col
    readings = [Reading(primary, True, _ordered(plain))]
    readings += [Reading(network, False, _ordered({**plain, **cols})) for network, cols in others.items()]
    return readings


def _ordered(columns: dict[str, str]) -> dict[str, str]:
    """SRR first, the other measures in their order."""
    return {c: columns[c] for c in srr_first(list(columns))}
