"""The report of a generalisation study (docs/theory.md §6): tables, the paper's Figure 4 and Table 1.

Input is the study's tidy table, one row per grid point: ``id``, ``status``, ``error``, ``hp.*``,
``gen.*`` and ``measure.*`` columns (the format of :mod:`srrlab.correlation`).
:func:`write_study_report` writes the table, the correlation tables, the within-level τ, three
figures and a markdown report into one folder; :func:`headline` and :func:`srr_led` summarise a
correlation table for a terminal. What each file holds: docs/study.md.

The parts, one idea per module: :mod:`.study_tables` (strata, readings, every number and the tidy
CSVs), :mod:`.study_readings` (which columns measure which network), :mod:`.study_within`
(Simpson's check), :mod:`.study_verdicts` (SRR's sentence and the tables in text),
:mod:`.study_figures`, :mod:`.study_markdown` (the sections of ``report.md``) and
:mod:`.tidy_csv` (how the CSV files are written).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..correlation import HP_PREFIX
from ..io import atomic_write
from ..runs import CORRELATED_STATUSES, MEASURABLE_STATUSES
from .format import colour_palette, fence
from .study_common import GAP_LABELS, STATUSES, is_srr, sorted_levels, strip
from .study_figures import fig_grid, fig_srr, fig_summary
from .study_markdown import (
    correlation_lines,
    protocol_lines,
    runs_lines,
    settings_lines,
    summary_lines,
    summary_table,
)
from .study_readings import Reading
from .study_tables import ReadingTable, Stratum, StudyTables, study_tables
from .study_verdicts import (
    SRRVerdict,
    headline,
    markdown_correlation_table,
    srr_led,
    srr_verdict,
)
from .study_within import SimpsonFlag
from .tidy_csv import write_csv

__all__ = [
    "CORRELATED_STATUSES",
    "MEASURABLE_STATUSES",
    "Reading",
    "ReadingTable",
    "SimpsonFlag",
    "SRRVerdict",
    "Stratum",
    "StudyReport",
    "StudyTables",
    "srr_verdict",
    "STATUSES",
    "study_tables",
    "write_study_report",
    "headline",
    "srr_led",
    "markdown_correlation_table",
]
# MEASURABLE_STATUSES (drawn: finished training, at the target or not) and CORRELATED_STATUSES
# (ranked by default: the models that reached the target, as the paper's "successfully trained"
# ones; ``include_not_converged`` adds the others) come from srrlab.runs.


@dataclass
class StudyReport:
    """What :func:`write_study_report` wrote and found: ``path`` (``report.md``), the strata (one per
    value of the ``by`` settings, then the pooled one; a single "all models" stratum without
    ``by``), the files it wrote, ``correlation`` and ``within``: the tidy tables it wrote to
    ``correlation.csv`` (one row per stratum, reading and measure) and ``within.csv``."""

    path: Path
    strata: list[Stratum]
    files: list[Path]
    correlation: pd.DataFrame | None = None
    within: pd.DataFrame | None = None

    def headline(self) -> str:
        """Per stratum and reading: its title, the compact table (:func:`headline`) and the SRR sentence."""
        blocks = []
        for st in self.strata:
            if st.correlation is None:
                blocks.append(f"{st.title}: fewer than 2 runs, no correlation table")
                continue
            for rt in st.tables:
                named = f" — {rt.reading.heading}" if len(st.tables) > 1 else ""
                pooled = " — POOLED over the strata (for reference only)" if st.pooled else ""
                lines = [f"{st.title}{named}{pooled}", headline(rt.correlation)]
                if rt.verdict is not None:
                    lines.append(rt.verdict.sentence)
                blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


def write_study_report(table: pd.DataFrame, out_dir: str | os.PathLike, *, axes: list[str],
                       gap: str = "gen.gap_ce", title: str = "srrlab study", spec_text: str | None = None,
                       by: Sequence[str] = (), include_not_converged: bool = False, permutations: int = 10_000,
                       bootstrap: int = 2_000, seed: int = 0, write_table: bool = True) -> StudyReport:
    """Write the report of a generalisation study into ``out_dir``; returns a :class:`StudyReport`.

    ``table`` has one row per grid point: ``id``, ``status`` (one of :data:`STATUSES`), ``error``,
    ``hp.*``, ``gen.*`` and ``measure.*`` columns (SRR is ``measure.srr``; larger = more complex;
    ``measure.<name>@<network>`` columns are a second network reading, :mod:`.study_readings`).
    ``axes`` are the grid axes (``hp.`` prefix optional), ``gap`` the generalisation gap column
    (``gen.`` prefix optional), ``spec_text`` the study's settings, quoted verbatim in the report.

    The paper's population rules (docs/study.md): ``by`` (e.g. ``["dim"]``) reports one table per
    value of those settings (the paper's Table 1 is one width), followed by the pooled table,
    labelled as such (when there are several values); only the runs that reached the stopping
    target (status ``done``) enter a table, unless ``include_not_converged`` — the others are
    counted, listed and drawn hollow. Every reading gets its own tables; every τ carries its
    permutation p-value and bootstrap interval (``permutations``, ``bootstrap``, ``seed``;
    :func:`srrlab.correlation.correlation_table`), every table its within-level check and ends with
    :func:`srr_verdict`, the paired bootstrap of SRR against the best other measure. The numbers
    are :func:`~srrlab.report.study_tables.study_tables`; an unknown axis, stratum or gap is refused
    before anything is written.

    Files (each written atomically): ``runs.parquet`` and ``runs.csv`` (the whole table; not
    written with ``write_table=False``, for a table read from ``out_dir/runs.csv``),
    ``correlation.csv`` (one row per stratum, reading and measure), ``within.csv`` (τ within each
    level of each axis), ``fig_srr_vs_gap.png`` (the paper's Figure 4, a panel per stratum),
    ``fig_measures_grid.png`` (every measure of the primary reading against the gap; one file per
    stratum, ``fig_measures_grid_<stratum>.png``, when stratified), ``fig_summary.png`` (accuracy
    and run counts per model type) and ``report.md``. Model type is ``hp.variant`` when the table
    has it, else the first axis.
    """
    tables = study_tables(table, axes=axes, gap=gap, by=by, include_not_converged=include_not_converged,
                          permutations=permutations, bootstrap=bootstrap, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if write_table:
        files.append(atomic_write(out / "runs.parquet", lambda tmp: table.to_parquet(tmp, engine="pyarrow")))
        files.append(write_csv(table, out / "runs.csv"))
    for name, text in tables.texts().items():
        data = text.encode("utf-8")
        files.append(atomic_write(out / name, lambda tmp, data=data: Path(tmp).write_bytes(data)))

    status = table["status"].astype(str)
    extra = sorted(s for s in pd.unique(status) if s not in STATUSES)
    statuses = list(STATUSES[:4]) + [s for s in STATUSES[4:] if (status == s).any()] + extra
    colour_col = "hp.variant" if "hp.variant" in table.columns else (tables.axis_cols[0] if tables.axis_cols else None)
    colour_label = "model type" if colour_col == "hp.variant" else (
        strip(colour_col, HP_PREFIX) if colour_col else "all runs")
    figures = _figures(out, table, tables, colour_col, colour_label, statuses)
    files += [f for _, f in figures]

    md = _head_lines(table, tables, title, colour_col)
    md += ["## Settings", ""] + (settings_lines(table, tables.axis_cols) or ["- (no hp.* columns)"]) + [""]
    md += protocol_lines(tables.measured, tables.readings)
    if spec_text:
        md += ["Study specification:", "", fence(spec_text), ""]
    md += ["## Runs", ""] + runs_lines(table, tables, statuses, include_not_converged)
    md += correlation_lines(tables)
    md += _figure_lines(figures, tables.readings)
    md += summary_lines(summary_table(table, colour_col, statuses), colour_label, statuses)
    md += _files_lines(files, write_table)
    text = "\n".join(md)
    path = atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return StudyReport(path, tables.strata, files + [path], tables.correlation, tables.within)


def _figures(out: Path, table: pd.DataFrame, tables: StudyTables, colour_col: str | None, colour_label: str,
             statuses: Sequence[str]) -> list[tuple[Stratum | None, Path]]:
    """The three figures (the measures' grid once per non-pooled stratum), each with its stratum."""
    primary = tables.readings[0]
    srr_col = next((c for c in primary.measures if is_srr(c)), None)
    palette = colour_palette(sorted_levels(table[colour_col])) if colour_col else {}
    figures: list[tuple[Stratum | None, Path]] = [
        (None, fig_srr(out / "fig_srr_vs_gap.png", tables.strata, tables.gap, srr_col, colour_col, colour_label,
                       palette))]
    for st in tables.strata:
        if st.pooled:
            continue
        name = "fig_measures_grid.png" if not st.slug else f"fig_measures_grid_{st.slug}.png"
        taus = {str(k): float(v) for k, v in st.correlation["tau"].items()} if st.correlation is not None else {}
        figures.append((st, fig_grid(out / name, primary.view(st.runs), tables.gap, primary.measures, taus,
                                     colour_col, colour_label, palette, title_suffix=st.title if st.slug else "")))
    summary = summary_table(table, colour_col, statuses)
    figures.append((None, fig_summary(out / "fig_summary.png", summary, colour_label, statuses)))
    return figures


def _head_lines(table: pd.DataFrame, tables: StudyTables, title: str, colour_col: str | None) -> list[str]:
    """Title, one line on the population, and every (non-pooled) SRR sentence in bold."""
    gap = tables.gap
    md = [f"# {title}", "",
          f"{len(table)} grid points; generalisation gap `{gap}`"
          + (f" ({GAP_LABELS[gap].split(': ')[-1]})" if gap in GAP_LABELS else "")
          + f"; model type = `{colour_col or '–'}`"
          + (f"; one table per value of {', '.join(f'`{strip(b, HP_PREFIX)}`' for b in tables.by_cols)}"
             if tables.by_cols else "")
          + (f"; network readings: {', '.join(r.network for r in tables.readings)}" if len(tables.readings) > 1 else "")
          + ".", ""]
    for st in tables.strata:
        for rt in [] if st.pooled else st.tables:
            if rt.verdict is not None:
                md += [f"**{rt.verdict.sentence}**", ""]
    return md


def _figure_lines(figures: list[tuple[Stratum | None, Path]], readings: Sequence[Reading]) -> list[str]:
    md = ["## Figures", "",
          "![SRR measure vs generalisation gap](fig_srr_vs_gap.png)", "",
          "`fig_srr_vs_gap.png`: the SRR measure against the generalisation gap, one colour per model type, "
          "hollow markers = not converged, one panel per table (the paper's Figure 4).", ""]
    which = f" of the {readings[0].network} network" if len(readings) > 1 else ""
    for st, f in figures:
        if st is None:
            continue
        md += [f"![Every measure vs generalisation gap{(' — ' + st.label) if st.slug else ''}]({f.name})", "",
               f"`{f.name}`: every measure{which} against the gap"
               f"{(' for ' + st.label) if st.slug else ''}, each panel titled with its τ.", ""]
    return md + ["![Accuracy and convergence per model type](fig_summary.png)", "",
                 "`fig_summary.png`: mean train and test accuracy of the measured runs, and runs per status, per "
                 "model type.", ""]


def _files_lines(files: Sequence[Path], write_table: bool) -> list[str]:
    table = ("- `runs.parquet`, `runs.csv`: the whole table, one row per grid point" if write_table else
             "- `runs.csv`: the whole table, one row per grid point (the input of this report, not rewritten)")
    return ["## Files", "", table,
            "- `correlation.csv`: the correlation tables (one row per stratum, network reading and measure)",
            "- `within.csv`: τ within each level of each axis (one row per stratum, reading, measure, axis and level)",
            *(["- `replicates.csv`: SRR and its rival seed by seed, then on all seeds (one row per stratum, reading "
               "and slice)"] if any(f.name == "replicates.csv" for f in files) else []),
            "- " + ", ".join(f"`{f.name}`" for f in files if f.suffix == ".png") + ": the figures", ""]
