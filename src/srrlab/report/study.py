"""The report of a generalisation study (docs/theory.md §6): tables, the paper's Figure 4 and Table 1.

Input is the study's tidy table, one row per grid point: ``id``, ``status``, ``error``, ``hp.*``,
``gen.*`` and ``measure.*`` columns (the format of :mod:`srrlab.correlation`).
:func:`write_study_report` writes the table, the correlation table, three figures and a markdown
report into one folder; :func:`headline` and :func:`srr_led` summarise a correlation table for a
terminal. What each file holds: ``docs/_report.md``.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..correlation import GEN_PREFIX, HP_PREFIX, MEASURE_PREFIX, correlation_table
from ..io import atomic_write
from ..runs import CORRELATED_STATUSES, FINAL_STATUSES, MEASURABLE_STATUSES, STUDY_STATUSES
from .format import (colour_palette, fence, fmt, md_escape, md_table, new_figure, p_clause, p_value, save_png,
                     short_error, tau_interval)

__all__ = [
    "CORRELATED_STATUSES",
    "MEASURABLE_STATUSES",
    "SRRVerdict",
    "Stratum",
    "StudyReport",
    "srr_verdict",
    "STATUSES",
    "write_study_report",
    "headline",
    "srr_led",
    "markdown_correlation_table",
]

#: Every status a grid point can have (srrlab.runs), in the order the report lists them.
STATUSES = FINAL_STATUSES + tuple(s for s in STUDY_STATUSES if s not in FINAL_STATUSES)
# MEASURABLE_STATUSES (drawn: finished training, at the target or not) and CORRELATED_STATUSES
# (ranked by default: the models that reached the target, as the paper's "successfully trained"
# ones; ``include_not_converged`` adds the others) come from srrlab.runs.

SRR = "srr"
_STATUS_COLOURS = {"done": "#2e7d32", "not-converged": "#f9a825", "diverged": "#c62828", "failed": "#424242",
                   "pending": "#bdbdbd", "running": "#1e88e5"}
_GAP_LABELS = {"gen.gap_ce": "generalisation gap: test CE − train CE",
               "gen.gap_err": "generalisation gap: train acc − test acc"}
_MAX_LISTED = 30  # failed/diverged runs listed with their error in report.md


# ----------------------------------------------------------------------------------------------
# small helpers


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


def _column(table: pd.DataFrame, name: str, prefix: str, what: str) -> str:
    """``name`` if it is a column, else ``prefix + name``; ValueError listing the candidates."""
    if name in table.columns:
        return name
    if prefix + name in table.columns:
        return prefix + name
    available = ", ".join(c for c in map(str, table.columns) if c.startswith(prefix)) or "(none)"
    raise ValueError(f"unknown {what} column {name!r}; available {prefix}* columns: {available}")


def _fmt_pair(a: float, b: float) -> tuple[str, str]:
    """Format two different numbers with 3 decimals, or more if 3 would print them equal."""
    for digits in range(3, 8):
        fa, fb = fmt(a, digits), fmt(b, digits)
        if fa != fb:
            return fa, fb
    return fmt(a), fmt(b)


def _value(v: object) -> str:
    """A hyperparameter value for text: floats in %g, everything else str."""
    if isinstance(v, (float, np.floating)):
        return "NaN" if math.isnan(v) else f"{float(v):g}"
    return str(v)


def _sorted_levels(values: pd.Series) -> list:
    """Distinct values: numbers ascending, anything else in order of first appearance (the grid's order)."""
    uniques = list(pd.unique(values))
    if all(isinstance(u, (int, float, np.number)) and not isinstance(u, bool) for u in uniques):
        return sorted(uniques)
    return uniques


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _is_srr(name: object) -> bool:
    return _strip(str(name), MEASURE_PREFIX) == SRR


def _srr_first(names: Sequence[str]) -> list[str]:
    names = list(names)
    return [n for n in names if _is_srr(n)] + [n for n in names if not _is_srr(n)]


def _percent(values: pd.Series) -> pd.Series:
    """Accuracies as percentages (fractions in [0, 1] are multiplied by 100)."""
    v = pd.to_numeric(values, errors="coerce")
    return v * 100.0 if v.dropna().abs().max() <= 1.0 + 1e-9 else v


def _message_figure(path: Path, title: str, message: str) -> Path:
    fig = new_figure(6.0, 3.2)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=11, transform=ax.transAxes)
    return save_png(fig, path)


# ----------------------------------------------------------------------------------------------
# the SRR sentence and the terminal table


def _tau_series(correlation: pd.DataFrame) -> pd.Series:
    if "tau" not in correlation.columns:
        raise ValueError(f"correlation table has no 'tau' column (columns: {list(correlation.columns)})")
    tau = pd.to_numeric(correlation["tau"], errors="coerce").astype(float)
    tau.index = [_strip(str(i), MEASURE_PREFIX) for i in correlation.index]
    return tau


def _join(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def srr_led(correlation: pd.DataFrame) -> tuple[bool, str]:
    """Whether SRR had the highest overall Kendall τ in ``correlation`` (a
    :func:`srrlab.correlation.correlation_table`), and one plain sentence saying so.

    A tie for the highest τ counts as leading (the sentence names the measures it ties with).
    Measures with an undefined (NaN) τ are left out of the comparison. Without an ``srr`` row, or
    with an undefined τ for SRR, the answer is ``False`` and the sentence names the leader.
    """
    tau = _tau_series(correlation)
    finite = tau[np.isfinite(tau.to_numpy())]
    n = len(finite)
    qualifier = "" if n == len(tau) else " with a defined τ"
    if n == 0:
        return False, "No measure has a defined overall Kendall τ on this population."
    best = float(finite.max())
    leaders = [str(m) for m, v in finite.items() if v == best]
    if SRR not in tau.index:
        return False, (f"There is no SRR measure in this table; the highest overall Kendall τ was "
                       f"{_join(leaders)}'s ({fmt(best)}).")
    srr_tau = float(tau[SRR].iloc[0]) if isinstance(tau[SRR], pd.Series) else float(tau[SRR])
    if not np.isfinite(srr_tau):
        return False, (f"SRR's overall Kendall τ is undefined on this population (fewer than 2 runs with a "
                       f"finite SRR value); the highest was {_join(leaders)}'s ({fmt(best)}).")
    if srr_tau == best:
        others = [m for m in leaders if m != SRR]
        if n == 1:
            return True, (f"SRR was the only measure with a defined overall Kendall τ ({fmt(best)}) on this "
                          f"population.")
        if others:
            return True, (f"SRR tied for the highest overall Kendall τ ({fmt(best)}) with {_join(others)}, of the "
                          f"{n} measures{qualifier} on this population.")
        return True, (f"SRR had the highest overall Kendall τ ({fmt(best)}) of the {n} measures{qualifier} on "
                      f"this population.")
    verb = "did" if len(leaders) == 1 else "did, tied"
    fb, fs = _fmt_pair(best, srr_tau)
    return False, f"SRR did not have the highest overall τ: {_join(leaders)} {verb} ({fb} vs {fs} for SRR)."


def _is_srr_family(name: str) -> bool:
    """SRR and its parts/conventions (``srr``, ``srr-rate``, …): not competitors of SRR."""
    return _strip(str(name), MEASURE_PREFIX).split("-")[0] == SRR


@dataclass
class SRRVerdict:
    """How SRR ranked against the other measures on one population (:func:`srr_verdict`).

    ``leads``: SRR has the highest τ among SRR and the other (non-SRR) measures; ``rival``: the other
    measure with the highest τ; ``comparison``: the paired bootstrap of SRR against it
    (:func:`srrlab.correlation.compare_measures`), ``None`` when it could not be computed;
    ``significant``: the interval of the difference excludes 0; ``sentence``: all of it in words.
    """

    leads: bool | None
    rival: str | None
    comparison: Any
    significant: bool
    sentence: str


def srr_verdict(correlation: pd.DataFrame, table: pd.DataFrame | None = None, gap: str = "gen.gap_ce", *,
                bootstrap: int = 2_000, seed: int = 0, label: str = "") -> SRRVerdict:
    """Did SRR have the highest τ on this population, and is its lead (or deficit) larger than its
    uncertainty? ``correlation`` is a :func:`~srrlab.correlation.correlation_table` (with the
    ``tau_lo``/``tau_hi``/``tau_p`` columns when it has them); ``table`` the rows it was computed
    from, for the paired bootstrap of SRR against the best other measure (SRR's own parts and
    conventions, ``srr-*``, are not its rivals). ``label`` starts the sentence (e.g. ``"d = 64,
    n = 14 converged models"``).
    """
    from ..correlation import compare_measures

    tau = _tau_series(correlation)
    prefix = f"{label}: " if label else ""
    finite = tau[np.isfinite(tau.to_numpy())]
    if SRR not in tau.index or not np.isfinite(float(tau[SRR])):
        led, sentence = srr_led(correlation)
        return SRRVerdict(None, None, None, False, prefix + sentence)
    rivals = finite[[not _is_srr_family(n) for n in finite.index]]
    if rivals.empty:
        return SRRVerdict(True, None, None, False, prefix + "SRR is the only measure with a defined τ.")
    rival = str(rivals.idxmax())
    srr_tau, rival_tau = float(tau[SRR]), float(rivals.max())
    row = correlation.loc[[i for i in correlation.index if _strip(str(i), MEASURE_PREFIX) == SRR][0]]
    rrow = correlation.loc[[i for i in correlation.index if _strip(str(i), MEASURE_PREFIX) == rival][0]]

    def describe(name: str, r: pd.Series, value: float) -> str:
        extra = []
        if "tau_lo" in r and np.isfinite(r.get("tau_lo", math.nan)):
            extra.append(f"95% interval {tau_interval(r)}")
        if "tau_p" in r and np.isfinite(r.get("tau_p", math.nan)):
            extra.append(p_clause(r["tau_p"]))
        return f"{name} τ = {fmt(value)}" + (f" ({', '.join(extra)})" if extra else "")

    leads = srr_tau >= rival_tau
    cmp = None
    if table is not None and bootstrap > 0:
        cmp = compare_measures(table, SRR, rival, gap, bootstrap=bootstrap, seed=seed)
    significant = bool(cmp is not None and cmp.separated)
    text = prefix + describe("SRR", row, srr_tau) + "; " + describe(f"best other measure {rival}", rrow, rival_tau)
    if cmp is not None:
        diff = f"SRR − {rival} = {cmp.diff:+.3f} (paired bootstrap 95% interval [{cmp.ci_low:+.3f}, {cmp.ci_high:+.3f}])"
        if leads:
            verdict = ("SRR leads by more than its uncertainty: the paper's claim holds here" if significant else
                       "SRR leads, but by less than its uncertainty: the paper's claim is not confirmed here")
        else:
            verdict = ("SRR trails by more than its uncertainty: the paper's claim does not hold here" if significant
                       else "SRR trails, by less than its uncertainty: neither the claim nor its opposite is "
                            "established here")
        text += f". {diff}: {verdict}."
    else:
        text += (". SRR had the highest τ." if leads else f". SRR did not have the highest τ: {rival} did.")
    return SRRVerdict(leads, rival, cmp, significant, text)


def headline(correlation: pd.DataFrame) -> str:
    """A compact text table of a correlation table for a terminal: measure, τ, its interval and
    permutation p-value (when the table has them), Ψ, CMI (3 decimals, ``–`` for undefined), SRR
    first, the other measures in their order."""
    tau = _tau_series(correlation)
    names = [str(n) for n in tau.index]
    order = _srr_first(names)
    uncertain = "tau_lo" in correlation.columns
    width = max([len("measure")] + [len(n) for n in names])
    head = f"{'measure':<{width}}{'τ':>8}" + (f"{'interval':>17}{'p':>8}" if uncertain else "") \
        + f"{'Ψ':>8}{'CMI':>8}"
    lines = [head]
    position = {n: i for i, n in enumerate(names)}
    for name in order:
        row = correlation.iloc[position[name]]
        cells = f"{fmt(float(row['tau'])):>8}"
        if uncertain:
            cells += f"{tau_interval(row):>17}{p_value(float(row.get('tau_p', math.nan))):>8}"
        for c in ("Psi", "cmi"):
            cells += f"{fmt(float(row[c])) if c in correlation.columns else '–':>8}"
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# markdown


def markdown_correlation_table(correlation: pd.DataFrame) -> str:
    """The Table 1 layout of a correlation table as markdown: rows = measures (SRR first), columns
    ψ per axis, τ, its 95% bootstrap interval and permutation p-value (when the table has them), Ψ
    and its p-value, CMI, 3 decimals. In each value column the largest printed value is in bold
    (every cell that prints equal to it, so ties are all bold); undefined values print as ``–``."""
    psi_cols = [c for c in correlation.columns if str(c).startswith("psi.")]
    cols = [(f"ψ {str(c)[4:]}", c) for c in psi_cols] + [("τ", "tau"), ("τ 95% interval", "tau_lo"),
                                                         ("p(τ)", "tau_p"), ("Ψ", "Psi"), ("p(Ψ)", "Psi_p"),
                                                         ("CMI", "cmi")]
    cols = [(h, c) for h, c in cols if c in correlation.columns]
    names = [_strip(str(n), MEASURE_PREFIX) for n in correlation.index]
    order = _srr_first(names)
    position = {n: i for i, n in enumerate(names)}
    values = {c: pd.to_numeric(correlation[c], errors="coerce").to_numpy(dtype=float) for _, c in cols}
    text = {}
    for _, c in cols:
        if c == "tau_lo":
            text[c] = [tau_interval(correlation.iloc[i]) for i in range(len(names))]
        elif c in ("tau_p", "Psi_p"):
            text[c] = [p_value(v) for v in values[c]]
        else:
            text[c] = [fmt(v) for v in values[c]]
    best = {}
    for _, c in cols:
        shown = [float(t) for t in text[c] if t != "–"] if c not in ("tau_lo", "tau_p", "Psi_p") else []
        best[c] = fmt(max(shown)) if shown else None
    lines = ["| measure | " + " | ".join(h for h, _ in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name in order:
        i = position[name]
        cells = []
        for _, c in cols:
            t = text[c][i]
            cells.append(f"**{t}**" if best[c] is not None and t == best[c] else t)
        label = "SRR (`srr`)" if name == SRR else f"`{name}`"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# figures


def _scatter_groups(ax, data: pd.DataFrame, x: str, y: str, colour_col: str | None, palette: dict,
                    size: float) -> None:
    """Scatter ``y`` against ``x``, one colour per model type; hollow markers for not-converged runs."""
    groups = data.groupby(colour_col, sort=False, dropna=False) if colour_col else [("all", data)]
    for level, part in groups:
        colour = palette.get(level, "#1f77b4")
        conv = part["status"] != "not-converged"
        ax.scatter(part.loc[conv, x], part.loc[conv, y], s=size, color=colour, edgecolors="white",
                   linewidths=0.4, zorder=3)
        if (~conv).any():
            ax.scatter(part.loc[~conv, x], part.loc[~conv, y], s=size, facecolors="none", edgecolors=[colour],
                       linewidths=1.2, zorder=3)


def _legend_handles(palette: dict, colour_label: str, hollow: bool) -> list:
    handles = [Line2D([], [], linestyle="", marker="o", markersize=7, color=c, label=_value(lv))
               for lv, c in palette.items()]
    if hollow:
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=7, markerfacecolor="none",
                              markeredgecolor="#555555", label="not converged"))
    return handles


def _fig_srr(path: Path, strata: Sequence["Stratum"], gap: str, srr_col: str | None, colour_col: str | None,
             colour_label: str, palette: dict) -> Path:
    """The paper's Figure 4, one panel per stratum: SRR against the gap, hollow = not converged."""
    title = "SRR measure vs generalisation gap"
    if srr_col is None:
        return _message_figure(path, title, "no measure.srr column in the table")
    panels = []
    for st in strata:
        data = st.runs[np.isfinite(pd.to_numeric(st.runs[srr_col], errors="coerce").astype(float))
                       & np.isfinite(pd.to_numeric(st.runs[gap], errors="coerce").astype(float))]
        if len(data) >= 2:
            panels.append((st, data))
    if not panels:
        return _message_figure(path, title, "fewer than 2 measured runs with an SRR value: nothing to correlate")
    fig = new_figure(5.6 * len(panels) + 0.6, 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    hollow = False
    for ax, (st, data) in zip(axes, panels):
        _scatter_groups(ax, data, gap, srr_col, colour_col, palette, size=46)
        hollow = hollow or bool((data["status"] == "not-converged").any())
        ax.set_xlabel(_GAP_LABELS.get(gap, gap))
        ax.set_ylabel(r"SRR measure $\mu_{SRR}$")
        corr = st.correlation
        row = corr.loc[SRR] if corr is not None and SRR in corr.index else None
        stat = "τ undefined" if row is None else f"τ = {fmt(row['tau'])}" + (
            f" {tau_interval(row)}, {p_clause(row['tau_p'])}" if "tau_lo" in row else "")
        ax.set_title(f"{st.title}\n{stat}", fontsize=10)
        ax.grid(alpha=0.3)
    used = {k: v for k, v in palette.items() if any(k in set(d[colour_col]) for _, d in panels)} if colour_col else {}
    if used:
        axes[0].legend(handles=_legend_handles(used, colour_label, hollow), title=colour_label, fontsize=9,
                       title_fontsize=9, loc="best", framealpha=0.85)
    fig.suptitle(title, fontsize=11)
    return save_png(fig, path)


def _fig_grid(path: Path, data: pd.DataFrame, gap: str, measure_cols: Sequence[str], taus: dict,
              colour_col: str | None, colour_label: str, palette: dict, title_suffix: str = "") -> Path:
    title = "Complexity measures vs generalisation gap" + (f" — {title_suffix}" if title_suffix else "")
    if not measure_cols:
        return _message_figure(path, title, "no measure.* columns in the table")
    if len(data) < 2:
        return _message_figure(path, title, f"{_plural(len(data), 'measurable run')}: nothing to correlate")
    n = len(measure_cols)
    ncols = min(n, 6)
    nrows = math.ceil(n / ncols)
    # a fixed grid layout: constrained layout costs seconds on ~30 panels
    width, height = 2.75 * ncols + 0.4, 2.35 * nrows + 1.1
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.5 / width, right=1 - 0.15 / width, top=1 - 0.75 / height, bottom=0.95 / height,
                        wspace=0.32, hspace=0.62)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for k, col in enumerate(measure_cols):
        ax = axes[k]
        name = _strip(col, MEASURE_PREFIX)
        _scatter_groups(ax, data, gap, col, colour_col, palette, size=14)
        ax.set_title(f"{name}\nτ = {fmt(taus.get(name, math.nan))}", fontsize=9,
                     fontweight="bold" if name == SRR else "normal")
        ax.tick_params(labelsize=7)
        ax.yaxis.get_offset_text().set_fontsize(7)
        ax.xaxis.get_offset_text().set_fontsize(7)
        ax.grid(alpha=0.3)
        if k >= n - ncols:  # the lowest panel of each column
            ax.set_xlabel("gap", fontsize=8)
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.suptitle(f"{title} ({_GAP_LABELS.get(gap, gap).split(': ')[-1]}); larger measure = more complex",
                 fontsize=11, y=1 - 0.12 / height)
    if palette and colour_col:
        fig.legend(handles=_legend_handles(palette, colour_label, (data["status"] == "not-converged").any()),
                   title=colour_label, loc="lower center", ncols=min(len(palette) + 1, 8), fontsize=9,
                   title_fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return save_png(fig, path)


def _fig_summary(path: Path, summary: pd.DataFrame, colour_label: str, statuses: Sequence[str]) -> Path:
    if summary.empty:
        return _message_figure(path, "Accuracy and convergence per model type", "the table has no runs")
    fig = new_figure(max(9.0, 1.6 * len(summary) + 5.0), 4.4)
    ax_acc, ax_count = fig.subplots(1, 2, width_ratios=[1.25, 1.0])
    x = np.arange(len(summary))
    labels = [_value(v) for v in summary.index]
    width = 0.38
    for offset, col, colour, label in ((-width / 2, "train_acc", "#90caf9", "train"),
                                       (width / 2, "test_acc", "#1565c0", "test")):
        values = summary[col].to_numpy(dtype=float)
        bars = ax_acc.bar(x + offset, np.nan_to_num(values), width, color=colour, label=label,
                          yerr=np.nan_to_num(summary[f"{col}_std"].to_numpy(dtype=float)), capsize=3,
                          error_kw={"elinewidth": 0.8, "ecolor": "#444444"})
        for b, v in zip(bars, values):  # the value inside the bar, near its base (clear of the error bar)
            ax_acc.text(b.get_x() + b.get_width() / 2, 2.0, "n/a" if np.isnan(v) else f"{v:.1f}", ha="center",
                        va="bottom", fontsize=8, color="white" if label == "test" and not np.isnan(v) else "black")
    ax_acc.set_xticks(x, labels)
    ax_acc.set_ylim(0, 119)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_xlabel(colour_label)
    ax_acc.set_title("mean accuracy of the measured runs (± std)", fontsize=10)
    ax_acc.legend(loc="upper left", ncols=2, fontsize=8, framealpha=0.9)
    ax_acc.grid(axis="y", alpha=0.3)
    bottom = np.zeros(len(summary))
    for status in statuses:
        counts = summary[status].to_numpy(dtype=float)
        ax_count.bar(x, counts, 0.6, bottom=bottom, color=_STATUS_COLOURS.get(status, "#9e9e9e"), label=status)
        for xi, b, c in zip(x, bottom, counts):
            if c > 0:
                ax_count.text(xi, b + c / 2, f"{int(c)}", ha="center", va="center", fontsize=8,
                              color="white" if status in ("done", "diverged", "failed", "running") else "black")
        bottom += counts
    ax_count.set_xticks(x, labels)
    ax_count.set_xlabel(colour_label)
    ax_count.set_ylabel("runs")
    ax_count.set_ylim(0, max(bottom.max(), 1) * 1.12)
    ax_count.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_count.set_title("runs per status", fontsize=10)
    ax_count.legend(handles=[Patch(color=_STATUS_COLOURS.get(s, "#9e9e9e"), label=s) for s in statuses][::-1],
                    fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax_count.grid(axis="y", alpha=0.3)
    fig.suptitle("Accuracy and convergence per model type", fontsize=11)
    return save_png(fig, path)


# ----------------------------------------------------------------------------------------------
# the report


def _summary_table(table: pd.DataFrame, colour_col: str | None, statuses: Sequence[str]) -> pd.DataFrame:
    """Per model type: run counts per status, and means over the measurable runs."""
    key = table[colour_col] if colour_col else pd.Series("all", index=table.index)
    levels = _sorted_levels(key) if colour_col else ["all"]
    measured = table["status"].isin(MEASURABLE_STATUSES)
    rows = {}
    for level in levels:
        sel = (key == level) if not (isinstance(level, float) and math.isnan(level)) else key.isna()
        row = {"runs": int(sel.sum())}
        for s in statuses:
            row[s] = int((sel & (table["status"] == s)).sum())
        m = table[sel & measured]
        for col in ("train_acc", "test_acc"):
            full = GEN_PREFIX + col
            v = _percent(table[full])[m.index] if full in table else pd.Series(dtype=float)
            row[col], row[f"{col}_std"] = (float(v.mean()) if v.notna().any() else math.nan,
                                           float(v.std(ddof=0)) if v.notna().any() else math.nan)
        for col in ("gap_ce", "gap_err", "epochs"):
            full = GEN_PREFIX + col
            v = pd.to_numeric(m[full], errors="coerce") if full in m else pd.Series(dtype=float)
            row[col] = float(v.mean()) if v.notna().any() else math.nan
        rows[level] = row
    columns = ["runs", *statuses, "train_acc", "train_acc_std", "test_acc", "test_acc_std", "gap_ce", "gap_err",
               "epochs"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns) if rows else pd.DataFrame(columns=columns)


def _settings_lines(table: pd.DataFrame, axis_cols: Sequence[str]) -> list[str]:
    hp_cols = [c for c in map(str, table.columns) if c.startswith(HP_PREFIX)]
    lines = []
    for c in axis_cols:
        lines.append(f"- grid axis `{_strip(c, HP_PREFIX)}`: "
                     + ", ".join(md_escape(_value(v)) for v in _sorted_levels(table[c])))
    for c in hp_cols:
        if c in axis_cols:
            continue
        levels = _sorted_levels(table[c].map(lambda v: v if not isinstance(v, (list, dict)) else repr(v)))
        shown = ", ".join(md_escape(_value(v)) for v in levels[:8]) + (", …" if len(levels) > 8 else "")
        kind = "fixed" if len(levels) == 1 else "also varies (not an axis)"
        lines.append(f"- {kind} `{_strip(c, HP_PREFIX)}`: {shown}")
    return lines


@dataclass
class Stratum:
    """One population of the report: the runs sharing the values ``key`` of the ``by`` settings
    (``key = {}``: every run; ``pooled``: every run of a stratified study, widths pooled)."""

    label: str  # "d = 64", "all models", "pooled over dim"
    key: dict[str, Any]
    pooled: bool
    runs: pd.DataFrame  # its measured runs (done or not-converged), drawn in the figures
    included: pd.DataFrame  # the runs that enter its correlation table
    axes: list[str]  # the axes of its granulated coefficients
    correlation: pd.DataFrame | None = None  # None with fewer than 2 included runs
    verdict: SRRVerdict | None = None
    converged_only: bool = True

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
        return ",".join(f"{k}={_value(v)}" for k, v in self.key.items())


@dataclass
class StudyReport:
    """What :func:`write_study_report` wrote and found: ``path`` (``report.md``), the strata (one per
    value of the ``by`` settings, then the pooled one; a single "all models" stratum without
    ``by``), the files it wrote, and ``correlation``: the tidy table it wrote to ``correlation.csv``
    (one row per stratum and measure)."""

    path: Path
    strata: list[Stratum]
    files: list[Path]
    correlation: pd.DataFrame | None = None

    def headline(self) -> str:
        """Per stratum: its title, the compact table (:func:`headline`) and the SRR sentence."""
        blocks = []
        for st in self.strata:
            if st.correlation is None:
                blocks.append(f"{st.title}: fewer than 2 runs, no correlation table")
                continue
            lines = [f"{st.title}" + (" — POOLED over the strata (for reference only)" if st.pooled else ""),
                     headline(st.correlation)]
            if st.verdict is not None:
                lines.append(st.verdict.sentence)
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks)


_BY_LABELS = {"dim": "d"}


def _stratum_label(key: dict[str, Any]) -> str:
    return ", ".join(f"{_BY_LABELS.get(k, k)} = {_value(v)}" for k, v in key.items()) or "all models"


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
        key = {_strip(c, HP_PREFIX): k[c] for c in by_cols}
        sel = np.logical_and.reduce([measured[c] == k[c] for c in by_cols])
        out.append(make(_stratum_label(key), key, False, measured[sel], inner))
    if len(out) > 1:  # with a single stratum the pooled table would repeat it
        names = ", ".join(_strip(c, HP_PREFIX) for c in by_cols)
        out.append(make(f"pooled over {names}", {}, True, measured, axis_cols))
    return out


def write_study_report(table: pd.DataFrame, out_dir: str | os.PathLike, *, axes: list[str],
                       gap: str = "gen.gap_ce", title: str = "srrlab study", spec_text: str | None = None,
                       by: Sequence[str] = (), include_not_converged: bool = False, permutations: int = 10_000,
                       bootstrap: int = 2_000, seed: int = 0) -> StudyReport:
    """Write the report of a generalisation study into ``out_dir``; returns a :class:`StudyReport`.

    ``table`` has one row per grid point: ``id``, ``status`` (one of :data:`STATUSES`), ``error``,
    ``hp.*``, ``gen.*`` and ``measure.*`` columns (SRR is ``measure.srr``; larger = more complex).
    ``axes`` are the grid axes (``hp.`` prefix optional), ``gap`` the generalisation gap column
    (``gen.`` prefix optional), ``spec_text`` the study's settings, quoted verbatim in the report.

    The paper's population rules (docs/study.md): ``by`` (e.g. ``["dim"]``) reports one table per
    value of those settings (the paper's Table 1 is one width), followed by the pooled table,
    labelled as such (when there are several values); only the runs that reached the stopping target (status ``done``) enter a
    table, unless ``include_not_converged`` — the others are counted, listed and drawn hollow.
    Every τ carries its permutation p-value and bootstrap interval (``permutations``,
    ``bootstrap``, ``seed``; :func:`srrlab.correlation.correlation_table`) and every table ends with
    :func:`srr_verdict`, the paired bootstrap of SRR against the best other measure.

    Files (each written atomically): ``runs.parquet`` and ``runs.csv`` (the whole table),
    ``correlation.csv`` (tidy: one row per stratum and measure, the stratum in the first column),
    ``fig_srr_vs_gap.png`` (the paper's Figure 4, a panel per stratum), ``fig_measures_grid.png``
    (every measure against the gap; one file per stratum, ``fig_measures_grid_<stratum>.png``, when
    stratified), ``fig_summary.png`` (accuracy and run counts per model type) and ``report.md``.
    Model type is ``hp.variant`` when the table has it, else the first axis.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    if "status" not in table.columns:
        raise ValueError("table has no 'status' column")
    if isinstance(axes, str):
        axes = [axes]
    if isinstance(by, str):
        by = [by]
    axis_cols = [_column(table, a, HP_PREFIX, "axis") for a in axes]
    by_cols = [_column(table, b, HP_PREFIX, "stratum (by)") for b in by]
    gap_col = _column(table, gap, GEN_PREFIX, "gap")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    # --- the table itself
    files.append(atomic_write(out / "runs.parquet", lambda tmp: table.to_parquet(tmp, engine="pyarrow")))
    files.append(atomic_write(out / "runs.csv", lambda tmp: table.to_csv(tmp, index=False)))

    # --- which runs are measured, which enter the tables
    status = table["status"].astype(str)
    present = [s for s in STATUSES if (status == s).any()]
    extra = [s for s in pd.unique(status) if s not in STATUSES]
    statuses = list(STATUSES[:4]) + [s for s in STATUSES[4:] if s in present] + sorted(extra)
    counts = {s: int((status == s).sum()) for s in statuses}
    measured = table[status.isin(MEASURABLE_STATUSES)]
    included_statuses = MEASURABLE_STATUSES if include_not_converged else CORRELATED_STATUSES
    measure_cols = _srr_first([c for c in map(str, table.columns) if c.startswith(MEASURE_PREFIX)])
    srr_col = next((c for c in measure_cols if _is_srr(c)), None)

    # --- one correlation table per stratum
    strata = _strata(measured, by_cols, axis_cols, included_statuses)
    frames = []
    for st in strata:
        if len(st.included) >= 2 and measure_cols:
            st.correlation = correlation_table(st.included, measures=measure_cols, axes=st.axes, gap=gap_col,
                                               permutations=permutations, bootstrap=bootstrap, seed=seed)
            st.verdict = srr_verdict(st.correlation, st.included, gap_col, bootstrap=bootstrap, seed=seed,
                                     label=st.title)
            frames.append(st.correlation.reset_index().assign(stratum=st.label))
    if frames:
        corr_all = pd.concat(frames, ignore_index=True)
        corr_all = corr_all[["stratum", *[c for c in corr_all.columns if c != "stratum"]]]
    else:
        corr_all = pd.DataFrame(columns=["stratum", "measure", "tau", "tau_p", "tau_lo", "tau_hi", "Psi", "Psi_p",
                                         "cmi", "n_models", "n_dropped"])
    files.append(atomic_write(out / "correlation.csv", lambda tmp: corr_all.to_csv(tmp, index=False)))

    # --- figures
    if "hp.variant" in table.columns:
        colour_col: str | None = "hp.variant"
    else:
        colour_col = axis_cols[0] if axis_cols else None
    colour_label = "model type" if colour_col == "hp.variant" else (
        _strip(colour_col, HP_PREFIX) if colour_col else "all runs")
    palette = colour_palette(_sorted_levels(table[colour_col])) if colour_col else {}
    files.append(_fig_srr(out / "fig_srr_vs_gap.png", strata, gap_col, srr_col, colour_col, colour_label, palette))
    grid_files = []
    for st in strata:
        if st.pooled:
            continue
        name = "fig_measures_grid.png" if not st.slug else f"fig_measures_grid_{st.slug}.png"
        taus = {str(k): float(v) for k, v in st.correlation["tau"].items()} if st.correlation is not None else {}
        grid_files.append((st, _fig_grid(out / name, st.runs, gap_col, measure_cols, taus, colour_col, colour_label,
                                         palette, title_suffix=st.title if st.slug else "")))
    files += [f for _, f in grid_files]
    summary = _summary_table(table, colour_col, statuses)
    files.append(_fig_summary(out / "fig_summary.png", summary, colour_label, statuses))

    # --- report.md
    md: list[str] = [f"# {title}", ""]
    md += [f"{len(table)} grid points; generalisation gap `{gap_col}`"
           + (f" ({_GAP_LABELS[gap_col].split(': ')[-1]})" if gap_col in _GAP_LABELS else "")
           + f"; model type = `{colour_col or '–'}`"
           + (f"; one table per value of {', '.join(f'`{_strip(b, HP_PREFIX)}`' for b in by_cols)}" if by_cols else "")
           + ".", ""]
    for st in strata:
        if st.verdict is not None and not st.pooled:
            md += [f"**{st.verdict.sentence}**", ""]

    md += ["## Settings", ""]
    md += _settings_lines(table, axis_cols) or ["- (no hp.* columns)"]
    md += [""]
    md += _protocol_lines(measured)
    if spec_text:
        md += ["Study specification:", "", fence(spec_text), ""]

    md += ["## Runs", ""]
    md += [md_table(["status", "runs"], [[s, str(counts[s])] for s in statuses] + [["**all**", f"**{len(table)}**"]]),
           ""]
    n_in = int(measured["status"].isin(included_statuses).sum())
    if include_not_converged:
        md += [f"The correlation tables use the {_plural(n_in, 'run')} with status `done` ({counts['done']}) or "
               f"`not-converged` ({counts['not-converged']}) (`include_not_converged = true`); hollow markers in "
               "the figures are not-converged runs. Diverged, failed, pending and running runs are left out.", ""]
    else:
        md += [f"The correlation tables use the {_plural(n_in, 'run')} that reached the stopping target (status "
               f"`done`), as the paper correlates the models it \"successfully trained\" to its target loss. The "
               f"{_plural(counts['not-converged'], 'run')} that stopped at the epoch limit first (`not-converged`) "
               "were measured and are drawn hollow in the figures, but are not ranked (`include_not_converged = "
               "true` under `[report]`, or `srrlab study report --include-not-converged`, brings them in). "
               "Diverged, failed, pending and running runs are left out.", ""]
        md += _not_converged_lines(measured, axis_cols, by_cols)
    bad = table[status.isin(["failed", "diverged"])]
    if len(bad):
        md += ["Failed and diverged runs:", ""]
        ids = bad["id"] if "id" in bad.columns else pd.Series(bad.index.astype(str), index=bad.index)
        for i in bad.index[:_MAX_LISTED]:
            err = bad.at[i, "error"] if "error" in bad.columns else None
            md.append(f"- `{ids[i]}` ({status[i]}): {md_escape(short_error(err))}")
        if len(bad) > _MAX_LISTED:
            md.append(f"- … and {len(bad) - _MAX_LISTED} more (the `error` column of `runs.csv`)")
        md.append("")

    md += ["## Correlation with the generalisation gap", ""]
    if not measure_cols:
        md += ["The table has no `measure.*` columns: there is nothing to correlate.", ""]
    for st in strata if measure_cols else []:
        md += [f"### {st.title}" + (" — pooled (for reference only)" if st.pooled else ""), ""]
        if st.pooled:
            md += [f"Every stratum together. The paper never pools widths: {md_escape(', '.join(map(str, st.key)) or 'the strata')} "
                   "order many pairs by themselves (the count ‖Z‖₀ and most norms grow with the width), so this "
                   "table answers a different question than the per-stratum tables above.", ""]
        if st.correlation is None:
            md += [f"{_plural(len(st.included), 'run')} entered this table; at least 2 are needed for a rank "
                   "correlation, so no table was computed.", ""]
            continue
        md += [markdown_correlation_table(st.correlation), ""]
        if st.verdict is not None:
            md += [st.verdict.sentence, ""]
        dropped = st.correlation[st.correlation["n_dropped"] > 0]
        if len(dropped):
            md += ["Runs dropped for a NaN value: " + "; ".join(
                f"`{m}` {int(r['n_dropped'])} of {int(r['n_dropped']) + int(r['n_models'])}"
                for m, r in dropped.iterrows()) + ".", ""]
    if any(st.correlation is not None for st in strata):
        md += ["Kendall's τ-a over the included runs (τ) with its 95% percentile-bootstrap interval over models and "
               "its two-sided permutation p-value, granulated ψ per axis and Ψ (their mean) with Ψ's permutation "
               "p-value (the gap permuted within each axis's groups), and the conditional-mutual-information score "
               "(CMI) of Jiang et al. 2020 — definitions in `docs/correlation.md`. Larger is better in every value "
               "column; the best value of each is in bold; – = undefined. `correlation.csv` also has Dziugaite et "
               "al.'s sign-errors and the counts. The sentence under each table compares SRR with the best other "
               "measure by a paired bootstrap over models (SRR's own parts, `srr-*`, are not its rivals).", ""]

    md += ["## Figures", "",
           "![SRR measure vs generalisation gap](fig_srr_vs_gap.png)", "",
           "`fig_srr_vs_gap.png`: the SRR measure against the generalisation gap, one colour per model type, "
           "hollow markers = not converged, one panel per table (the paper's Figure 4).", ""]
    for st, f in grid_files:
        md += [f"![Every measure vs generalisation gap{(' — ' + st.label) if st.slug else ''}]({f.name})", "",
               f"`{f.name}`: every measure against the gap{(' for ' + st.label) if st.slug else ''}, each panel "
               "titled with its τ.", ""]
    md += ["![Accuracy and convergence per model type](fig_summary.png)", "",
           "`fig_summary.png`: mean train and test accuracy of the measured runs, and runs per status, per "
           "model type.", ""]

    md += ["## Accuracy and convergence per model type", ""]
    header = [colour_label, "runs"] + statuses + ["train acc", "test acc", "gap CE", "gap err", "epochs"]
    rows = []
    for level, r in summary.iterrows():
        rows.append([md_escape(_value(level)), str(int(r["runs"]))] + [str(int(r[s])) for s in statuses]
                    + [fmt(r["train_acc"], 1) + ("%" if np.isfinite(r["train_acc"]) else ""),
                       fmt(r["test_acc"], 1) + ("%" if np.isfinite(r["test_acc"]) else ""),
                       fmt(r["gap_ce"]), fmt(r["gap_err"]), fmt(r["epochs"], 1)])
    md += [md_table(header, rows), ""]
    md += ["Accuracies, gaps and epochs are means over the measured (`done` or `not-converged`) runs of each "
           "model type.", ""]

    md += ["## Files", "",
           "- `runs.parquet`, `runs.csv`: the whole table, one row per grid point",
           "- `correlation.csv`: the correlation tables (one row per stratum and measure)",
           "- " + ", ".join(f"`{f.name}`" for f in files if f.suffix == ".png") + ": the figures", ""]
    text = "\n".join(md)
    path = atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return StudyReport(path, strata, files + [path], corr_all)


def _protocol_lines(measured: pd.DataFrame) -> list[str]:
    """How the measures were taken: the SRR protocol and the evaluated network's training accuracy."""
    if "gen.protocol" not in measured.columns or measured["gen.protocol"].dropna().empty:
        return []
    protocols = list(dict.fromkeys(measured["gen.protocol"].dropna()))
    lines = [f"- SRR evaluation protocol: `{'`, `'.join(protocols)}` (docs/measures.md)"]
    if "gen.measure_network" in measured.columns:
        nets = list(dict.fromkeys(measured["gen.measure_network"].dropna()))
        if nets:
            lines.append(f"- the other data-dependent measures evaluate the {' / '.join(nets)} network")
    if "gen.protocol_train_acc" in measured.columns:
        acc = _percent(measured["gen.protocol_train_acc"]).dropna()
        if len(acc):
            lines.append(f"- training accuracy of the network SRR evaluates (its images): median {acc.median():.1f}%, "
                         f"range {acc.min():.1f}–{acc.max():.1f}% over {len(acc)} runs (per run: "
                         "`gen.protocol_train_acc` in `runs.csv`)")
    return lines + [""]


def _not_converged_lines(measured: pd.DataFrame, axis_cols: Sequence[str], by_cols: Sequence[str]) -> list[str]:
    nc = measured[measured["status"] == "not-converged"]
    if nc.empty:
        return []
    cols = list(dict.fromkeys([*by_cols, *axis_cols]))
    lines = ["Not-converged runs (measured, not ranked):", ""]
    for i in nc.index[:_MAX_LISTED]:
        hp = ", ".join(f"{_strip(c, HP_PREFIX)}={md_escape(_value(nc.at[i, c]))}" for c in cols)
        ce = nc.at[i, "gen.train_ce"] if "gen.train_ce" in nc.columns else math.nan
        ep = nc.at[i, "gen.epochs"] if "gen.epochs" in nc.columns else math.nan
        ident = f"`{nc.at[i, 'id']}` " if "id" in nc.columns else ""
        lines.append(f"- {ident}{hp}: train CE {fmt(ce, 4)} after {_value(ep)} epochs")
    if len(nc) > _MAX_LISTED:
        lines.append(f"- … and {len(nc) - _MAX_LISTED} more (`runs.csv`)")
    return lines + [""]
