"""The regularisation experiment (docs/theory.md §7; the paper's Tables 2 and 6): model variants ×
{CE, CE + SRR} × layer choices × seeds (× datasets), trained and reported.

It is a study (:mod:`srrlab.study`) whose grid has *arms*: runs with ``srr_reg = 0`` (plain
cross-entropy, the baseline) and runs with ``srr_reg > 0`` (a layer choice, an η). Arms are
either a grouped axis (values are tables of settings with a ``name``, e.g. ``arm = [{name =
"CE", srr_reg = 0.0}, {name = "CE+SRR (last)", srr_reg = 0.001, srr_layers = "last"}]``) or
plain ``srr_reg``/``srr_layers`` axes. Storage, resumption and execution (sequential or Dask)
are the study's: rerunning the same command continues where it stopped. The report's tables
re-derive from the tidy table alone: :func:`report_regularize` also reads a folder holding only
``runs.csv`` + ``spec.toml`` (results committed under ``docs/results/<name>/``), and
:func:`regularize_tables` gives the text of each table for a table and spec.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .cluster import Execution
from .runner import run_study
from .spec import SpecError, StudySpec, load_spec
from .store import DB_NAME, StudyStore

__all__ = ["load_regularize_spec", "arm_axis", "run_regularize", "report_regularize", "regularize_tables"]


def load_regularize_spec(spec: str | os.PathLike | StudySpec) -> StudySpec:
    """A regularisation preset (``demo``, ``paper``), a TOML path, or a parsed spec; checked with :func:`arm_axis`."""
    spec = spec if isinstance(spec, StudySpec) else load_spec(spec, kind="regularize")
    arm_axis(spec)
    return spec


def arm_axis(spec: StudySpec) -> str | None:
    """The grouped axis that names the arms (the first grouped axis setting ``srr_reg``), or None.

    Raises :class:`SpecError` unless the grid holds at least one CE arm (``srr_reg = 0``) and one
    regularised arm (``srr_reg > 0``).
    """
    etas = {float(spec.settings(p).get("srr_reg", 0.0)) for p in spec.points()}
    if 0.0 not in etas or not any(e > 0 for e in etas):
        raise SpecError(
            f"spec {spec.name!r} is not a regularisation experiment: its grid must hold CE runs (srr_reg = 0) and "
            f"regularised runs (srr_reg > 0), got srr_reg values {sorted(etas)}; e.g. under [grid]: "
            'arm = [{name = "CE", srr_reg = 0.0}, {name = "CE+SRR (last)", srr_reg = 0.001, srr_layers = "last"}]')
    for axis in spec.grouped_axes:
        if any("srr_reg" in v for v in spec.grid[axis]):
            return axis
    return None


def _write_report(spec: StudySpec, table: pd.DataFrame, directory: str | os.PathLike) -> dict[str, Any]:
    from ..report.regularize import write_regularization_report

    return write_regularization_report(table, directory, axes=spec.axes, arm_axis=arm_axis(spec),
                                       title=f"srrlab regularisation experiment: {spec.name}", spec_text=spec.source)


def regularize_tables(spec: StudySpec, table: pd.DataFrame) -> dict[str, str]:
    """``{file name: text}`` of each CSV table the report of ``spec``'s experiment writes for the tidy
    ``table`` (:func:`srrlab.report.regularize.regularization_tables`), byte for byte."""
    from ..report.regularize import regularization_tables

    return regularization_tables(table, axes=spec.axes, arm_axis=arm_axis(spec))


def report_regularize(directory: str | os.PathLike) -> dict[str, Any]:
    """Write the report of the regularisation experiment in ``directory`` (see
    :func:`srrlab.report.regularize.write_regularization_report`), finished or not: from its store, or,
    in a folder without one, from its ``runs.csv`` and ``spec.toml`` (:func:`srrlab.study.transfer.read_results`:
    an export, or results committed under ``docs/results/<name>/``)."""
    from .transfer import SPEC_FILE, TABLE_FILE, read_results

    directory = Path(directory)
    if (directory / DB_NAME).exists():
        with StudyStore(directory) as store:
            spec, table = store.spec(), store.table()
    elif (directory / TABLE_FILE).exists() and (directory / SPEC_FILE).exists():
        spec, table = read_results(directory)
    else:
        raise FileNotFoundError(f"{directory} holds no experiment (no {DB_NAME}, nor {TABLE_FILE} + {SPEC_FILE}); "
                                f"run `srrlab regularize run SPEC --dir {directory}`")
    return _write_report(load_regularize_spec(spec), table, directory)


def run_regularize(spec: str | os.PathLike | StudySpec, directory: str | os.PathLike, *, workers: int = 0,
                   scheduler: str | None = None, threads: int | None = None, extend: bool = False,
                   progress: bool | None = None, group: str | None = None,
                   execution: Execution | None = None, reuse: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """Run (or continue) the regularisation experiment ``spec`` in ``directory``, then write its report.

    Same execution options (and ``reuse``) as :func:`srrlab.study.run_study`. Returns the report's dict:
    ``path`` (``regularize.md``), ``summary`` (one row per dataset/variant/arm), ``sentences``
    (one per variant and regularised arm), ``table`` (the Tables 2/6 layout) and ``runs`` (the
    tidy per-run table).
    """
    spec = load_regularize_spec(spec)
    runs: pd.DataFrame = run_study(spec, directory, workers=workers, scheduler=scheduler, threads=threads,
                                   extend=extend, progress=progress, group=group, execution=execution,
                                   reuse=reuse)
    report = _write_report(spec, runs, directory)
    report["runs"] = runs
    return report
