"""Populations replicated over seeds: the seed is a replication axis (not an axis of ψ), the seed
presets repeat their base presets' designs, --reuse fills points with another study's identical runs,
and replicates.csv equals kendall_test / compare_measures on each seed's models."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from srrlab.cli import main as cli
from srrlab.correlation import compare_measures, kendall_test
from srrlab.report import study_tables, write_study_report
from srrlab.report.study_replicates import ALL_SEEDS, REPLICATE_COLUMNS
from srrlab.study import SpecError, StudySpec, StudyStore, check_report, load_spec, run_study
from srrlab.study.reuse import training_key

KW = dict(permutations=2_000, bootstrap=500, seed=0)

TINY = """
name = "tiny-seeds"
dataset = "digits"

[fixed]
size = "digits"
depth = 1
dim = 16
heads = 2
epochs = 2
batch_size = 128
target_ce = "none"

[grid]
variant = ["crate-c", "crate-n"]
lr = [0.001, 0.003]

[measures]
names = ["srr", "l2-dist"]

[measures.settings]
max_images = 200
srr_images = 100
"""
SEEDED = TINY.replace('name = "tiny-seeds"', 'name = "tiny-seeds-2"').replace(
    "lr = [0.001, 0.003]\n", "lr = [0.001, 0.003]\nseed = [0, 1]\n")


def _values(table: pd.DataFrame) -> pd.DataFrame:
    cols = ["status"] + [c for c in table.columns
                         if (c.startswith("gen.") and c != "gen.wall_time_s") or c.startswith("measure.")]
    keys = ["hp.variant", "hp.lr"]
    return table.sort_values(keys)[keys + cols].reset_index(drop=True)


# -- the seed is a replication axis ------------------------------------------------------------
def test_seed_is_not_an_axis_of_the_analysis():
    spec = StudySpec.from_toml(SEEDED)
    assert spec.axes == ["variant", "lr"] and spec.replicates == 2 and len(spec.points()) == 8
    assert StudySpec.from_toml(TINY).replicates == 1


@pytest.mark.parametrize("seeds, base, n, replicates", [("demo-seeds", "demo", 256, 8),
                                                         ("replicate-seeds", "replicate", 128, 4)])
def test_seed_presets_repeat_their_base_design(seeds, base, n, replicates):
    grown, original = load_spec(seeds), load_spec(base)
    assert len(grown.points()) == n and grown.replicates == replicates and grown.axes == original.axes
    assert grown.grid["seed"] == list(range(replicates)) and "seed" not in grown.fixed
    assert {k: v for k, v in grown.grid.items() if k != "seed"} == original.grid
    assert grown.measures == list(__import__("srrlab").measures.MEASURES)  # every measure, the new rivals too
    assert grown.networks == ["trained", "protocol"] == original.networks
    # same measure settings, and seed 0 trains exactly the base preset's runs: --reuse can take them
    assert grown.effective_measure_settings() == original.effective_measure_settings()
    assert ({training_key(grown, p) for p in grown.points() if p["seed"] == 0}
            == {training_key(original, p) for p in original.points()})


def test_regularisation_seed_presets():
    digits = load_spec("seeds", kind="regularize")
    arms = {a["name"]: a.get("srr_layers") for a in digits.grid["arm"]}
    assert arms == {"CE": None, "CE+SRR (last)": "last", "CE+SRR (random)": "random", "CE+SRR (layer 1)": "1",
                    "CE+SRR (layer 2)": "2", "CE+SRR (layer 3)": "3"}
    assert digits.replicates >= 20 and len(digits.points()) == 4 * 6 * digits.replicates
    depth = digits.train_config(digits.points()[0]).model_options.get("depth", 4)
    assert depth == 4  # layers 1-3 and "last" (= 4): every layer of the depth
    fm = load_spec("fmnist-seeds", kind="regularize")
    assert fm.replicates >= 10 and fm.dataset == "fashion-mnist"
    assert [a["name"] for a in fm.grid["arm"]] == ["CE", "CE+SRR (last)", "CE+SRR (random)"]


# -- --reuse ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """The tiny study (seed 0 implied), then the same design over seeds 0 and 1, once reusing it and
    once trained from scratch."""
    root = tmp_path_factory.mktemp("seeds")
    (root / "tiny.toml").write_text(TINY)
    (root / "seeded.toml").write_text(SEEDED)
    base = run_study(root / "tiny.toml", root / "base", progress=False)
    fresh = run_study(root / "seeded.toml", root / "fresh", progress=False)
    reused = run_study(root / "seeded.toml", root / "reused", progress=False, reuse=[root / "base"])
    return root, base, fresh, reused


def test_reuse_takes_identical_runs_and_trains_the_rest(studies):
    root, base, fresh, reused = studies
    assert len(reused) == 8 and set(reused["status"]) <= {"done", "not-converged"}
    # the reused seed-0 rows are the base study's values; training them afresh gives the same
    seed0 = reused[reused["hp.seed"] == 0]
    pd.testing.assert_frame_equal(_values(seed0), _values(base))
    pd.testing.assert_frame_equal(_values(fresh[fresh["hp.seed"] == 0]), _values(base))
    pd.testing.assert_frame_equal(_values(reused[reused["hp.seed"] == 1]), _values(fresh[fresh["hp.seed"] == 1]))
    # each reused row has its own copy of the run folder
    for run_id in seed0["id"]:
        assert (root / "reused" / "runs" / run_id / "weights_final.safetensors").is_file()
    with StudyStore(root / "reused") as store:
        envs = store.environments()
    reuse = [e for e in envs if "reused" in e]
    assert len(reuse) == 1 and reuse[0]["reused"][0]["rows"] == 4 and reuse[0]["reused"][0]["study"] == "tiny-seeds"
    assert reuse[0]["reused"][0]["executions"]  # the source's own execution records travel along
    assert [e["points_trained"] for e in envs if "points_trained" in e] == [4]
    # a second call finds nothing pending: nothing is reused or trained again
    again = run_study(root / "seeded.toml", root / "reused", progress=False, reuse=[root / "base"])
    pd.testing.assert_frame_equal(_values(again), _values(reused))


def test_reuse_refuses_other_measure_settings_and_non_studies(studies, tmp_path):
    root, *_ = studies
    other = tmp_path / "other.toml"
    other.write_text(SEEDED.replace("srr_images = 100", "srr_images = 50"))
    with pytest.raises(SpecError, match="measures with other settings.*srr_images"):
        run_study(other, tmp_path / "s", progress=False, reuse=[root / "base"])
    with pytest.raises(FileNotFoundError, match="no study there"):
        run_study(root / "seeded.toml", tmp_path / "t", progress=False, reuse=[tmp_path])


def test_reuse_on_the_command_line(studies, tmp_path, capsys):
    root, base, *_ = studies
    assert cli(["study", "run", str(root / "seeded.toml"), "--dir", str(tmp_path / "c"), "--quiet",
                "--reuse", str(root / "base")]) == 0
    with StudyStore(tmp_path / "c") as store:
        assert [e["reused"][0]["rows"] for e in store.environments() if "reused" in e] == [4]


# -- replicates.csv ------------------------------------------------------------------------------
def seeded_table(seeds: int = 3, per_seed: int = 12, seed: int = 3) -> pd.DataFrame:
    """A population of ``seeds`` copies of a 12-point design: SRR follows the gap with noise, the rival
    with more noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(seeds):
        for j in range(per_seed):
            gap = j / per_seed + rng.normal(0, 0.1)
            rows.append({"id": f"s{s}-{j}", "status": "done", "hp.seed": s, "hp.variant": ["a", "b"][j % 2],
                         "hp.lr": [0.1, 0.2, 0.3][j % 3], "gen.gap_ce": gap,
                         "measure.srr": gap + rng.normal(0, 0.1), "measure.rival": gap + rng.normal(0, 0.4),
                         "measure.noise": rng.normal()})
    return pd.DataFrame(rows)


def test_replicates_equal_the_tests_on_each_seeds_models():
    table = seeded_table()
    tables = study_tables(table, axes=["hp.variant", "hp.lr"], **KW)
    assert "psi.seed" not in tables.correlation.columns
    (rt,) = tables.strata[0].tables
    r = rt.replicates
    assert list(tables.replicates.columns) == REPLICATE_COLUMNS
    assert list(r["slice"]) == ["seed 0", "seed 1", "seed 2", ALL_SEEDS] and list(r["n"]) == [12, 12, 12, 36]
    rival = rt.verdict.rival
    assert (r["rival"] == rival).all()
    for (_, row), rows in zip(r.iterrows(), [table[table["hp.seed"] == s] for s in range(3)] + [table]):
        srr = kendall_test(rows["measure.srr"], rows["gen.gap_ce"], **KW)
        other = kendall_test(rows[f"measure.{rival}"], rows["gen.gap_ce"], **KW)
        cmp = compare_measures(rows, "srr", rival, bootstrap=KW["bootstrap"], seed=0)
        assert (row["srr_tau"], row["srr_lo"], row["srr_hi"], row["srr_p"]) == pytest.approx(
            (srr.tau, srr.ci_low, srr.ci_high, srr.p_value))
        assert row["srr_width"] == pytest.approx(srr.ci_high - srr.ci_low)
        assert (row["rival_tau"], row["rival_lo"], row["rival_hi"]) == pytest.approx((other.tau, other.ci_low, other.ci_high))
        assert (row["diff"], row["diff_lo"], row["diff_hi"], row["diff_p"]) == pytest.approx(
            (cmp.diff, cmp.ci_low, cmp.ci_high, cmp.p_value))
        separated = cmp.ci_low > 0 or cmp.ci_high < 0
        word = "leads" if cmp.diff >= 0 else "trails"
        assert row["verdict"] == (word if separated else f"{word} within uncertainty")
    # the all-seeds slice is the population's own verdict
    assert r.iloc[-1]["verdict"] == rt.verdict.word
    assert r.iloc[-1]["srr_width"] < r.iloc[:-1]["srr_width"].mean()  # 36 models narrow the interval


def test_a_population_without_seeds_has_no_replicates_file(tmp_path):
    table = seeded_table(seeds=1)
    assert study_tables(table, axes=["hp.variant"], **KW).replicates is None
    assert "replicates.csv" not in study_tables(table, axes=["hp.variant"], **KW).texts()
    write_study_report(table, tmp_path, axes=["hp.variant"], **KW)
    assert not (tmp_path / "replicates.csv").exists()


def test_report_writes_and_check_re_derives_replicates(studies, tmp_path):
    root, *_ = studies
    assert cli(["study", "report", str(root / "reused"), "--permutations", "500", "--bootstrap", "200"]) == 0
    text = (root / "reused" / "report.md").read_text()
    assert "Seed by seed (`replicates.csv`)" in text and "| seed 1 | " in text and f"| {ALL_SEEDS} | " in text
    replicates = pd.read_csv(root / "reused" / "replicates.csv")
    assert set(replicates["slice"]) == {"seed 0", "seed 1", ALL_SEEDS}
    assert check_report(root / "reused", permutations=500, bootstrap=200) == []
    (root / "reused" / "replicates.csv").write_text("stratum\n")
    assert any(p.startswith("replicates.csv: differs") for p in check_report(root / "reused", permutations=500,
                                                                              bootstrap=200))
