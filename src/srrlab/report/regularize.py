"""The report of the regularisation experiment (docs/theory.md §7; the paper's Tables 2 and 6).

Input is the tidy table of a study whose grid crosses model variants (and optionally datasets)
with *arms* — plain cross-entropy (η = 0) and CE + SRR regularisation (η > 0, a layer choice) —
and seeds (:func:`srrlab.study.run_regularize`). Output:

- :func:`regularization_summary`: one row per (dataset, variant, other axes, arm) with the test
  accuracy's mean, standard deviation, minimum and maximum over seeds, and, for each regularised
  arm, the seed-paired difference to its CE baseline and a verdict;
- :func:`paper_table`: the layout of Tables 2/6 (a row per variant, a column per dataset × arm,
  cells ``mean ± std``);
- :func:`plot_regularization`: a bar plot (a panel per dataset, bars per arm from zero, error
  bars = std, one dot per seed);
- :func:`verdict_sentences`: one plain sentence per variant and regularised arm;
- :func:`regularization_tables`: the text of each CSV table the report writes (:data:`REPORT_TABLES`);
- :func:`write_regularization_report`: all of it into ``regularize.md`` + CSVs + PNG.

**Verdict** (:mod:`srrlab.report.paired`). With ``Δ_s`` the difference (regularised − CE) of the
runs with the same seed (same initialisation and data order), for test accuracy (points) and test
cross-entropy (nats): the mean ``Δ`` with its 95% t-interval, the paired t-test's p-value and the
smallest effect the design detects with 80% power given the measured spread of ``Δ_s``. The
verdict is *improves* / *hurts* when the interval lies on one side of 0 and *no effect detected*
otherwise (then no effect larger than the interval's farther end is left open); with a single
seed there is no verdict (*too few seeds*). ``p_holm`` adjusts each metric's p-values by Holm over
the table's rows (variants × arms), for a reader who asks whether any of them holds after multiplicity. :func:`pooled_summary` pools the variants: for each
seed that every variant has, the mean of the variants' differences.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..io import atomic_write
from ..runs import MEASURABLE_STATUSES
from .format import colour_palette, fence, md_escape, md_table, new_figure, save_png, short_error
from .paired import EFFECT_VERDICTS, PairedEffect, effect_sentence, holm, paired_effect, pooled_effect

__all__ = ["arm_label", "regularization_summary", "pooled_summary", "paper_table", "plot_regularization", "verdict_sentences",
           "regularization_tables", "write_regularization_report", "REPORT_TABLES", "VERDICTS", "DATASET_NAMES",
           "display_variant"]

#: The CSV tables of the report: the summary (:func:`regularization_summary`) and the runs with the
#: columns the report groups by.
REPORT_TABLES = ("regularize-summary.csv", "regularize-pooled.csv", "regularize-runs.csv")
#: Verdicts of a regularised arm against its CE baseline (:data:`srrlab.report.paired.EFFECT_VERDICTS`,
#: and ``no baseline`` when no CE run shares a seed with it).
VERDICTS = (*EFFECT_VERDICTS, "no baseline")
#: The metrics compared seed by seed: (column prefix in the summary, runs column, unit, higher is better).
_METRICS = (("", "acc", "points", True), ("ce_", "ce", "nats", False))
#: How datasets are written in tables and figures.
DATASET_NAMES = {"digits": "digits", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "synthetic": "synthetic"}
#: Statuses whose test accuracy enters the table (a run that ran out of epochs still has one).
_USABLE = MEASURABLE_STATUSES
#: Columns that define an arm (when the spec has no grouped ``arm`` axis) and never define a row.
_ARM_SETTINGS = ("srr_reg", "srr_layers", "srr_l1")
#: Columns of the summary other than the extra row axes.
_EFFECT_COLUMNS = ("delta_mean", "delta_sd", "delta_ci_low", "delta_ci_high", "p_value", "p_holm", "detectable",
                   "verdict")
_SUMMARY_COLUMNS = ("dataset", "variant", "arm", "eta", "baseline", "seeds", "failed", "test_acc_mean", "test_acc_std",
                    "test_acc_min", "test_acc_max", "test_ce_mean", "train_acc_mean", "srr_mean", "pairs", "wins",
                    *_EFFECT_COLUMNS, *(f"ce_{c}" for c in _EFFECT_COLUMNS))
#: Columns of the pooled table other than the extra row axes.
_POOLED_COLUMNS = ("dataset", "arm", "baseline", "variants", "seeds", "seeds_left_out",
                   *_EFFECT_COLUMNS, *(f"ce_{c}" for c in _EFFECT_COLUMNS))


def display_variant(variant: str) -> str:
    """``crate-t`` → ``CRATE-T`` (the paper's spelling)."""
    return str(variant).upper()


def _dataset_name(name: str) -> str:
    return DATASET_NAMES.get(str(name), str(name))


def arm_label(srr_reg: float, srr_layers: str = "last", srr_l1: float = 0.0) -> str:
    """``CE`` for η = 0, else ``CE+SRR (<layers>, η=<η>)`` (with ``, ℓ1=<w>`` when the surrogate is on)."""
    if not srr_reg:
        return "CE"
    extra = f", ℓ1={srr_l1:g}" if srr_l1 else ""
    return f"CE+SRR ({srr_layers}, η={srr_reg:g}{extra})"


def _arms(table: pd.DataFrame, arm_axis: str | None) -> pd.Series:
    if arm_axis is not None:
        return table[f"hp.{arm_axis}"].astype(str)
    get = lambda row, k, d: row.get(f"hp.{k}", d) if pd.notna(row.get(f"hp.{k}", d)) else d  # noqa: E731
    return table.apply(lambda r: arm_label(float(get(r, "srr_reg", 0.0)), str(get(r, "srr_layers", "last")),
                                           float(get(r, "srr_l1", 0.0))), axis=1)


def _row_axes(table: pd.DataFrame, axes: Sequence[str], arm_axis: str | None) -> list[str]:
    """Grid axes besides dataset, variant, the arm and the seed: they split the rows further."""
    skip = {"dataset", "variant", "model", "seed", *_ARM_SETTINGS} | ({arm_axis} if arm_axis else set())
    return [a for a in axes if a not in skip and f"hp.{a}" in table.columns]


def _runs_frame(table: pd.DataFrame, axes: Sequence[str], arm_axis: str | None) -> pd.DataFrame:
    """The study table with the columns the summary, the report and the plot group by: ``arm``,
    ``dataset``, ``variant``, ``seed``, ``eta``, the other row axes, ``acc``/``train`` (%) and ``ok``
    (a usable test accuracy)."""
    for col in ("status", "hp.variant", "gen.test_acc"):
        if col not in table.columns:
            raise ValueError(f"the table has no {col!r} column; expected a study table (StudyStore.table())")
    t = table.copy()
    t["arm"] = _arms(t, arm_axis)
    t["dataset"] = t["hp.dataset"] if "hp.dataset" in t.columns else ""
    t["variant"] = t["hp.variant"]
    t["seed"] = t["hp.seed"] if "hp.seed" in t.columns else 0
    t["eta"] = pd.to_numeric(t.get("hp.srr_reg", 0.0), errors="coerce").fillna(0.0)
    t["acc"] = pd.to_numeric(t["gen.test_acc"], errors="coerce") * 100.0
    t["train"] = pd.to_numeric(t.get("gen.train_acc", np.nan), errors="coerce") * 100.0
    t["ce"] = pd.to_numeric(t.get("gen.test_ce", np.nan), errors="coerce")
    t["ok"] = t["status"].isin(_USABLE) & t["acc"].notna()
    for a in _row_axes(t, axes, arm_axis):
        t[a] = t[f"hp.{a}"]
    return t


def _effect_row(effect: PairedEffect, prefix: str, higher_is_better: bool) -> dict[str, Any]:
    e = effect
    return {f"{prefix}delta_mean": e.mean, f"{prefix}delta_sd": e.sd, f"{prefix}delta_ci_low": e.ci_low,
            f"{prefix}delta_ci_high": e.ci_high, f"{prefix}p_value": e.p_value, f"{prefix}p_holm": np.nan,
            f"{prefix}detectable": e.detectable, f"{prefix}verdict": e.verdict(higher_is_better)}


def _with_holm(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill ``p_holm`` / ``ce_p_holm``: Holm's adjustment of each metric's p-values over the table's rows."""
    for prefix, *_ in _METRICS:
        if f"{prefix}p_value" in frame.columns and len(frame):
            frame[f"{prefix}p_holm"] = holm(pd.to_numeric(frame[f"{prefix}p_value"], errors="coerce").to_numpy())
    return frame


def _no_effect_row(verdict: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for prefix, *_ in _METRICS:
        row.update({f"{prefix}{c}": np.nan for c in _EFFECT_COLUMNS})
        row[f"{prefix}verdict"] = verdict
    return row


def _effect_from_row(row: pd.Series | dict, prefix: str = "") -> PairedEffect:
    """The :class:`PairedEffect` a summary row (or pooled row) holds under ``prefix``."""
    n = row.get("pairs", row.get("seeds"))
    return PairedEffect(int(n) if pd.notna(n) else 0, row[f"{prefix}delta_mean"], row[f"{prefix}delta_sd"],
                        row[f"{prefix}delta_ci_low"], row[f"{prefix}delta_ci_high"], row[f"{prefix}p_value"],
                        row[f"{prefix}detectable"])


def _baselines(t: pd.DataFrame, keys: list[str]) -> dict[tuple, str | None]:
    """The CE arm (the first arm with η = 0) of each row group."""
    out = {}
    for key, group in t.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        arms = list(dict.fromkeys(group.loc[group["eta"] == 0, "arm"]))
        out[key] = arms[0] if arms else None
    return out


def _paired_differences(group: pd.DataFrame, arm: str, baseline: str, column: str) -> pd.Series:
    """``column`` of ``arm`` minus the baseline's, seed by seed, over the seeds both finished."""
    ok = group[group["ok"]]
    reg = ok[ok["arm"] == arm].set_index("seed")[column]
    base = ok[ok["arm"] == baseline].set_index("seed")[column]
    return (reg - base).dropna()


def regularization_summary(table: pd.DataFrame, *, axes: Sequence[str] = (), arm_axis: str | None = None
                           ) -> pd.DataFrame:
    """One row per (dataset, variant, other axes, arm) of a regularisation study's tidy table.

    ``axes``: the study's grid axes (``StudySpec.axes``); ``arm_axis``: the grouped axis that
    names the arms, if any (else arms are labelled by :func:`arm_label` from ``hp.srr_reg``,
    ``hp.srr_layers``, ``hp.srr_l1``). Accuracies are percentages. Columns: ``dataset, variant,
    <other axes>, arm, eta, baseline, seeds, failed, test_acc_mean, test_acc_std, test_acc_min,
    test_acc_max, test_ce_mean, train_acc_mean, [srr_mean,] pairs, wins``, then for test accuracy
    the seed-paired effect against the baseline (``delta_mean, delta_sd, delta_ci_low,
    delta_ci_high, p_value, detectable, verdict``; :mod:`srrlab.report.paired`) and the same for
    test cross-entropy prefixed ``ce_`` (empty for CE arms); ``p_holm`` is ``p_value`` adjusted by
    Holm over every regularised row of the table (one family per metric). Rows keep the grid's
    order of variants and arms.
    """
    return _summary(_runs_frame(table, axes, arm_axis), _row_axes(table, axes, arm_axis))


def _summary(t: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """:func:`regularization_summary` of the prepared runs frame ``t`` (:func:`_runs_frame`)."""
    has_srr = "measure.srr" in t.columns
    keys = ["dataset", "variant", *extra]
    baselines = _baselines(t, keys)
    rows: list[dict[str, Any]] = []
    for key, group in t.groupby(keys, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        baseline = baselines[key]
        for arm, g in group.groupby("arm", sort=False):
            ok = g[g["ok"]]
            acc = ok["acc"]
            row: dict[str, Any] = dict(zip(keys, key))
            row.update(arm=arm, eta=float(g["eta"].iloc[0]), baseline=None, seeds=int(len(ok)),
                       failed=int(len(g) - len(ok)), test_acc_mean=acc.mean(), test_acc_std=acc.std(ddof=1),
                       test_acc_min=acc.min(), test_acc_max=acc.max(), test_ce_mean=ok["ce"].mean(),
                       train_acc_mean=ok["train"].mean())
            if has_srr:
                row["srr_mean"] = pd.to_numeric(ok["measure.srr"], errors="coerce").mean()
            row.update(pairs=np.nan, wins=None, **_no_effect_row(None))
            if row["eta"] > 0:
                row["baseline"] = baseline
                delta = (_paired_differences(group, arm, baseline, "acc") if baseline is not None
                         else pd.Series(dtype=float))
                if delta.empty:
                    row.update(_no_effect_row("no baseline"))
                else:
                    row.update(pairs=int(len(delta)), wins=f"{int((delta > 0).sum())}/{len(delta)}")
                    for prefix, column, _unit, higher in _METRICS:
                        d = delta if column == "acc" else _paired_differences(group, arm, baseline, column)
                        row.update(_effect_row(paired_effect(d.to_numpy()), prefix, higher))
            rows.append(row)
    return _with_holm(pd.DataFrame(rows))


def pooled_summary(table: pd.DataFrame, *, axes: Sequence[str] = (), arm_axis: str | None = None) -> pd.DataFrame:
    """The regulariser's effect pooled over the model variants: one row per (dataset, other axes,
    regularised arm) of two or more variants, with ``variants``, ``seeds`` (those every variant finished in both arms),
    ``seeds_left_out`` and the effect columns of :func:`regularization_summary`
    (:func:`srrlab.report.paired.pooled_effect`: per seed, the mean of the variants' differences)."""
    return _pooled(_runs_frame(table, axes, arm_axis), _row_axes(table, axes, arm_axis))


def _pooled(t: pd.DataFrame, extra: list[str]) -> pd.DataFrame:
    """:func:`pooled_summary` of the prepared runs frame ``t`` (:func:`_runs_frame`)."""
    baselines = _baselines(t, ["dataset", "variant", *extra])
    rows: list[dict[str, Any]] = []
    for key, group in t.groupby(["dataset", *extra], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        for arm, g in group[group["eta"] > 0].groupby("arm", sort=False):
            variants = list(dict.fromkeys(g["variant"]))
            if len(variants) < 2:  # one variant: its own row is the whole story
                continue
            per = {v: baselines.get((key[0], v, *key[1:])) for v in variants}
            base = next((b for b in per.values() if b is not None), None)
            row: dict[str, Any] = dict(zip(["dataset", *extra], key))
            row.update(arm=arm, baseline=base, variants=len(variants))
            if any(b is None for b in per.values()):
                row.update(seeds=0, seeds_left_out=np.nan, **_no_effect_row("no baseline"))
                rows.append(row)
                continue
            for prefix, column, _unit, higher in _METRICS:
                wide = pd.DataFrame({v: _paired_differences(group[group["variant"] == v], arm, per[v], column)
                                     for v in variants})
                effect, left_out = pooled_effect(wide)
                row.update(seeds=effect.n, seeds_left_out=left_out, **_effect_row(effect, prefix, higher))
            rows.append(row)
    columns = ["dataset", *extra, *_POOLED_COLUMNS[1:]]
    return _with_holm(pd.DataFrame(rows, columns=columns))


def _cell(mean: float, std: float) -> str:
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if np.isfinite(std) else f"{mean:.2f}"


def paper_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Tables 2/6 layout: index = model (and other axes), columns = (dataset, arm), cells ``mean ± std`` (%)."""
    s = summary.copy()
    s["model"] = s["variant"].map(display_variant)
    extra = [c for c in s.columns if c not in _SUMMARY_COLUMNS and c not in ("model",)]
    s["dataset"] = s["dataset"].map(_dataset_name)
    s["cell"] = [_cell(m, d) for m, d in zip(s["test_acc_mean"], s["test_acc_std"])]
    wide = s.pivot_table(index=["model", *extra], columns=["dataset", "arm"], values="cell", aggfunc="first",
                         sort=False)
    return wide


def _markdown_paper_table(summary: pd.DataFrame) -> str:
    """The Tables 2/6 layout in markdown; the best mean of each row and dataset in bold."""
    s = summary.copy()
    extra = [c for c in s.columns if c not in _SUMMARY_COLUMNS]
    datasets = list(dict.fromkeys(s["dataset"]))
    arms = {d: list(dict.fromkeys(s.loc[s["dataset"] == d, "arm"])) for d in datasets}
    header = ["Model", *extra] + [f"{_dataset_name(d)}: {a}" if d else a for d in datasets for a in arms[d]]
    rows = []
    for key, g in s.groupby(["variant", *extra], sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        cells = [display_variant(key[0]), *map(str, key[1:])]
        for d in datasets:
            gd = g[g["dataset"] == d].set_index("arm")
            best = gd["test_acc_mean"].max() if not gd.empty else np.nan
            for a in arms[d]:
                if a not in gd.index:
                    cells.append("–")
                    continue
                r = gd.loc[a]
                text = _cell(r["test_acc_mean"], r["test_acc_std"])
                cells.append(f"**{text}**" if np.isfinite(best) and r["test_acc_mean"] == best and len(gd) > 1 else text)
        rows.append(cells)
    return md_table(header, rows, ["---"] * (1 + len(extra)) + ["---:"] * (len(header) - 1 - len(extra)))


def _effect_words(row: pd.Series | dict) -> str:
    """``test accuracy: improves by … points; test cross-entropy: no effect larger than … nats``."""
    acc = effect_sentence(_effect_from_row(row), "points")
    ce = effect_sentence(_effect_from_row(row, "ce_"), "nats", digits=3, higher_is_better=False)
    return f"test accuracy: {acc}; test cross-entropy: {ce}"


def verdict_sentences(summary: pd.DataFrame, pooled: pd.DataFrame | None = None) -> list[str]:
    """One sentence per (dataset, variant, other axes) and regularised arm, then one per pooled row."""
    extra = [c for c in summary.columns if c not in _SUMMARY_COLUMNS]
    out = []
    reg = summary[summary["eta"] > 0]
    for _, r in reg.iterrows():
        where = display_variant(r["variant"])
        if r["dataset"]:
            where += f" on {_dataset_name(r['dataset'])}"
        if extra:
            where += " (" + ", ".join(f"{c}={r[c]}" for c in extra) + ")"
        base = summary[(summary["dataset"] == r["dataset"]) & (summary["variant"] == r["variant"])
                       & (summary["arm"] == r["baseline"])
                       & np.logical_and.reduce([summary[c] == r[c] for c in extra] or [True])]
        if r["verdict"] == "no baseline" or base.empty:
            out.append(f"{where}: {r['arm']} reached {_cell(r['test_acc_mean'], r['test_acc_std'])}% test accuracy; "
                       "there is no finished CE run with the same seed to compare with.")
            continue
        b = base.iloc[0]
        pairs = int(r["pairs"])
        out.append(f"{where}: {r['arm']} {_cell(r['test_acc_mean'], r['test_acc_std'])}% vs "
                   f"{r['baseline']} {_cell(b['test_acc_mean'], b['test_acc_std'])}% over {pairs} paired "
                   f"seed{'s' if pairs != 1 else ''} (better on {r['wins']}): {_effect_words(r)}.")
    if pooled is not None:
        for _, r in pooled.iterrows():
            where = "All variants" + (f" on {_dataset_name(r['dataset'])}" if r["dataset"] else "")
            if extra:
                where += " (" + ", ".join(f"{c}={r[c]}" for c in extra if c in r) + ")"
            if r["verdict"] == "no baseline":
                out.append(f"{where}, pooled: {r['arm']} cannot be pooled, some variant has no CE arm.")
                continue
            if not r["seeds"]:
                out.append(f"{where}, pooled: {r['arm']} has no seed that every variant finished in both arms.")
                continue
            out.append(f"{where}, pooled ({int(r['variants'])} variants, {int(r['seeds'])} seeds): {r['arm']} vs "
                       f"{r['baseline']}: {_effect_words(r)}.")
    return out


def plot_regularization(summary: pd.DataFrame, runs: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Bar plot: a panel per dataset, variants on the x axis, a bar per arm (mean test accuracy,
    error bar = std over seeds), one dot per seed; the y axis starts at 0 (at most 100 %), so bar
    heights compare as the accuracies do. ``runs`` has ``dataset, variant, arm, acc`` per run."""
    path = Path(path)
    datasets = list(dict.fromkeys(summary["dataset"]))
    extra = [c for c in summary.columns if c not in _SUMMARY_COLUMNS]
    fig = new_figure(max(4.5, 1.2 + 1.6 * summary["variant"].nunique()) * len(datasets) ** 0.5 + 1.0, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(datasets), squeeze=False)[0])
    for ax, d in zip(axes, datasets):
        s = summary[summary["dataset"] == d]
        groups = list(dict.fromkeys(zip(*(s[c] for c in ["variant", *extra]))))
        arms = list(dict.fromkeys(s["arm"]))
        colours = colour_palette(arms)
        width = 0.8 / len(arms)
        for j, arm in enumerate(arms):
            xs, means, stds = [], [], []
            for i, gkey in enumerate(groups):
                m = s[(s["arm"] == arm) & np.logical_and.reduce(
                    [s[c] == v for c, v in zip(["variant", *extra], gkey)])]
                if m.empty:
                    continue
                xs.append(i - 0.4 + width * (j + 0.5))
                means.append(m["test_acc_mean"].iloc[0])
                stds.append(m["test_acc_std"].iloc[0] if np.isfinite(m["test_acc_std"].iloc[0]) else 0.0)
                pts = runs[(runs["dataset"] == d) & (runs["arm"] == arm) & np.logical_and.reduce(
                    [runs[c] == v for c, v in zip(["variant", *extra], gkey)])]["acc"]
                ax.plot(np.full(len(pts), xs[-1]), pts, "o", ms=3, color="black", alpha=0.6, zorder=3)
            ax.bar(xs, means, width=width * 0.95, yerr=stds, capsize=3, color=colours[arm], label=arm,
                   edgecolor="white", zorder=2)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels([" ".join([display_variant(g[0]), *map(str, g[1:])]) for g in groups], rotation=0)
        # bars start at zero: a bar's height is the accuracy, so a zoomed axis would exaggerate differences
        ax.set_ylim(0.0, min(100.0, ax.get_ylim()[1]))
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(_dataset_name(d) if d else "test accuracy")
        ax.grid(axis="y", alpha=0.3, zorder=0)
    handles = {}
    for ax in axes:  # one legend for all panels, below them
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(4, len(handles)),
               fontsize=8, frameon=False)
    fig.suptitle("SRR regularisation: test accuracy, mean ± std over seeds (dots: seeds)", fontsize=10)
    return save_png(fig, path)


def _table_texts(summary: pd.DataFrame, pooled: pd.DataFrame, runs: pd.DataFrame) -> dict[str, str]:
    """The text of each of :data:`REPORT_TABLES` (``DataFrame.to_csv(index=False)``)."""
    return dict(zip(REPORT_TABLES, (summary.to_csv(index=False), pooled.to_csv(index=False), runs.to_csv(index=False))))


def regularization_tables(table: pd.DataFrame, *, axes: Sequence[str] = (), arm_axis: str | None = None
                          ) -> dict[str, str]:
    """``{file name: text}`` of each CSV table :func:`write_regularization_report` writes for ``table``
    (same arguments), byte for byte: what a committed table must equal."""
    t, extra = _runs_frame(table, axes, arm_axis), _row_axes(table, axes, arm_axis)
    return _table_texts(_summary(t, extra), _pooled(t, extra), t)


def write_regularization_report(table: pd.DataFrame, out_dir: str | os.PathLike, *, axes: Sequence[str] = (),
                                arm_axis: str | None = None, title: str = "srrlab: SRR regularisation",
                                spec_text: str | None = None) -> dict[str, Any]:
    """Write ``regularize.md``, ``regularize-summary.csv``, ``regularize-runs.csv`` and
    ``regularize-pooled.csv`` and ``regularize.png`` into ``out_dir``; returns ``{"path", "summary",
    "pooled", "sentences", "table"}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, extra = _runs_frame(table, axes, arm_axis), _row_axes(table, axes, arm_axis)
    summary, pooled = _summary(runs, extra), _pooled(runs, extra)
    usable = runs[runs["ok"]]
    for name, text in _table_texts(summary, pooled, runs).items():
        atomic_write(out / name, lambda tmp, text=text: Path(tmp).write_bytes(text.encode("utf-8")))
    figure = None
    if not summary.empty and summary["seeds"].sum() > 0:
        figure = plot_regularization(summary[summary["seeds"] > 0], usable, out / "regularize.png")
    sentences = verdict_sentences(summary, pooled) if not summary.empty else []
    counts = runs["status"].value_counts().to_dict()
    lines = [f"# {md_escape(title)}", "",
             f"{len(runs)} runs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".", "",
             "Test accuracy (%), mean ± standard deviation over seeds (the layout of the paper's Tables 2 and 6; "
             "the best mean per model and dataset in bold).", "", _markdown_paper_table(summary) if not summary.empty
             else "(no finished runs yet)", ""]
    if figure is not None:
        lines += ["![test accuracy per variant and arm](regularize.png)", ""]
    lines += ["## Did the regulariser help?", "",
              "Per variant, then pooled over the variants: the seed-paired difference Δ (regularised − CE; the "
              "same seed is the same initialisation and data order) with its 95% t-interval and paired t-test, "
              "for test accuracy (points) and test cross-entropy (nats). *Improves* / *hurts* when the interval "
              "excludes 0; otherwise the interval's farther end is the largest effect left open, and the design's "
              "80%-power detectable effect (from the measured spread of Δ) says how small an effect it could have "
              "found. Pooled: for each seed every variant finished, the mean of the variants' differences. "
              "`p_holm` in the tables adjusts each metric's p-values by Holm over the table's rows "
              "(many variants and arms make some p < 0.05 likely by chance).", ""]
    lines += [f"- {md_escape(x)}" for x in sentences] or ["(no regularised arm has finished runs)"]
    lines += [""]
    shown = summary.copy()
    num = shown.select_dtypes("number").columns
    shown[num] = shown[num].round(3)
    lines += ["## Summary table", "", "`regularize-summary.csv`:", "", fence(shown.to_string(index=False)), ""]
    if not pooled.empty:
        shown = pooled.copy()
        num = shown.select_dtypes("number").columns
        shown[num] = shown[num].round(3)
        lines += ["`regularize-pooled.csv`:", "", fence(shown.to_string(index=False)), ""]
    bad = runs[~runs["ok"]]
    if not bad.empty:
        lines += ["## Runs without a test accuracy", ""]
        for _, r in bad.head(30).iterrows():
            lines.append(f"- `{r['id']}` ({r['variant']}, {r['arm']}, seed {r.get('hp.seed', '?')}): {r['status']}"
                         + (f" — {md_escape(short_error(r.get('error')))}" if r["status"] == "failed" else ""))
        lines.append("")
    if spec_text:
        lines += ["## Spec", "", fence(spec_text), ""]
    path = atomic_write(out / "regularize.md", lambda tmp: Path(tmp).write_text("\n".join(lines), encoding="utf-8"))
    return {"path": Path(path), "summary": summary, "pooled": pooled, "sentences": sentences, "table": paper_table(summary)
            if not summary.empty else pd.DataFrame()}
