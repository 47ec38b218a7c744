"""Simpson's check of the study report (srrlab.report.study_within): within.csv equals kendall_test on
each level's rows, and the `simpson` flags equal a plain re-implementation of the documented rule on a
table built so that one measure is carried by an axis, one is reversed within it and one tracks the gap
inside every level."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from srrlab.correlation import kendall_test
from srrlab.report import study_tables, write_study_report

KW = dict(permutations=2_000, bootstrap=500, seed=0)
GROUPS = ["a", "b", "c", "d"]
AXES = ["hp.group", "hp.half"]


def simpson_table(seed: int = 1) -> pd.DataFrame:
    """4 groups × 2 halves × 4 models. The gap rises by 1 from group to group and spreads by < 0.8
    inside one: every pair across groups is ordered by the group.

    - ``carried`` (also ``srr``) = group + noise: it orders the groups and nothing inside them;
    - ``reversed`` = 10·group − the gap's spread: against the gap inside every group;
    - ``tracks`` = the gap: right inside every level;
    - ``noise``: unrelated to anything."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, group in enumerate(GROUPS):
        for half in (0, 1):
            for j in range(4):
                spread = rng.uniform(0, 0.8)
                carried = k + rng.uniform(0, 0.8)
                rows.append({"id": f"{group}{half}{j}", "status": "done", "hp.group": group, "hp.half": half,
                             "gen.gap_ce": k + spread, "measure.srr": carried, "measure.carried": carried,
                             "measure.reversed": 10.0 * k - spread, "measure.tracks": k + spread,
                             "measure.noise": rng.normal()})
    table = pd.DataFrame(rows)
    table.loc[0, "measure.carried"] = np.nan  # its level counts 7 models
    return table


def levels_of(table: pd.DataFrame, axis: str) -> list:
    values = list(pd.unique(table[axis]))
    return sorted(values) if all(isinstance(v, (int, np.integer)) for v in values) else values


def naive_within(table: pd.DataFrame, measure: str, axis: str) -> list[dict]:
    """kendall_test on the finite rows of each level, one level at a time."""
    out = []
    for level in levels_of(table, axis):
        rows = table[table[axis] == level]
        keep = np.isfinite(rows[measure].to_numpy(float)) & np.isfinite(rows["gen.gap_ce"].to_numpy(float))
        t = kendall_test(rows[measure].to_numpy(float)[keep], rows["gen.gap_ce"].to_numpy(float)[keep], **KW)
        out.append({"level": str(level), "n": int(keep.sum()), "tau": t.tau, "tau_lo": t.ci_low, "tau_hi": t.ci_high,
                    "tau_p": t.p_value})
    return out


def naive_flag(pooled: pd.Series, levels: list[dict], axis: str) -> str | None:
    """The rule of docs/correlation.md, "Within-level check", written out plainly."""
    tau, lo, hi = pooled["tau"], pooled["tau_lo"], pooled["tau_hi"]
    if not (lo > 0 or hi < 0):
        return None
    used = [lv for lv in levels if lv["n"] >= 3 and math.isfinite(lv["tau"])]
    if len(used) < 2:
        return None
    if all(lv["tau"] != 0 and (lv["tau"] > 0) != (tau > 0) for lv in used):
        return f"reversed within {axis}"
    pairs = [lv["n"] * (lv["n"] - 1) for lv in used]
    within = sum(p * lv["tau"] for p, lv in zip(pairs, used)) / sum(pairs)
    none_separated = all(not (lv["tau_lo"] > 0 or lv["tau_hi"] < 0) for lv in used)
    if none_separated and within * np.sign(tau) < abs(tau) / 2:
        return f"carried by {axis}"
    return None


@pytest.fixture(scope="module")
def simpson_report(tmp_path_factory):
    table = simpson_table()
    out = tmp_path_factory.mktemp("simpson")
    rep = write_study_report(table, out, axes=AXES, **KW)
    corr = pd.read_csv(out / "correlation.csv").set_index("measure")
    within = pd.read_csv(out / "within.csv", dtype={"level": str})
    return table, rep, corr, within, rep.path.read_text(encoding="utf-8")


def test_within_csv_equals_kendall_test_on_each_level(simpson_report):
    table, rep, _, within, _ = simpson_report
    assert list(within.columns) == ["stratum", "network", "measure", "axis", "level", "n", "tau", "tau_lo", "tau_hi",
                                    "tau_p"]
    measures = ["srr", "carried", "reversed", "tracks", "noise"]
    expected = [{"stratum": "all models", "network": "trained", "measure": m, "axis": a[3:], **lv}
                for m in measures for a in AXES for lv in naive_within(table, f"measure.{m}", a)]
    pd.testing.assert_frame_equal(within, pd.DataFrame(expected), check_exact=True)  # bit for bit, row order too
    assert within.query("measure == 'carried' and level == 'a'")["n"].item() == 7
    pd.testing.assert_frame_equal(rep.within.astype({"level": str}), within, check_exact=True)


def test_flags_follow_the_rule(simpson_report):
    table, _, corr, within, _ = simpson_report
    assert corr.loc["carried", "simpson"] == "carried by group"
    assert corr.loc["srr", "simpson"] == "carried by group"
    assert corr.loc["reversed", "simpson"] == "reversed within group"
    assert pd.isna(corr.loc["tracks", "simpson"]) and pd.isna(corr.loc["noise", "simpson"])
    for m in corr.index:  # every flag equals the plain re-implementation
        flags = [naive_flag(corr.loc[m], naive_within(table, f"measure.{m}", a), a[3:]) for a in AXES]
        got = corr.loc[m, "simpson"]
        assert ("" if pd.isna(got) else got) == "; ".join(f for f in flags if f), m
    # the cases are what they were built to be
    carried = within.query("measure == 'carried' and axis == 'group'")
    assert corr.loc["carried", "tau_lo"] > 0 and not ((carried["tau_lo"] > 0) | (carried["tau_hi"] < 0)).any()
    assert (within.query("measure == 'reversed' and axis == 'group'")["tau"] == -1).all()
    assert (within.query("measure == 'tracks'")["tau"] == 1).all()


def test_the_report_names_the_flags_and_the_srr_sentence_says_it(simpson_report):
    _, rep, _, within, text = simpson_report
    srr = within.query("measure == 'srr' and axis == 'group'")["tau"]
    clause = (f"SRR's τ is carried by the group axis: within each group τ runs from {srr.min():.2f} to "
              f"{srr.max():.2f}, none separated from 0.")
    assert rep.strata[0].verdict.sentence.endswith(clause)
    assert f"**{rep.strata[0].verdict.sentence}**" in text
    assert "- `carried`: carried by group (within each group τ runs from" in text
    assert "- `reversed`: reversed within group (" in text and "every one of the opposite sign" in text
    assert "`tracks`:" not in text and "`noise`:" not in text
    flags = rep.strata[0].tables[0].flags
    assert [(f.axis, f.kind, f.levels) for f in flags["reversed"]] == [("group", "reversed", 4)]
    assert flags["tracks"] == [] and flags["noise"] == []


def test_no_flag_without_a_separated_pooled_tau_or_without_intervals():
    table = simpson_table()
    table["measure.carried"] = table["measure.carried"].where(table["hp.half"] == 0, -table["measure.carried"])
    corr = study_tables(table, axes=AXES, **KW).correlation.set_index("measure")
    assert not (corr.loc["carried", "tau_lo"] > 0 or corr.loc["carried", "tau_hi"] < 0)
    assert corr.loc["carried", "simpson"] == ""
    corr = study_tables(simpson_table(), axes=AXES, permutations=0, bootstrap=0).correlation
    assert (corr["simpson"] == "").all()  # no intervals, no flags
