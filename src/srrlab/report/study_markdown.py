"""The sections of a study's ``report.md`` (the writer is :func:`srrlab.report.write_study_report`;
what each section holds: docs/study.md)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..correlation import GEN_PREFIX, HP_PREFIX
from ..runs import MEASURABLE_STATUSES
from .format import fmt, md_escape, md_table, p_value, short_error, tau_interval
from .study_common import (
    MAX_LISTED,
    SRR,
    percent,
    plural,
    sorted_levels,
    strip,
    value_text,
)
from .study_readings import NETWORK_COLUMN, Reading
from .study_tables import ReadingTable, Stratum, StudyTables
from .study_verdicts import markdown_correlation_table
from .study_within import within_lines

__all__ = ["settings_lines", "protocol_lines", "runs_lines", "correlation_lines", "summary_table", "summary_lines"]

_EXPLANATION = (
    "Kendall's τ-a over the included runs (τ) with its 95% percentile-bootstrap interval over models and its "
    "two-sided permutation p-value, granulated ψ per axis and Ψ (their mean) with Ψ's permutation p-value (the measure "
    "permuted jointly over all models), and the conditional-mutual-information score (CMI) of Jiang et al. 2020 — "
    "definitions in `docs/correlation.md`. Larger is better in every value column; the best value of each is in "
    "bold; – = undefined. `correlation.csv` also has Dziugaite et al.'s sign-errors and the counts. The sentence "
    "under each table compares SRR with the best other measure by a paired bootstrap over models (SRR's own parts, "
    "`srr-*`, are not its rivals). The within-level check reads the pooled τ against τ inside each level of each "
    "axis (`within.csv`): *reversed within* an axis when every level's τ has the opposite sign, *carried by* it when "
    "no level's interval excludes 0 and the τ of the within-level pairs is below half the pooled τ (levels of at "
    "least 3 models; only a pooled τ whose interval excludes 0 is flagged).")


def settings_lines(table: pd.DataFrame, axis_cols: Sequence[str]) -> list[str]:
    hp_cols = [c for c in map(str, table.columns) if c.startswith(HP_PREFIX)]
    lines = []
    for c in axis_cols:
        lines.append(f"- grid axis `{strip(c, HP_PREFIX)}`: "
                     + ", ".join(md_escape(value_text(v)) for v in sorted_levels(table[c])))
    for c in hp_cols:
        if c in axis_cols:
            continue
        levels = sorted_levels(table[c].map(lambda v: v if not isinstance(v, (list, dict)) else repr(v)))
        shown = ", ".join(md_escape(value_text(v)) for v in levels[:8]) + (", …" if len(levels) > 8 else "")
        kind = "fixed" if len(levels) == 1 else "also varies (not an axis)"
        lines.append(f"- {kind} `{strip(c, HP_PREFIX)}`: {shown}")
    return lines


def protocol_lines(measured: pd.DataFrame, readings: Sequence[Reading]) -> list[str]:
    """How the measures were taken: the SRR protocol, the networks the other measures evaluated, and
    the training accuracy of the network SRR evaluates (the lines the table has columns for)."""
    lines = []
    protocols = list(dict.fromkeys(measured.get("gen.protocol", pd.Series(dtype=object)).dropna()))
    if protocols:
        lines.append(f"- SRR evaluation protocol: `{'`, `'.join(protocols)}` (docs/measures.md)")
    if len(readings) > 1 or (protocols and measured.get(NETWORK_COLUMN, pd.Series(dtype=object)).notna().any()):
        lines.append(f"- the other data-dependent measures evaluate the {readings[0].network} network"
                     + "".join(f"; and, as a second reading, the {r.network} network (`measure.<name>@{r.network}` "
                               "columns)" for r in readings[1:]))
    acc = percent(measured["gen.protocol_train_acc"]).dropna() if protocols and "gen.protocol_train_acc" in measured \
        else pd.Series(dtype=float)
    if len(acc):
        lines.append(f"- training accuracy of the network SRR evaluates (its images): median {acc.median():.1f}%, "
                     f"range {acc.min():.1f}–{acc.max():.1f}% over {len(acc)} runs (per run: "
                     "`gen.protocol_train_acc` in `runs.csv`)")
    return lines + [""] if lines else []


def runs_lines(table: pd.DataFrame, tables: StudyTables, statuses: Sequence[str],
               include_not_converged: bool) -> list[str]:
    """The Runs section: counts per status, which runs are ranked, the not-converged and failed ones."""
    status = table["status"].astype(str)
    counts = {s: int((status == s).sum()) for s in statuses}
    md = [md_table(["status", "runs"], [[s, str(counts[s])] for s in statuses] + [["**all**", f"**{len(table)}**"]]),
          ""]
    measured = tables.measured
    n_in = int(measured["status"].isin(tables.included_statuses).sum())
    if include_not_converged:
        md += [f"The correlation tables use the {plural(n_in, 'run')} with status `done` ({counts['done']}) or "
               f"`not-converged` ({counts['not-converged']}) (`include_not_converged = true`); hollow markers in "
               "the figures are not-converged runs. Diverged, failed, pending and running runs are left out.", ""]
    else:
        md += [f"The correlation tables use the {plural(n_in, 'run')} that reached the stopping target (status "
               f"`done`), as the paper correlates the models it \"successfully trained\" to its target loss. The "
               f"{plural(counts['not-converged'], 'run')} that stopped at the epoch limit first (`not-converged`) "
               "were measured and are drawn hollow in the figures, but are not ranked (`include_not_converged = "
               "true` under `[report]`, or `srrlab study report --include-not-converged`, brings them in). "
               "Diverged, failed, pending and running runs are left out.", ""]
        md += _not_converged_lines(measured, tables.axis_cols, tables.by_cols)
    bad = table[status.isin(["failed", "diverged"])]
    if len(bad):
        md += ["Failed and diverged runs:", ""]
        ids = bad["id"] if "id" in bad.columns else pd.Series(bad.index.astype(str), index=bad.index)
        for i in bad.index[:MAX_LISTED]:
            err = bad.at[i, "error"] if "error" in bad.columns else None
            md.append(f"- `{ids[i]}` ({status[i]}): {md_escape(short_error(err))}")
        if len(bad) > MAX_LISTED:
            md.append(f"- … and {len(bad) - MAX_LISTED} more (the `error` column of `runs.csv`)")
        md.append("")
    return md


def _not_converged_lines(measured: pd.DataFrame, axis_cols: Sequence[str], by_cols: Sequence[str]) -> list[str]:
    nc = measured[measured["status"] == "not-converged"]
    if nc.empty:
        return []
    cols = list(dict.fromkeys([*by_cols, *axis_cols]))
    lines = ["Not-converged runs (measured, not ranked):", ""]
    for i in nc.index[:MAX_LISTED]:
        hp = ", ".join(f"{strip(c, HP_PREFIX)}={md_escape(value_text(nc.at[i, c]))}" for c in cols)
        ce = nc.at[i, "gen.train_ce"] if "gen.train_ce" in nc.columns else math.nan
        ep = nc.at[i, "gen.epochs"] if "gen.epochs" in nc.columns else math.nan
        ident = f"`{nc.at[i, 'id']}` " if "id" in nc.columns else ""
        lines.append(f"- {ident}{hp}: train CE {fmt(ce, 4)} after {value_text(ep)} epochs")
    if len(nc) > MAX_LISTED:
        lines.append(f"- … and {len(nc) - MAX_LISTED} more (`runs.csv`)")
    return lines + [""]


def correlation_lines(tables: StudyTables) -> list[str]:
    """The correlation section: per stratum (the pooled one last), the readings side by side when
    there are several, then each reading's Table 1, SRR sentence, dropped runs and within-level check."""
    md = ["## Correlation with the generalisation gap", ""]
    if not any(r.measures for r in tables.readings):
        return md + ["The table has no `measure.*` columns: there is nothing to correlate.", ""]
    several = len(tables.readings) > 1
    for st in tables.strata:
        md += [f"### {st.title}" + (" — pooled (for reference only)" if st.pooled else ""), ""]
        if st.pooled:
            md += [f"Every stratum together. The paper never pools widths: {md_escape(', '.join(map(str, st.key)) or 'the strata')} "
                   "order many pairs by themselves (the count ‖Z‖₀ and most norms grow with the width), so this "
                   "table answers a different question than the per-stratum tables above.", ""]
        if st.correlation is None:
            md += [f"{plural(len(st.included), 'run')} entered this table; at least 2 are needed for a rank "
                   "correlation, so no table was computed.", ""]
            continue
        if several:
            md += ["The readings side by side:", "", side_by_side(st), ""]
        for rt in st.tables:
            md += ([f"#### {rt.reading.heading}", ""] if several else []) + _reading_lines(rt)
    if any(st.correlation is not None for st in tables.strata):
        md += [_EXPLANATION, ""]
    return md


def _reading_lines(rt: ReadingTable) -> list[str]:
    md = [markdown_correlation_table(rt.correlation), ""]
    if rt.verdict is not None:
        md += [rt.verdict.sentence, ""]
    dropped = rt.correlation[rt.correlation["n_dropped"] > 0]
    if len(dropped):
        md += ["Runs dropped for a NaN value: " + "; ".join(
            f"`{m}` {int(r['n_dropped'])} of {int(r['n_dropped']) + int(r['n_models'])}"
            for m, r in dropped.iterrows()) + ".", ""]
    return md + within_lines(rt.flags) + replicate_lines(rt)


def replicate_lines(rt: ReadingTable) -> list[str]:
    """The seed-by-seed table of a replicated population (``replicates.csv``) and what it says:
    whether each seed's verdict is the whole population's, and how much the intervals narrowed."""
    r = rt.replicates
    if r is None or r.empty:
        return []
    rival = r["rival"].iloc[0]
    head = ("| models | n | SRR τ | 95% interval | width | p(τ) |"
            + (f" `{rival}` τ | 95% interval | width | SRR − `{rival}` | paired interval | verdict |" if rival else ""))
    lines = ["Seed by seed (`replicates.csv`): each seed's models alone, then all of them"
             + (f"; the rival is the whole population's best other measure, `{md_escape(str(rival))}`" if rival else "")
             + ".", "", head, "|---|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|---:|---|" if rival else "")]
    for _, x in r.iterrows():
        cells = [str(x["slice"]), str(int(x["n"])), fmt(x["srr_tau"]), _interval(x["srr_lo"], x["srr_hi"]),
                 fmt(x["srr_width"]), p_value(x["srr_p"])]
        if rival:
            cells += [fmt(x["rival_tau"]), _interval(x["rival_lo"], x["rival_hi"]), fmt(x["rival_width"]),
                      f"{x['diff']:+.3f}" if np.isfinite(x["diff"]) else "–", _interval(x["diff_lo"], x["diff_hi"], True),
                      str(x["verdict"])]
        lines.append("| " + " | ".join(cells) + " |")
    seeds, whole = r.iloc[:-1], r.iloc[-1]
    width = float(seeds["srr_width"].mean())
    text = (f"SRR's interval is {fmt(whole['srr_width'])} wide on all {int(whole['n'])} models against "
            f"{fmt(width)} on average on one seed's ({_count(seeds['n'].mean())} models)")
    if rival:
        same = int((seeds["verdict"] == whole["verdict"]).sum())
        text += (f"; the paired interval of SRR − `{md_escape(str(rival))}` is {fmt(whole['diff_hi'] - whole['diff_lo'])} "
                 f"wide against {fmt(float((seeds['diff_hi'] - seeds['diff_lo']).mean()))}. The whole population's "
                 f"verdict, *{whole['verdict']}*, is the verdict of {same} of the {len(seeds)} seeds alone "
                 f"(seed {str(seeds['slice'].iloc[0]).removeprefix('seed ')}: *{seeds['verdict'].iloc[0]}*)")
    return lines + ["", text + ".", ""]


def _count(mean: float) -> str:
    return str(int(mean)) if float(mean).is_integer() else fmt(float(mean), 1)


def _interval(lo: float, hi: float, signed: bool = False) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    return f"[{lo:+.3f}, {hi:+.3f}]" if signed else f"[{fmt(lo)}, {fmt(hi)}]"


def side_by_side(st: Stratum) -> str:
    """One row per reading: SRR's τ [interval], the best other measure and its τ, SRR − best with its
    paired interval, the verdict."""
    rows = []
    for rt in st.tables:
        v, corr = rt.verdict, rt.correlation
        srr = corr.loc[SRR] if corr is not None and SRR in corr.index else None
        rival = corr.loc[v.rival] if v is not None and v.rival is not None else None
        cmp = v.comparison if v is not None else None
        rows.append([rt.reading.network,
                     "–" if srr is None else f"{fmt(srr['tau'])} {tau_interval(srr)}",
                     "–" if rival is None else f"`{v.rival}`",
                     "–" if rival is None else fmt(rival["tau"]),
                     "–" if cmp is None else f"{cmp.diff:+.3f} [{cmp.ci_low:+.3f}, {cmp.ci_high:+.3f}]",
                     "–" if v is None else v.word])
    return md_table(["network", "SRR τ [95% interval]", "best other measure", "its τ",
                     "SRR − best [paired 95% interval]", "SRR"], rows, align=["---"] * 6)


def summary_table(table: pd.DataFrame, colour_col: str | None, statuses: Sequence[str]) -> pd.DataFrame:
    """Per model type: run counts per status, and means over the measurable runs."""
    key = table[colour_col] if colour_col else pd.Series("all", index=table.index)
    levels = sorted_levels(key) if colour_col else ["all"]
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
            v = percent(table[full])[m.index] if full in table else pd.Series(dtype=float)
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


def summary_lines(summary: pd.DataFrame, colour_label: str, statuses: Sequence[str]) -> list[str]:
    """The section "Accuracy and convergence per model type"."""
    header = [colour_label, "runs"] + list(statuses) + ["train acc", "test acc", "gap CE", "gap err", "epochs"]
    rows = []
    for level, r in summary.iterrows():
        rows.append([md_escape(value_text(level)), str(int(r["runs"]))] + [str(int(r[s])) for s in statuses]
                    + [fmt(r["train_acc"], 1) + ("%" if np.isfinite(r["train_acc"]) else ""),
                       fmt(r["test_acc"], 1) + ("%" if np.isfinite(r["test_acc"]) else ""),
                       fmt(r["gap_ce"]), fmt(r["gap_err"]), fmt(r["epochs"], 1)])
    return ["## Accuracy and convergence per model type", "", md_table(header, rows), "",
            "Accuracies, gaps and epochs are means over the measured (`done` or `not-converged`) runs of each "
            "model type.", ""]
