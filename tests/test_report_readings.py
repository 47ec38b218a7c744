"""Network readings side by side in the study report (srrlab.report.study_readings): one set of tables
per reading, the `network` column of correlation.csv and within.csv, the headings and the summary table
of report.md, and the errors of an inconsistent table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_report import AXES, KW, converged, markdown_rows, population, section

from srrlab.correlation import correlation_table
from srrlab.report import study_tables, write_study_report
from srrlab.report.study_readings import readings_of

OTHERS = ["l2", "path-norm", "inverse-margin"]
TRAINED, PROTOCOL = "trained network (LayerNorms kept)", "protocol network (pre-operator LayerNorms removed)"


def two_readings() -> pd.DataFrame:
    """The report's population measured on the trained network (plain columns) and again on the
    protocol network (``@protocol``), where ``l2`` follows the gap. ``srr``, ``srr-rate`` and
    ``path-norm`` are network-free: no second column, as a study writes them."""
    table = population()
    rng = np.random.default_rng(7)
    table["gen.measure_network"] = "trained"
    table["measure.srr-rate"] = table["measure.srr"] + rng.normal(0, 0.5, len(table))
    table["measure.inverse-margin@protocol"] = table["measure.inverse-margin"] + rng.normal(0, 0.2, len(table))
    table["measure.l2@protocol"] = 3.0 * table["gen.gap_ce"] + rng.normal(0, 0.01, len(table))
    return table


def protocol_view(table: pd.DataFrame) -> pd.DataFrame:
    """The protocol reading built by hand: each measure's @protocol column under its plain name, or
    its plain column when it has none."""
    plain = [c for c in table.columns if c.startswith("measure.") and "@" not in c]
    view = table.drop(columns=[c for c in table.columns if c.startswith("measure.")])
    for c in plain:
        view[c] = table[c + "@protocol"] if c + "@protocol" in table.columns else table[c]
    return view


@pytest.fixture(scope="module")
def readings_report(tmp_path_factory):
    table = two_readings()
    out = tmp_path_factory.mktemp("readings")
    rep = write_study_report(table, out, axes=AXES, **KW)
    return table, out, rep, rep.path.read_text(encoding="utf-8")


def test_one_table_per_reading(readings_report):
    table, out, rep, _ = readings_report
    got = pd.read_csv(out / "correlation.csv")
    assert list(got.columns[:3]) == ["stratum", "network", "measure"]
    names = ["srr", *OTHERS, "srr-rate"]  # the primary reading's order in both
    assert list(zip(got["network"], got["measure"])) == [("trained", m) for m in names] + [("protocol", m) for m in names]
    for network, rows in (("trained", converged(table)), ("protocol", protocol_view(converged(table)))):
        expected = correlation_table(rows, measures=names, axes=AXES, **KW)
        mine = got[got["network"] == network].drop(columns=["stratum", "network", "simpson"]).set_index("measure")
        pd.testing.assert_frame_equal(mine, expected, check_dtype=False, check_names=False)
    for m in ("srr", "srr-rate", "path-norm"):  # network-free: the same row in both readings
        rows = got[got["measure"] == m].drop(columns="network")
        assert rows.iloc[0].equals(rows.iloc[1]), m
    within = pd.read_csv(out / "within.csv")
    assert set(within["network"]) == {"trained", "protocol"}
    assert within.groupby("network").size().to_dict() == {"protocol": 40, "trained": 40}  # 5 measures × 8 levels
    protocol = rep.strata[0].tables[1]
    assert protocol.reading.network == "protocol" and protocol.verdict.rival == "l2" and not protocol.verdict.leads
    assert rep.strata[0].verdict is rep.strata[0].tables[0].verdict  # the primary reading's


def test_report_shows_each_reading_and_the_summary(readings_report):
    _, _, rep, text = readings_report
    body = section(text, "Correlation with the generalisation gap")
    assert body.index(f"#### {TRAINED}\n") < body.index(f"#### {PROTOCOL}\n")
    rows = markdown_rows(body.split("The readings side by side:", 1)[1].split("####", 1)[0])
    assert rows[0] == ["network", "SRR τ [95% interval]", "best other measure", "its τ",
                       "SRR − best [paired 95% interval]", "SRR"]
    for row, rt in zip(rows[1:], rep.strata[0].tables):
        v, corr = rt.verdict, rt.correlation
        assert row[0] == rt.reading.network and row[2] == f"`{v.rival}`"
        assert row[1].startswith(f"{corr.loc['srr', 'tau']:.3f} [") and row[3] == f"{corr.loc[v.rival, 'tau']:.3f}"
        assert row[4].startswith(f"{v.comparison.diff:+.3f} [") and row[5] == v.word
    assert [r[5] for r in rows[1:]] == ["leads", "trails within uncertainty"]
    for rt in rep.strata[0].tables:  # each reading's sentence, named, under its table and at the top
        assert rt.verdict.sentence.startswith(f"all models, n = 13 converged models, {rt.reading.network} network: ")
        assert f"**{rt.verdict.sentence}**" in text and rt.verdict.sentence in body
    assert "as a second reading, the protocol network (`measure.<name>@protocol` columns)" in text
    assert TRAINED in rep.headline() and PROTOCOL in rep.headline()


def test_one_reading_is_named_by_gen_measure_network(tmp_path):
    table = population()
    assert set(study_tables(table, axes=AXES, **KW).correlation["network"]) == {"trained"}  # no gen.measure_network
    table["gen.measure_network"] = "protocol"
    table.loc[3, "gen.measure_network"] = None  # a failed run measured nothing
    rep = write_study_report(table, tmp_path, axes=AXES, **KW)
    assert set(pd.read_csv(tmp_path / "correlation.csv")["network"]) == {"protocol"}
    text = rep.path.read_text(encoding="utf-8")
    assert "The readings side by side" not in text and "####" not in text


def test_inconsistent_readings_are_refused_before_writing(tmp_path):
    table = population()
    table["gen.measure_network"] = ["trained", "protocol"] * 8
    with pytest.raises(ValueError, match="measured different networks .*trained, protocol"):
        write_study_report(table, tmp_path / "a", axes=AXES)
    table = population().assign(**{"measure.l2@trained": 1.0})
    with pytest.raises(ValueError, match="'measure.l2@trained' names the primary reading's network 'trained'"):
        write_study_report(table, tmp_path / "b", axes=AXES)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_readings_of_orders_srr_first_and_keeps_network_free_measures_in_every_reading():
    table = pd.DataFrame(columns=["measure.l2", "measure.srr-rate", "measure.srr", "measure.path-norm",
                                  "measure.l2@protocol", "measure.fro@protocol", "gen.measure_network"])
    primary, protocol = readings_of(table)
    assert (primary.network, primary.primary) == ("trained", True)
    assert list(primary.columns.items()) == [("measure.srr", "measure.srr"), ("measure.l2", "measure.l2"),
                                             ("measure.srr-rate", "measure.srr-rate"),
                                             ("measure.path-norm", "measure.path-norm")]
    # a measure without an @protocol column is network-free: the same column in both readings
    assert list(protocol.columns.items()) == [("measure.srr", "measure.srr"), ("measure.l2", "measure.l2@protocol"),
                                              ("measure.srr-rate", "measure.srr-rate"),
                                              ("measure.path-norm", "measure.path-norm"),
                                              ("measure.fro", "measure.fro@protocol")]
    assert list(protocol.view(table).columns) == ["gen.measure_network", *protocol.columns]
