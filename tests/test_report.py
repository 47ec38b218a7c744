"""The study report (srrlab.report.study): files, the Table 1 markdown against correlation_table, the SRR
sentence, status counts, and a population too small to correlate."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest

from srrlab.correlation import correlation_table
from srrlab.report import headline, srr_led, write_study_report

VARIANTS = ["crate-c", "crate-n", "crate-t", "crate"]
AXES = ["hp.variant", "hp.lr", "hp.batch_size"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILES = ["runs.parquet", "runs.csv", "correlation.csv", "within.csv", "fig_srr_vs_gap.png", "fig_measures_grid.png",
         "fig_summary.png", "report.md"]


def population(seed: int = 0, *, oracle: bool = False) -> pd.DataFrame:
    """4 variants × 2 learning rates × 2 batch sizes. ``measure.srr`` follows the gap (plus noise), the
    others are noise; with ``oracle`` a measure equal to the gap (τ = 1) is added, so SRR does not lead.
    Row 3 failed (no metrics), row 6 diverged, row 9 did not converge."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, (variant, lr, bs) in enumerate(itertools.product(VARIANTS, [1e-3, 1e-4], [64, 128])):
        gap = 0.5 + 0.4 * VARIANTS.index(variant) + (0.3 if lr == 1e-3 else 0.0) + rng.uniform(0, 0.3)
        train_acc = 0.99 - rng.uniform(0, 0.02)
        test_acc = train_acc - 0.1 * gap
        row = {"id": f"{variant}-lr{lr:g}-bs{bs}", "status": "done", "error": None,
               "hp.variant": variant, "hp.lr": lr, "hp.batch_size": bs, "hp.dim": 96, "hp.dropout": 0.0,
               "hp.seed": 0, "gen.train_ce": 0.01, "gen.test_ce": 0.01 + gap, "gen.train_acc": train_acc,
               "gen.test_acc": test_acc, "gen.gap_ce": gap, "gen.gap_err": train_acc - test_acc,
               "gen.epochs": int(rng.integers(10, 40)), "gen.wall_time_s": float(rng.uniform(10, 20)),
               "measure.srr": 2.0 * gap + rng.normal(0, 0.15)}
        row["measure.l2"] = float(rng.normal(10, 1))
        row["measure.path-norm"] = float(rng.normal(0, 1))
        row["measure.inverse-margin"] = float(rng.normal(1, 0.2))
        if oracle:
            row["measure.oracle"] = gap
        rows.append(row)
    table = pd.DataFrame(rows)
    metrics = [c for c in table.columns if c.startswith(("gen.", "measure."))]
    table.loc[3, "status"] = "failed"
    table.loc[3, "error"] = "Traceback (most recent call last):\n  File \"x.py\", line 1\nRuntimeError: out of memory"
    table.loc[3, metrics] = np.nan
    table.loc[6, "status"] = "diverged"
    table.loc[6, "error"] = "train cross-entropy is NaN at epoch 4"
    table.loc[9, "status"] = "not-converged"
    return table


def measured(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"].isin(["done", "not-converged"])]


def section(text: str, heading: str) -> str:
    """The body of a ``## heading`` section of the report."""
    return text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]


def markdown_rows(block: str) -> list[list[str]]:
    """The cells of every row of the first markdown table in ``block`` (header first, rule dropped)."""
    lines = [ln for ln in block.splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    return [r for r in rows if not all(set(c) <= set("-:") for c in r)]


def number(cell: str) -> float:
    cell = cell.replace("**", "")
    return float("nan") if cell == "–" else float(cell)


KW = dict(permutations=2_000, bootstrap=500, seed=0)  # the report's uncertainty settings in these tests


def converged(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["status"] == "done"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    table = population()
    out = tmp_path_factory.mktemp("report")
    rep = write_study_report(table, out, axes=AXES, title="test study",
                             spec_text="[grid]\nvariant = ['crate-c', 'crate-n', 'crate-t', 'crate']\n", **KW)
    return table, out, rep.path, rep.path.read_text(encoding="utf-8"), rep


def test_files_exist_and_pngs_are_valid(report):
    _, out, path, _, rep = report
    assert path == out / "report.md"
    assert {f.name for f in rep.files} == set(FILES)
    for name in FILES:
        assert (out / name).is_file(), name
    for name in FILES:
        if name.endswith(".png"):
            data = (out / name).read_bytes()
            assert data[:8] == PNG_SIGNATURE, name
            assert len(data) > 10_000, name
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_runs_round_trip(report):
    table, out, _, _, _ = report
    back = pd.read_parquet(out / "runs.parquet")
    # pandas reads a text column of object dtype (`error`: str or None) back as its string dtype, with NaN
    # for None; every other column keeps its dtype, and every value is kept
    text = [c for c in table.columns if table[c].dtype == object]
    assert text == ["error"]
    pd.testing.assert_frame_equal(back, table.astype({c: back[c].dtype for c in text}))
    assert back.loc[3, "error"] == table.loc[3, "error"] and pd.isna(back.loc[0, "error"])
    csv = pd.read_csv(out / "runs.csv")
    assert list(csv.columns) == list(table.columns)
    assert list(csv["id"]) == list(table["id"])
    np.testing.assert_allclose(csv["measure.srr"], table["measure.srr"])


def _read_correlation(out, stratum: str = "all models", network: str = "trained") -> pd.DataFrame:
    """One stratum and reading of correlation.csv, in the layout of correlation_table (no simpson flags)."""
    got = pd.read_csv(out / "correlation.csv")
    assert list(got.columns[:3]) == ["stratum", "network", "measure"] and got.columns[-1] == "simpson"
    got = got[(got["stratum"] == stratum) & (got["network"] == network)]
    return got.drop(columns=["stratum", "network", "simpson"]).set_index("measure")


def test_correlation_csv_uses_converged_runs_only(report):
    table, out, _, text, rep = report
    names = ["measure.srr", "measure.l2", "measure.path-norm", "measure.inverse-margin"]
    expected = correlation_table(converged(table), measures=names, axes=AXES, **KW)
    got = _read_correlation(out)
    assert list(got.index) == list(expected.index) == ["srr", "l2", "path-norm", "inverse-margin"]
    pd.testing.assert_frame_equal(got, expected, check_dtype=False, check_names=False)
    assert int(expected["n_models"].iloc[0]) == 13  # 13 done; the not-converged run is measured, not ranked
    for col in ("tau_p", "tau_lo", "tau_hi", "Psi_p"):
        assert got[col].notna().all(), col
    assert "use the 13 runs that reached the stopping target" in text
    assert "Not-converged runs (measured, not ranked):" in text and "`crate-t-lr0.001-bs128`" in text
    assert rep.strata[0].title == "all models, n = 13 converged models"
    # the report returns the table it wrote (nobody re-reads correlation.csv)
    written = pd.read_csv(out / "correlation.csv", dtype={"simpson": str}).fillna({"simpson": ""})
    pd.testing.assert_frame_equal(rep.correlation, written, check_dtype=False)


def test_include_not_converged_brings_them_in(tmp_path):
    table = population()
    rep = write_study_report(table, tmp_path, axes=AXES, include_not_converged=True, **KW)
    expected = correlation_table(measured(table), axes=AXES, **KW)
    pd.testing.assert_frame_equal(_read_correlation(tmp_path), expected, check_dtype=False, check_names=False)
    assert rep.strata[0].title == "all models, n = 14 models (not-converged included)"
    assert "14 runs with status `done` (13) or `not-converged` (1)" in rep.path.read_text(encoding="utf-8")


def test_markdown_table_matches_correlation_table(report):
    table, _, _, text, _ = report
    expected = correlation_table(converged(table), axes=AXES, **KW)
    rows = markdown_rows(section(text, "Correlation with the generalisation gap"))
    header, body = rows[0], rows[1:]
    assert header == ["measure", "ψ variant", "ψ lr", "ψ batch_size", "τ", "τ 95% interval", "p(τ)", "Ψ", "p(Ψ)",
                      "CMI"]
    names = [re.search(r"`([^`]+)`", r[0]).group(1) for r in body]
    assert names == ["srr", "l2", "path-norm", "inverse-margin"]  # SRR first
    value_cols = {1: "psi.variant", 2: "psi.lr", 3: "psi.batch_size", 4: "tau", 7: "Psi", 9: "cmi"}
    for j, col in value_cols.items():
        values = np.array([number(r[j]) for r in body])
        np.testing.assert_allclose(values, expected.loc[names, col].to_numpy(dtype=float).round(3), atol=1e-12)
        bold = [r[j].startswith("**") for r in body]  # the largest printed value is bold, nothing else is
        assert bold == list(values == np.nanmax(values)), header[j] and any(bold)
    for r, name in zip(body, names):
        lo, hi = expected.loc[name, ["tau_lo", "tau_hi"]]
        assert r[5] == f"[{lo:.2f}, {hi:.2f}]".replace("-0.00", "0.00")
        p = expected.loc[name, "tau_p"]
        assert r[6] == ("< 0.001" if p < 0.001 else f"{p:.3f}")


def test_srr_sentence_when_srr_leads_beyond_its_uncertainty(report):
    table, out, _, text, rep = report
    verdict = rep.strata[0].verdict
    corr = _read_correlation(out)
    assert verdict.leads and verdict.significant and verdict.rival == corr.drop(index="srr")["tau"].idxmax()
    assert verdict.comparison.diff == pytest.approx(corr.loc["srr", "tau"] - corr.loc[verdict.rival, "tau"])
    assert verdict.comparison.ci_low > 0
    assert "SRR leads by more than its uncertainty: the paper's claim holds here" in verdict.sentence
    assert verdict.sentence.startswith("all models, n = 13 converged models: SRR τ = ")
    p = corr.loc["srr", "tau_p"]  # "p < 0.001" or "p = 0.012" in a sentence, never "p = < 0.001"
    assert ("p < 0.001" if p < 0.001 else f"p = {p:.3f}") in verdict.sentence and "p = <" not in verdict.sentence
    assert f"**{verdict.sentence}**" in text  # at the top of the report
    assert verdict.sentence in rep.headline()


def test_srr_sentence_when_srr_does_not_lead(tmp_path):
    table = population(oracle=True)
    rep = write_study_report(table, tmp_path, axes=AXES, **KW)
    corr = _read_correlation(tmp_path)
    verdict = rep.strata[0].verdict
    assert corr.loc["oracle", "tau"] == pytest.approx(1.0)
    assert not verdict.leads and verdict.rival == "oracle"
    assert verdict.comparison.diff == pytest.approx(corr.loc["srr", "tau"] - 1.0)
    # τ_SRR = 0.92 on 13 models: the resamples where SRR ties the oracle keep 0 inside the interval
    assert verdict.comparison.ci_high == pytest.approx(0.0, abs=1e-12) and not verdict.significant
    assert "SRR trails, by less than its uncertainty" in verdict.sentence
    text = rep.path.read_text(encoding="utf-8")
    body = markdown_rows(section(text, "Correlation with the generalisation gap"))[1:]
    oracle = next(r for r in body if "`oracle`" in r[0])
    assert oracle[4] == "**1.000**"  # τ column
    assert body[0][0].endswith("(`srr`)")
    # SRR's own parts are not its rivals
    table["measure.srr-rate"] = table["gen.gap_ce"]
    table = table.drop(columns="measure.oracle")
    verdict = write_study_report(table, tmp_path / "parts", axes=AXES, **KW).strata[0].verdict
    assert verdict.rival != "srr-rate" and verdict.leads


def test_srr_sentence_when_the_lead_is_within_its_uncertainty(tmp_path):
    table = population()
    rng = np.random.default_rng(5)
    table["measure.twin"] = table["measure.srr"] + rng.normal(0, 0.2, len(table))  # about as good as SRR
    rep = write_study_report(table, tmp_path, axes=AXES, **KW)
    verdict = rep.strata[0].verdict
    assert verdict.rival == "twin" and not verdict.significant
    assert verdict.comparison.ci_low < 0 < verdict.comparison.ci_high
    assert ("by less than its uncertainty" in verdict.sentence)


def test_one_table_per_width_and_the_pooled_one(tmp_path):
    table = pd.concat([population(0).assign(**{"hp.dim": 64}), population(1).assign(**{"hp.dim": 128})],
                      ignore_index=True)
    table["id"] = table["id"] + "-d" + table["hp.dim"].astype(str)
    table.loc[table["hp.dim"] == 128, "measure.srr"] += 100.0  # a count-like measure that grows with width
    rep = write_study_report(table, tmp_path, axes=[*AXES, "hp.dim"], by=["dim"], **KW)
    assert [st.label for st in rep.strata] == ["d = 64", "d = 128", "pooled over dim"]
    assert [st.title for st in rep.strata] == ["d = 64, n = 13 converged models", "d = 128, n = 13 converged models",
                                               "pooled over dim, n = 26 converged models"]
    for st, dim in zip(rep.strata[:2], (64, 128)):
        rows = converged(table[table["hp.dim"] == dim])
        expected = correlation_table(rows, axes=AXES, **KW)  # the stratum's axis is not an axis inside it
        got = _read_correlation(tmp_path, st.label)
        assert got["psi.dim"].isna().all()  # the tidy file has every stratum's columns
        pd.testing.assert_frame_equal(got[expected.columns], expected, check_dtype=False, check_names=False)
        assert (tmp_path / f"fig_measures_grid_dim={dim}.png").read_bytes()[:8] == PNG_SIGNATURE
    pooled = correlation_table(converged(table), axes=[*AXES, "hp.dim"], **KW)
    pd.testing.assert_frame_equal(_read_correlation(tmp_path, "pooled over dim")[pooled.columns], pooled,
                                  check_dtype=False, check_names=False)
    text = rep.path.read_text(encoding="utf-8")
    assert "### d = 64, n = 13 converged models\n" in text and "### d = 128, n = 13 converged models\n" in text
    assert "### pooled over dim, n = 26 converged models — pooled (for reference only)" in text
    assert "POOLED" in rep.headline() and rep.headline().index("d = 64") < rep.headline().index("POOLED")
    # a single stratum: no pooled copy of it
    one = write_study_report(table[table["hp.dim"] == 64], tmp_path / "one", axes=AXES, by=["dim"], **KW)
    assert [st.label for st in one.strata] == ["d = 64"]
    with pytest.raises(ValueError, match="stratum"):
        write_study_report(table, tmp_path / "bad", axes=AXES, by=["nope"])


def test_srr_led_ties_missing_and_undefined():
    def corr(**taus):
        return pd.DataFrame({"tau": list(taus.values())}, index=pd.Index(list(taus), name="measure"))

    led, s = srr_led(corr(srr=0.4, l2=0.4, params=0.1))
    assert led and s == ("SRR tied for the highest overall Kendall τ (0.400) with l2, of the 3 measures on this "
                         "population.")
    led, s = srr_led(corr(l2=0.5, params=0.1))
    assert not led and "no SRR measure" in s and "l2" in s and "0.500" in s
    led, s = srr_led(corr(srr=np.nan, l2=0.5))
    assert not led and "undefined" in s and "l2" in s
    led, s = srr_led(corr(srr=0.3, l2=np.nan))
    assert led and s == "SRR was the only measure with a defined overall Kendall τ (0.300) on this population."
    led, s = srr_led(corr(srr=0.4, l2=0.2, params=np.nan))
    assert led and "of the 2 measures with a defined τ" in s
    led, s = srr_led(corr(srr=np.nan))
    assert not led and s.startswith("No measure")
    led, s = srr_led(corr(srr=0.44451, l2=0.44459))  # equal at 3 decimals: more digits are shown
    assert not led and s == "SRR did not have the highest overall τ: l2 did (0.4446 vs 0.4445 for SRR)."
    led, s = srr_led(corr(srr=0.1, l2=0.5, params=0.5))
    assert not led and s == "SRR did not have the highest overall τ: l2 and params did, tied (0.500 vs 0.100 for SRR)."


def test_counts_per_status_and_errors(report):
    _, _, _, text, _ = report
    runs = section(text, "Runs")
    counts = {r[0]: r[1] for r in markdown_rows(runs)[1:]}
    assert counts == {"done": "13", "not-converged": "1", "diverged": "1", "failed": "1", "**all**": "**16**"}
    assert "RuntimeError: out of memory" in runs  # a traceback is shortened to its last line
    assert "Traceback" not in runs
    assert "train cross-entropy is NaN at epoch 4" in runs
    per_type = markdown_rows(section(text, "Accuracy and convergence per model type"))
    header, body = per_type[0], {r[0]: r for r in per_type[1:]}
    assert header[:6] == ["model type", "runs", "done", "not-converged", "diverged", "failed"]
    assert [body[v][1:6] for v in ["crate-c", "crate-n", "crate-t", "crate"]] == [
        ["4", "3", "0", "0", "1"], ["4", "3", "0", "1", "0"], ["4", "3", "1", "0", "0"], ["4", "4", "0", "0", "0"]]


def test_report_contents(report):
    _, _, _, text, _ = report
    assert text.startswith("# test study\n")
    assert "```\n[grid]\nvariant = ['crate-c', 'crate-n', 'crate-t', 'crate']\n```" in text
    for fig in ("fig_srr_vs_gap.png", "fig_measures_grid.png", "fig_summary.png"):
        assert f"]({fig})" in text
    assert "- grid axis `lr`: 0.0001, 0.001" in text
    assert "- fixed `dim`: 96" in text
    assert "dropped" not in section(text, "Correlation with the generalisation gap").lower()


def test_nan_measure_values_are_counted(tmp_path):
    table = population()
    table.loc[[0, 5], "measure.l2"] = np.nan
    text = write_study_report(table, tmp_path, axes=["variant", "lr", "batch_size"], **KW).path.read_text(encoding="utf-8")
    assert "Runs dropped for a NaN value: `l2` 2 of 13." in text


def test_headline():
    corr = correlation_table(measured(population()), axes=AXES, permutations=0, bootstrap=0).iloc[::-1]
    lines = headline(corr.drop(columns=["tau_p", "tau_lo", "tau_hi", "Psi_p"])).splitlines()  # SRR last in the input
    assert lines[0].split() == ["measure", "τ", "Ψ", "CMI"]
    assert lines[1].split()[0] == "srr"
    assert [ln.split()[0] for ln in lines[2:]] == ["inverse-margin", "path-norm", "l2"]
    assert lines[1].split()[1:] == [f"{corr.loc['srr', c]:.3f}" for c in ("tau", "Psi", "cmi")]
    corr = correlation_table(measured(population()), axes=AXES, **KW)
    lines = headline(corr).splitlines()
    assert lines[0].split() == ["measure", "τ", "interval", "p", "Ψ", "CMI"]
    srr = corr.loc["srr"]
    assert lines[1].split()[1:4] == [f"{srr['tau']:.3f}", f"[{srr['tau_lo']:.2f},", f"{srr['tau_hi']:.2f}]"]


def test_too_few_measured_runs(tmp_path):
    table = population()
    table.loc[table.index[1:], "status"] = "failed"
    path = write_study_report(table, tmp_path, axes=AXES).path
    text = path.read_text(encoding="utf-8")
    assert "1 run entered this table; at least 2 are needed" in text
    assert "SRR τ =" not in text  # no SRR sentence without a correlation table
    corr = pd.read_csv(tmp_path / "correlation.csv")
    assert corr.empty and "tau" in corr.columns
    for name in FILES:
        assert (tmp_path / name).is_file()
    assert (tmp_path / "fig_srr_vs_gap.png").read_bytes()[:8] == PNG_SIGNATURE


def test_unknown_axis_or_gap_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unknown axis"):
        write_study_report(population(), tmp_path / "a", axes=["hp.nope"])
    with pytest.raises(ValueError, match="unknown gap"):
        write_study_report(population(), tmp_path / "b", axes=AXES, gap="gen.nope")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_empty_table_and_no_measures(tmp_path):
    path = write_study_report(population().iloc[:0], tmp_path / "empty", axes=AXES).path
    assert "0 runs entered this table" in path.read_text(encoding="utf-8")
    for name in FILES:
        assert (tmp_path / "empty" / name).is_file()
    table = population().drop(columns=[c for c in population().columns if c.startswith("measure.")])
    text = write_study_report(table, tmp_path / "none", axes=AXES).path.read_text(encoding="utf-8")
    assert "no `measure.*` columns" in text
