"""The study report's figures: SRR against the gap (the paper's Figure 4), every measure against the
gap, and accuracy and run counts per model type."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from ..correlation import MEASURE_PREFIX
from .format import fmt, new_figure, p_clause, save_png, tau_interval
from .study_common import GAP_LABELS, SRR, message_figure, plural, strip, value_text

if TYPE_CHECKING:  # pragma: no cover
    from .study import Stratum

__all__ = ["fig_srr", "fig_grid", "fig_summary", "STATUS_COLOURS"]

STATUS_COLOURS = {"done": "#2e7d32", "not-converged": "#f9a825", "diverged": "#c62828", "failed": "#424242",
                  "pending": "#bdbdbd", "running": "#1e88e5"}


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
    handles = [Line2D([], [], linestyle="", marker="o", markersize=7, color=c, label=value_text(lv))
               for lv, c in palette.items()]
    if hollow:
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=7, markerfacecolor="none",
                              markeredgecolor="#555555", label="not converged"))
    return handles


def fig_srr(path: Path, strata: Sequence["Stratum"], gap: str, srr_col: str | None, colour_col: str | None,
             colour_label: str, palette: dict) -> Path:
    """The paper's Figure 4, one panel per stratum: SRR against the gap, hollow = not converged."""
    title = "SRR measure vs generalisation gap"
    if srr_col is None:
        return message_figure(path, title, "no measure.srr column in the table")
    panels = []
    for st in strata:
        data = st.runs[np.isfinite(pd.to_numeric(st.runs[srr_col], errors="coerce").astype(float))
                       & np.isfinite(pd.to_numeric(st.runs[gap], errors="coerce").astype(float))]
        if len(data) >= 2:
            panels.append((st, data))
    if not panels:
        return message_figure(path, title, "fewer than 2 measured runs with an SRR value: nothing to correlate")
    fig = new_figure(5.6 * len(panels) + 0.6, 4.8)
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    hollow = False
    for ax, (st, data) in zip(axes, panels):
        _scatter_groups(ax, data, gap, srr_col, colour_col, palette, size=46)
        hollow = hollow or bool((data["status"] == "not-converged").any())
        ax.set_xlabel(GAP_LABELS.get(gap, gap))
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


def fig_grid(path: Path, data: pd.DataFrame, gap: str, measure_cols: Sequence[str], taus: dict,
              colour_col: str | None, colour_label: str, palette: dict, title_suffix: str = "") -> Path:
    title = "Complexity measures vs generalisation gap" + (f" — {title_suffix}" if title_suffix else "")
    if not measure_cols:
        return message_figure(path, title, "no measure.* columns in the table")
    if len(data) < 2:
        return message_figure(path, title, f"{plural(len(data), 'measurable run')}: nothing to correlate")
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
        name = strip(col, MEASURE_PREFIX)
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
    fig.suptitle(f"{title} ({GAP_LABELS.get(gap, gap).split(': ')[-1]}); larger measure = more complex",
                 fontsize=11, y=1 - 0.12 / height)
    if palette and colour_col:
        fig.legend(handles=_legend_handles(palette, colour_label, (data["status"] == "not-converged").any()),
                   title=colour_label, loc="lower center", ncols=min(len(palette) + 1, 8), fontsize=9,
                   title_fontsize=9, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return save_png(fig, path)


def fig_summary(path: Path, summary: pd.DataFrame, colour_label: str, statuses: Sequence[str]) -> Path:
    if summary.empty:
        return message_figure(path, "Accuracy and convergence per model type", "the table has no runs")
    fig = new_figure(max(9.0, 1.6 * len(summary) + 5.0), 4.4)
    ax_acc, ax_count = fig.subplots(1, 2, width_ratios=[1.25, 1.0])
    x = np.arange(len(summary))
    labels = [value_text(v) for v in summary.index]
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
        ax_count.bar(x, counts, 0.6, bottom=bottom, color=STATUS_COLOURS.get(status, "#9e9e9e"), label=status)
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
    ax_count.legend(handles=[Patch(color=STATUS_COLOURS.get(s, "#9e9e9e"), label=s) for s in statuses][::-1],
                    fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax_count.grid(axis="y", alpha=0.3)
    fig.suptitle("Accuracy and convergence per model type", fontsize=11)
    return save_png(fig, path)
