"""Formatting shared by the reports: numbers, p-values and intervals in text, Markdown tables and
fences, figures (a fresh Agg figure, a palette, an atomic PNG write)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..io import atomic_write

__all__ = ["DPI", "fmt", "p_value", "p_clause", "tau_interval", "md_escape", "md_table", "fence", "short_error",
           "new_figure", "colour_palette", "save_png"]

#: Resolution of every report figure.
DPI = 110


def fmt(value: float, digits: int = 3) -> str:
    """Fixed decimals; NaN as an en dash; no negative zero."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{round(float(value), digits) + 0.0:.{digits}f}"


def md_escape(text: str) -> str:
    for ch in "\\`*_[]<>|":
        text = text.replace(ch, "\\" + ch)
    return text


def short_error(error: object, limit: int = 200) -> str:
    """One line of an error: a traceback's last line (the exception), else the first line."""
    if error is None or (isinstance(error, float) and math.isnan(error)):
        return "(no error message)"
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return "(no error message)"
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def save_png(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), constrained_layout=True)
    FigureCanvasAgg(fig)
    return fig


def tau_interval(row: pd.Series, digits: int = 2) -> str:
    lo, hi = row.get("tau_lo", math.nan), row.get("tau_hi", math.nan)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    return f"[{fmt(lo, digits)}, {fmt(hi, digits)}]"


def p_value(value: float) -> str:
    """A p-value: 3 significant decimals, ``< 0.001`` below."""
    if value is None or not np.isfinite(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def p_clause(value: float) -> str:
    """``p = 0.042`` or ``p < 0.001``: a p-value inside a sentence."""
    text = p_value(value)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def fence(text: str) -> str:
    """A fenced block around ``text`` with a fence longer than any backtick run inside it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text.rstrip()}\n{fence}"


def colour_palette(levels: Sequence) -> dict:
    cmap = matplotlib.colormaps["tab10" if len(levels) <= 10 else "tab20"]
    return {lv: cmap(i % cmap.N) for i, lv in enumerate(levels)}
