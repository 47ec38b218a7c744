"""A study's report (``srrlab study report DIR``), from its store or from a committed table, as the
regularisation experiment's is written by :func:`srrlab.study.report_regularize`.

A study's folder holds its store (``study.sqlite``). A committed study (``docs/results/<name>/``)
holds its tidy table as ``runs.csv`` and its spec as ``spec.toml`` instead; the report is rebuilt
from those alone, and :func:`report_tables` / :func:`check_report` re-derive its
``correlation.csv`` and ``within.csv`` byte for byte (docs/study.md).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .spec import StudySpec
from .store import DB_NAME, StudyStore

__all__ = ["check_report", "load_study", "report_study", "report_tables"]


def load_study(directory: str | os.PathLike) -> tuple[pd.DataFrame, StudySpec, bool]:
    """The tidy table and spec of the study in ``directory``, and whether they come from a committed
    ``runs.csv`` + ``spec.toml`` (True; :func:`srrlab.study.transfer.read_results`) rather than the
    store (``study.sqlite``, used when present)."""
    from .transfer import SPEC_FILE, TABLE_FILE, read_results

    d = Path(directory)
    if (d / DB_NAME).exists():
        with StudyStore(d) as store:
            return store.table(), store.spec(), False
    if not any((d / name).is_file() for name in (TABLE_FILE, SPEC_FILE)):
        raise FileNotFoundError(f"{directory} holds no study: no {DB_NAME} (run `srrlab study run SPEC --dir "
                                f"{directory}`) and no committed table ({TABLE_FILE} with {SPEC_FILE}, docs/study.md)")
    spec, table = read_results(d)  # names the file that is missing
    lacking = [c for c in ("id", "status") if c not in table.columns]
    if lacking:
        raise ValueError(f"{d / TABLE_FILE} is not a study's table (no column {', '.join(lacking)}): commit the "
                         "runs.csv that `srrlab study report` or `srrlab study export` wrote")
    return table, spec, True


def _options(spec: StudySpec, by: str | Sequence[str] | None, include_not_converged: bool | None) -> dict[str, Any]:
    """The report's axes, strata and not-converged rule: the spec's ``[report]`` unless given."""
    if by is None:
        strata = spec.report_by
    else:
        items = by.split(",") if isinstance(by, str) else list(by)
        strata = [b.strip() for b in items if b.strip() and b.strip() != "none"]
    include = spec.include_not_converged if include_not_converged is None else include_not_converged
    return {"axes": [f"hp.{a}" for a in spec.axes], "by": strata, "include_not_converged": include}


def report_study(directory: str | os.PathLike, *, by: str | Sequence[str] | None = None,
                 include_not_converged: bool | None = None, permutations: int = 10_000, bootstrap: int = 2_000,
                 seed: int = 0):
    """Write the report of the study in ``directory`` (finished or not, or committed: :func:`load_study`)
    and return the :class:`srrlab.report.StudyReport`.

    Strata and the not-converged rule come from the spec's ``[report]`` table unless given: ``by``
    is a list of axes or a comma-separated string (``"none"``: one table over all models). A
    committed ``runs.csv`` is the report's input: it is not rewritten (and no ``runs.parquet`` is
    written next to it).
    """
    from ..report import write_study_report

    table, spec, committed = load_study(directory)
    return write_study_report(table, directory, title=f"srrlab study: {spec.name}", spec_text=spec.source,
                              permutations=permutations, bootstrap=bootstrap, seed=seed, write_table=not committed,
                              **_options(spec, by, include_not_converged))


def report_tables(table: pd.DataFrame, spec: StudySpec, *, by: str | Sequence[str] | None = None,
                  include_not_converged: bool | None = None, permutations: int = 10_000, bootstrap: int = 2_000,
                  seed: int = 0) -> dict[str, str]:
    """The exact text of ``correlation.csv`` and ``within.csv`` that :func:`report_study` writes for
    ``table`` and ``spec`` with these options (``{"correlation.csv": …, "within.csv": …}``)."""
    from ..report.study_tables import study_tables

    return study_tables(table, permutations=permutations, bootstrap=bootstrap, seed=seed,
                        **_options(spec, by, include_not_converged)).texts()


def check_report(directory: str | os.PathLike, **options: Any) -> list[str]:
    """Re-derive ``correlation.csv`` and ``within.csv`` of the study in ``directory`` (:func:`load_study`,
    ``options`` as :func:`report_tables`) and compare them byte for byte with the files there.
    Returns one line per file that is missing or differs (the first differing line quoted);
    ``[]`` when both agree. Writes nothing."""
    table, spec, _ = load_study(directory)
    problems = []
    for name, text in report_tables(table, spec, **options).items():
        path = Path(directory) / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        committed = path.read_bytes().decode("utf-8")
        if committed != text:
            problems.append(f"{name}: differs from the re-derived table, {_first_difference(committed, text)}")
    return problems


def _first_difference(committed: str, derived: str) -> str:
    a, b = committed.split("\n"), derived.split("\n")
    for k, (x, y) in enumerate(zip(a, b), start=1):
        if x != y:
            return f"line {k}: {x!r} (file) vs {y!r} (re-derived)"
    return f"{len(a)} lines (file) vs {len(b)} (re-derived)"
