"""How SRR ranked on one population, in words and in tables: :func:`srr_led` (from τ alone),
:func:`srr_verdict` (with the paired bootstrap against the best other measure), :func:`headline` (a
terminal table) and :func:`markdown_correlation_table` (the paper's Table 1 in markdown)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..correlation import MEASURE_PREFIX, compare_measures
from .format import fmt, p_clause, p_value, tau_interval
from .study_common import SRR, is_srr_family, srr_first, strip

if TYPE_CHECKING:  # pragma: no cover
    from .study_within import SimpsonFlag

__all__ = ["SRRVerdict", "srr_verdict", "srr_led", "headline", "markdown_correlation_table"]


def _tau_series(correlation: pd.DataFrame) -> pd.Series:
    if "tau" not in correlation.columns:
        raise ValueError(f"correlation table has no 'tau' column (columns: {list(correlation.columns)})")
    tau = pd.to_numeric(correlation["tau"], errors="coerce").astype(float)
    tau.index = [strip(str(i), MEASURE_PREFIX) for i in correlation.index]
    return tau


def _join(names: Sequence[str]) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _fmt_pair(a: float, b: float) -> tuple[str, str]:
    """Format two different numbers with 3 decimals, or more if 3 would print them equal."""
    for digits in range(3, 8):
        fa, fb = fmt(a, digits), fmt(b, digits)
        if fa != fb:
            return fa, fb
    return fmt(a), fmt(b)


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


@dataclass
class SRRVerdict:
    """How SRR ranked against the other measures on one population (:func:`srr_verdict`).

    ``leads``: SRR has the highest τ among SRR and the other (non-SRR) measures; ``rival``: the other
    measure with the highest τ; ``comparison``: the paired bootstrap of SRR against it
    (:func:`srrlab.correlation.compare_measures`), ``None`` when it could not be computed;
    ``significant``: the interval of the difference excludes 0; ``sentence``: all of it in words;
    :attr:`word`: the verdict in a few words, for a summary table.
    """

    leads: bool | None
    rival: str | None
    comparison: Any
    significant: bool
    sentence: str

    @property
    def word(self) -> str:
        """``leads``, ``trails`` (by more than the paired interval), ``leads within uncertainty``,
        ``trails within uncertainty``, ``leads``/``trails`` without a comparison, ``–`` without SRR."""
        if self.leads is None:
            return "–"
        word = "leads" if self.leads else "trails"
        uncertain = self.comparison is not None and not self.significant
        return f"{word} within uncertainty" if uncertain else word


def srr_verdict(correlation: pd.DataFrame, table: pd.DataFrame | None = None, gap: str = "gen.gap_ce", *,
                bootstrap: int = 2_000, seed: int = 0, label: str = "",
                simpson: Sequence[SimpsonFlag] = ()) -> SRRVerdict:
    """Did SRR have the highest τ on this population, and is its lead (or deficit) larger than its
    uncertainty? ``correlation`` is a :func:`~srrlab.correlation.correlation_table` (with the
    ``tau_lo``/``tau_hi``/``tau_p`` columns when it has them); ``table`` the rows it was computed
    from, for the paired bootstrap of SRR against the best other measure (SRR's own parts and
    conventions, ``srr-*``, are not its rivals). ``label`` starts the sentence (e.g. ``"d = 64,
    n = 14 converged models"``). ``simpson``: SRR's flags of the within-level check
    (:func:`srrlab.report.study_within.simpson_flags`), each said in a clause at the end.
    """
    tau = _tau_series(correlation)
    prefix = f"{label}: " if label else ""
    finite = tau[np.isfinite(tau.to_numpy())]
    if SRR not in tau.index or not np.isfinite(float(tau[SRR])):
        led, sentence = srr_led(correlation)
        return SRRVerdict(None, None, None, False, prefix + sentence)
    rivals = finite[[not is_srr_family(n) for n in finite.index]]
    if rivals.empty:
        sentence = _sentence(prefix + "SRR is the only measure with a defined τ", simpson)
        return SRRVerdict(True, None, None, False, sentence)
    rival = str(rivals.idxmax())
    srr_tau, rival_tau = float(tau[SRR]), float(rivals.max())
    row = correlation.loc[[i for i in correlation.index if strip(str(i), MEASURE_PREFIX) == SRR][0]]
    rrow = correlation.loc[[i for i in correlation.index if strip(str(i), MEASURE_PREFIX) == rival][0]]

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
        text += f". {diff}: {verdict}"
    else:
        text += (". SRR had the highest τ" if leads else f". SRR did not have the highest τ: {rival} did")
    return SRRVerdict(leads, rival, cmp, significant, _sentence(text, simpson))


def _sentence(text: str, simpson: Sequence[SimpsonFlag]) -> str:
    """``text``, then a clause per within-level flag of SRR, then the full stop."""
    return "; ".join([text, *(flag.clause("SRR") for flag in simpson)]) + "."


def headline(correlation: pd.DataFrame) -> str:
    """A compact text table of a correlation table for a terminal: measure, τ, its interval and
    permutation p-value (when the table has them), Ψ, CMI (3 decimals, ``–`` for undefined), SRR
    first, the other measures in their order."""
    tau = _tau_series(correlation)
    names = [str(n) for n in tau.index]
    order = srr_first(names)
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
    names = [strip(str(n), MEASURE_PREFIX) for n in correlation.index]
    order = srr_first(names)
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
