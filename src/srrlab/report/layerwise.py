"""Layer-wise SRR across training: the paper's Figures 2–3 (docs/theory.md §5)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import matplotlib
from matplotlib import cm, colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..runs import RunFolder

__all__ = ["QUANTITIES", "plot_layerwise", "run_label", "split_protocols"]

#: Quantities of the per-layer table and their axis labels.
QUANTITIES = {
    "mu": r"$\mu^\ell = \lambda\|Z^\ell\|_0 + R^c(Z^\ell;U^\ell) - R(Z^\ell)$",
    "R": r"$R(Z^\ell)$",
    "Rc": r"$R^c(Z^\ell; U^\ell)$",
    "l0": r"$\|Z^\ell\|_0$",
}


def run_label(run_dir: str | os.PathLike) -> str:
    """``<model> · seed <s>`` from a run folder's config, else the folder name (:meth:`RunFolder.label`)."""
    return RunFolder(run_dir).label()


#: What each LayerNorm protocol removes, for the column titles.
_REMOVED = {"pre": "pre-operator LayerNorms removed", "all": "every LayerNorm removed",
            "none": "LayerNorms kept"}


def split_protocols(runs: Sequence[tuple[str, pd.DataFrame]],
                    layernorm: Sequence[str] | None = None) -> list[tuple[str, pd.DataFrame]]:
    """One ``(label, table)`` per run and recorded LayerNorm protocol (the ``layernorm`` column of
    :func:`srrlab.train.read_layerwise`), labelled with what the protocol removes; ``layernorm``
    keeps only the named protocols. A run that recorded none of them raises ValueError."""
    out = []
    for label, table in runs:
        recorded = list(dict.fromkeys(table["layernorm"])) if "layernorm" in table else ["all"]
        chosen = [ln for ln in recorded if layernorm is None or ln in layernorm]
        if not chosen:
            raise ValueError(f"{label}: no layer-wise records with layernorm in {list(layernorm or [])}; "
                             f"it recorded {', '.join(recorded)} (train with --srr-layernorm to choose)")
        for ln in chosen:
            part = table[table["layernorm"] == ln] if "layernorm" in table else table
            out.append((f"{label}\n{_REMOVED.get(ln, ln)}", part))
    return out


def plot_layerwise(runs: Sequence[tuple[str, pd.DataFrame]], out: str | os.PathLike,
                   quantities: Sequence[str] = ("mu", "R", "Rc", "l0"), cmap: str = "viridis",
                   layernorm: Sequence[str] | None = None) -> Path:
    """Draw one column per run and evaluation protocol and one row per quantity: the quantity
    against layer ℓ, one line per recorded epoch on a colour ramp (dark = initialisation, bright =
    last epoch).

    ``runs`` is a list of ``(label, table)`` with the columns of
    :func:`srrlab.train.read_layerwise`; each recorded LayerNorm protocol gets its own column,
    labelled (``layernorm`` keeps only the named ones), so the protocols are drawn side by side. The
    first row with ``("mu",)`` alone is the paper's Figures 2–3. Writes a PNG to ``out`` and returns
    its path.
    """
    unknown = [q for q in quantities if q not in QUANTITIES]
    if unknown:
        raise ValueError(f"unknown quantities {unknown}; choose from {', '.join(QUANTITIES)}")
    if not runs:
        raise ValueError("no runs to plot")
    runs = split_protocols(runs, layernorm)
    n_rows, n_cols = len(quantities), len(runs)
    fig = Figure(figsize=(4.2 * n_cols + 0.8, 3.0 * n_rows), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
    ramp = matplotlib.colormaps[cmap]
    max_epoch = max(int(t["epoch"].max()) for _, t in runs)
    norm = colors.Normalize(vmin=0, vmax=max(max_epoch, 1))
    for j, (label, table) in enumerate(runs):
        for i, q in enumerate(quantities):
            ax = axes[i, j]
            for epoch, group in table.groupby("epoch", sort=True):
                group = group.sort_values("layer")
                ax.plot(group["layer"], group[q], color=ramp(norm(epoch)), marker="o", markersize=2.5,
                        linewidth=1.2, label=f"epoch {epoch}")
            ax.set_xlabel("layer ℓ")
            ax.set_ylabel(QUANTITIES[q])
            ax.grid(alpha=0.3)
            layers = sorted(table["layer"].unique())
            ax.set_xticks(layers if len(layers) <= 12 else layers[::2])
            if i == 0:
                eps = table["eps"].iloc[0] if "eps" in table else float("nan")
                lam = table["lam"].iloc[0] if "lam" in table else float("nan")
                ax.set_title(f"{label}\nε = {eps:.3g}, λ = {lam:g}", fontsize=9)
    sm = cm.ScalarMappable(norm=norm, cmap=ramp)
    fig.colorbar(sm, ax=axes.ravel().tolist(), label="epoch", shrink=0.9)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=130)
    os.replace(tmp, out)
    return out
