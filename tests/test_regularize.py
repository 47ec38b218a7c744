"""The regularisation experiment (spec §7): grouped arms in study specs, the summary's numbers and
verdicts, the Tables 2/6 layout, the report, the CLI, presets, and RandAugment training."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from srrlab.cli import main as cli
from srrlab.io import read_jsonl
from srrlab.report.paired import detectable_effect
from srrlab.report.regularize import arm_label, paper_table, pooled_summary, regularization_summary, verdict_sentences
from srrlab.study import SpecError, StudySpec, StudyStore, arm_axis, load_regularize_spec, run_regularize
from srrlab.train import TrainConfig, resume, train

from conftest import train_interrupted

SPEC = """
name = "reg-tiny"
dataset = "digits"

[fixed]
size = "digits"
variant = "crate-t"
depth = 2
dim = 16
heads = 2
epochs = 2
batch_size = 256
lr = 0.003
target_ce = "none"

[grid]
arm = [
    { name = "CE", srr_reg = 0.0 },
    { name = "CE+SRR (last)", srr_reg = 0.01, srr_layers = "last" },
]
seed = [0, 1]

[measures]
names = ["srr"]

[measures.settings]
srr_images = 50
"""


# -- specs with grouped axes -------------------------------------------------------------------
def test_grouped_axis_sets_several_settings_and_labels_the_row():
    spec = StudySpec.from_toml(SPEC)
    assert spec.axes == ["arm"] and spec.replicates == 2 and spec.grouped_axes == ["arm"]
    assert len(spec.points()) == 4
    p = spec.points()[2]
    s = spec.settings(p)
    assert s["arm"] == "CE+SRR (last)" and s["srr_reg"] == 0.01 and s["srr_layers"] == "last" and s["seed"] == 0
    cfg = spec.train_config(p)
    assert cfg.srr_reg == 0.01 and cfg.target_ce is None and cfg.model == "crate-t-digits"
    assert spec.train_config(spec.points()[0]).srr_reg == 0.0
    assert arm_axis(spec) == "arm"


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.replace("epochs = 2", "epochs = 2\nsrr_reg = 0.1"), "grid axis 'arm' sets 'srr_reg', which is also fixed"),
    (lambda t: t.replace('srr_layers = "last"', 'srr_layerz = "last"'), "grid axis 'arm': unknown setting 'srr_layerz'"),
    (lambda t: t.replace('name = "CE+SRR (last)"', 'name = "CE"'), "two values have the same name"),
    (lambda t: t.replace("arm = [", "lr = ["), "grid axis 'lr' is a setting"),
    (lambda t: t.replace('dataset = "digits"', ""), "key 'dataset' is required"),
    (lambda t: t.replace("seed = [0, 1]", 'seed = [0, 1]\ndataset = ["digits"]'), "'dataset' is given both"),
    (lambda t: t.replace('dataset = "digits"', "").replace("seed = [0, 1]", 'seed = [0]\ndataset = ["mnist"]'),
     "setting 'dataset': 'mnist'"),
    (lambda t: t.replace('{ name = "CE", srr_reg = 0.0 },', '{ name = "CE", srr_reg = 0.0, name2 = 1 },'),
     "unknown setting 'name2'"),
])
def test_invalid_grouped_specs_name_the_problem(edit, match):
    with pytest.raises(SpecError, match=match):
        StudySpec.from_toml(edit(SPEC))


def test_dataset_axis_and_derived_arm_labels():
    text = SPEC.replace('dataset = "digits"', "").replace(
        "seed = [0, 1]", 'seed = [0]\ndataset = ["digits", "synthetic"]')
    spec = StudySpec.from_toml(text)
    assert spec.datasets == ["digits", "synthetic"] and spec.dataset == ""
    assert {spec.train_config(p).dataset for p in spec.points()} == {"digits", "synthetic"}
    # arms from plain srr_reg / srr_layers axes (no grouped axis): labelled from the settings
    plain = StudySpec.from_toml(SPEC.replace(
        'arm = [\n    { name = "CE", srr_reg = 0.0 },\n    { name = "CE+SRR (last)", srr_reg = 0.01, srr_layers = "last" },\n]',
        "srr_reg = [0.0, 0.001]"))
    assert arm_axis(plain) is None
    assert arm_label(0.0) == "CE" and arm_label(0.001, "random") == "CE+SRR (random, η=0.001)"
    assert arm_label(0.01, "last", 0.5) == "CE+SRR (last, η=0.01, ℓ1=0.5)"


def test_a_spec_without_both_arms_is_refused():
    only_ce = SPEC.replace('    { name = "CE+SRR (last)", srr_reg = 0.01, srr_layers = "last" },\n', "")
    with pytest.raises(SpecError, match="not a regularisation experiment.*srr_reg values \\[0.0\\]"):
        load_regularize_spec(StudySpec.from_toml(only_ce))


def test_presets():
    from srrlab.study.spec import preset_names

    assert preset_names("study") == ("demo", "demo-fmnist", "demo-seeds", "paper", "replicate", "replicate-seeds")
    assert preset_names("regularize") == ("demo", "fmnist", "fmnist-seeds", "paper", "seeds")
    fmnist = load_regularize_spec("fmnist")
    assert fmnist.datasets == ["fashion-mnist"] and len(fmnist.points()) == 36
    assert fmnist.data_options == {"subset": "embedded", "train_per_class": 150}
    cfg = fmnist.train_config(fmnist.points()[0])
    assert cfg.model == "crate-c-fmnist" and cfg.epochs == 10 and cfg.target_ce is None
    with pytest.raises(SpecError, match=r"neither a preset \(demo, fmnist, fmnist-seeds, paper, seeds\)"):
        load_regularize_spec("nope")
    demo = load_regularize_spec("demo")
    assert demo.datasets == ["digits"] and len(demo.points()) == 36
    assert [v["name"] for v in demo.grid["arm"]] == ["CE", "CE+SRR (last)", "CE+SRR (random)"]
    paper = load_regularize_spec("paper")
    assert paper.datasets == ["cifar10", "cifar100"] and len(paper.points()) == 2 * 4 * 8 * 3
    # Table 2's arms (CE, last, random) and Table 6's fixed layers 2, 4, …, 10 (last = 12)
    arms = {v["name"]: v.get("srr_layers") for v in paper.grid["arm"]}
    assert arms == {"CE": None, "CE+SRR (last)": "last", "CE+SRR (random)": "random", "CE+SRR (layer 2)": "2",
                    "CE+SRR (layer 4)": "4", "CE+SRR (layer 6)": "6", "CE+SRR (layer 8)": "8",
                    "CE+SRR (layer 10)": "10"}
    cfg = paper.train_config(next(p for p in paper.points() if p["arm"]["name"] == "CE+SRR (random)"
                                  and p["dataset"] == "cifar100" and p["variant"] == "crate"))
    assert cfg.model == "crate-tiny" and cfg.lr == 1e-4 and cfg.schedule == "cosine" and cfg.epochs == 200
    assert cfg.batch_size == 128 and cfg.target_ce is None and cfg.augment == "randaugment"
    assert (cfg.randaugment_ops, cfg.randaugment_magnitude) == (2, 14)
    assert cfg.model_options == {"depth": 12, "heads": 6, "dim": 384} and cfg.srr_reg == 0.001
    assert cfg.srr_layers == "random" and cfg.dataset == "cifar100"


# -- the summary: numbers and verdicts against hand computation ---------------------------------
def _table(rows):
    """A study-like table from (variant, arm, eta, seed, status, test_acc[, test_ce]) tuples."""
    return pd.DataFrame([{"id": f"r{i}", "status": st, "error": None, "hp.variant": v, "hp.arm": a,
                          "hp.srr_reg": eta, "hp.seed": s, "hp.dataset": "digits", "gen.test_acc": acc,
                          "gen.test_ce": ce[0] if ce else 1.0, "gen.train_acc": 1.0}
                         for i, (v, a, eta, s, st, acc, *ce) in enumerate(rows)])


def _t_interval(d):
    d = np.asarray(d, float)
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean() - half, d.mean() + half


def test_summary_values_and_verdicts():
    ce = {"crate-t": [0.90, 0.91, 0.92], "crate-c": [0.80, 0.81, 0.82], "crate": [0.85, 0.86, 0.87]}
    reg = {"crate-t": [0.951, 0.96, 0.972], "crate-c": [0.805, 0.80, 0.83], "crate": [0.80, 0.79, 0.81]}
    ce_loss = {"crate-t": ([0.30, 0.32, 0.31], [0.25, 0.28, 0.24]), "crate-c": ([0.5, 0.5, 0.5], [0.6, 0.4, 0.52]),
               "crate": ([0.4, 0.41, 0.42], [0.45, 0.47, 0.46])}
    rows = []
    for v in ce:
        rows += [(v, "CE", 0.0, s, "done", a, ce_loss[v][0][s]) for s, a in enumerate(ce[v])]
        rows += [(v, "SRR", 0.001, s, "done", a, ce_loss[v][1][s]) for s, a in enumerate(reg[v])]
    rows += [("crate-n", "CE", 0.0, 0, "done", 0.5), ("crate-n", "SRR", 0.001, 0, "done", 0.6),
             ("crate-n", "CE", 0.0, 1, "failed", None), ("crate-n", "SRR", 0.001, 1, "done", 0.7)]
    table = _table(rows)
    s = regularization_summary(table, axes=["variant", "arm"], arm_axis="arm").set_index(["variant", "arm"])
    r = s.loc[("crate-t", "SRR")]
    d = np.array([5.1, 5.0, 5.2])  # points, seed by seed
    assert r["test_acc_mean"] == pytest.approx(96.1) and r["delta_mean"] == pytest.approx(d.mean())
    assert (r["delta_ci_low"], r["delta_ci_high"]) == pytest.approx(_t_interval(d))
    assert r["p_value"] == pytest.approx(stats.ttest_rel([95.1, 96, 97.2], [90, 91, 92]).pvalue)
    assert r["wins"] == "3/3" and r["verdict"] == "improves" and r["baseline"] == "CE" and r["pairs"] == 3
    assert r["ce_delta_mean"] == pytest.approx(-0.16 / 3) and r["ce_verdict"] == "improves"  # a lower test CE
    assert r["detectable"] == pytest.approx(detectable_effect(3, d.std(ddof=1)))
    c = s.loc[("crate-c", "SRR")]  # Δ = (0.5, -1, 1) points: the interval holds 0
    assert c["delta_mean"] == pytest.approx(0.5 / 3) and c["delta_sd"] == pytest.approx(np.std([0.5, -1, 1], ddof=1))
    assert c["verdict"] == "no effect detected" and c["wins"] == "2/3"
    assert s.loc[("crate", "SRR"), "verdict"] == "hurts" and s.loc[("crate", "SRR"), "delta_mean"] == pytest.approx(-6.0)
    assert s.loc[("crate", "SRR"), "ce_verdict"] == "hurts"  # a higher test CE is worse
    n = s.loc[("crate-n", "SRR")]  # the CE run of seed 1 failed: one paired seed, no interval
    assert n["seeds"] == 2 and s.loc[("crate-n", "CE"), "failed"] == 1 and n["verdict"] == "too few seeds"
    assert n["delta_mean"] == pytest.approx(10.0) and n["pairs"] == 1
    assert pd.isna(s.loc[("crate-t", "CE"), "verdict"]) and math.isnan(s.loc[("crate-t", "CE"), "delta_mean"])
    # Holm over the regularised rows with a p-value (crate-t, crate-c, crate; crate-n has one pair), per metric
    for col in ("p_value", "ce_p_value"):
        ps = s[col].dropna().sort_values()
        m = len(ps)
        expected = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ps.to_numpy()))
        np.testing.assert_allclose(s.loc[ps.index, col.replace("p_value", "p_holm")].to_numpy(), expected)
    assert s["p_holm"].isna().sum() == len(s) - 3
    pooled = pooled_summary(table, axes=["variant", "arm"], arm_axis="arm")
    (p,) = pooled.itertuples(index=False)
    # crate-n has a pair for seed 0 only (its CE run of seed 1 failed, it has no seed 2): seeds 1 and 2 are left out
    assert p.variants == 4 and p.seeds == 1 and p.seeds_left_out == 2 and p.verdict == "too few seeds"
    three = pooled_summary(table[table["hp.variant"] != "crate-n"], axes=["variant", "arm"], arm_axis="arm").iloc[0]
    per_seed = (np.array([5.1, 5.0, 5.2]) + np.array([0.5, -1, 1]) + np.array([-5, -7, -6])) / 3
    assert three["seeds"] == 3 and three["delta_mean"] == pytest.approx(per_seed.mean())
    assert (three["delta_ci_low"], three["delta_ci_high"]) == pytest.approx(_t_interval(per_seed))
    sentences = verdict_sentences(s.reset_index(), pooled)
    assert len(sentences) == 5
    assert sentences[0].startswith("CRATE-T on digits: SRR 96.10 ± 1.05% vs CE 91.00 ± 1.00% over 3 paired seeds "
                                   "(better on 3/3): test accuracy: improves by 5.10 [")
    assert "test accuracy: no effect larger than" in sentences[1] and "test accuracy: hurts by 6.00" in sentences[2]
    assert "too few seeds to say (n = 1)" in sentences[3] and sentences[4].startswith("All variants on digits, pooled")
    wide = paper_table(s.reset_index())
    assert wide.loc["CRATE-T", ("digits", "SRR")] == "96.10 ± 1.05"
    assert wide.loc["CRATE-C", ("digits", "CE")] == "81.00 ± 1.00"
    assert list(wide.index) == ["CRATE-T", "CRATE-C", "CRATE", "CRATE-N"]


# -- end to end ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    spec = tmp_path_factory.mktemp("spec") / "reg.toml"
    spec.write_text(SPEC)
    out = tmp_path_factory.mktemp("reg")
    return spec, out, run_regularize(spec, out, progress=False)


def test_experiment_end_to_end(experiment, digits):
    spec, out, report = experiment
    runs = report["runs"]
    assert list(runs["status"]) == ["done"] * 4 and set(runs["hp.arm"]) == {"CE", "CE+SRR (last)"}
    for name in ("regularize.md", "regularize.png", "regularize-summary.csv", "regularize-pooled.csv",
                 "regularize-runs.csv"):
        assert (out / name).stat().st_size > 0
    text = (out / "regularize.md").read_text()
    assert "| Model | digits: CE | digits: CE+SRR (last) |" in text and "CRATE-T on digits" in text
    summary = report["summary"].set_index("arm")
    acc = runs.groupby("hp.arm")["gen.test_acc"].apply(lambda a: 100 * a.mean())
    assert summary.loc["CE", "test_acc_mean"] == pytest.approx(acc["CE"])
    assert summary.loc["CE+SRR (last)", "srr_mean"] == pytest.approx(
        runs.loc[runs["hp.arm"] == "CE+SRR (last)", "measure.srr"].mean())
    # a CE run of the experiment is plain training; a regularised one logs the regulariser
    row = runs[(runs["hp.arm"] == "CE") & (runs["hp.seed"] == 1)].iloc[0]
    metrics = read_jsonl(out / "runs" / row["id"] / "metrics.jsonl")
    assert "srr_reg_value" not in metrics[-1]
    cfg = StudySpec.from_toml(SPEC).train_config({"arm": {"name": "CE", "srr_reg": 0.0}, "seed": 1})
    alone = train(cfg, out.parent / "alone", quiet=True, splits=digits)
    assert alone.final["test_acc"] == row["gen.test_acc"]
    reg = runs[runs["hp.arm"] == "CE+SRR (last)"].iloc[0]
    assert math.isfinite(read_jsonl(out / "runs" / reg["id"] / "metrics.jsonl")[-1]["srr_reg_value"])
    assert len(report["sentences"]) == 1


def test_rerun_continues_without_retraining(experiment):
    spec, out, report = experiment
    again = run_regularize(spec, out, progress=False)
    pd.testing.assert_frame_equal(again["summary"], report["summary"])
    with StudyStore(out) as store:
        assert set(store.table()["attempts"]) == {1}


def test_cli(experiment, tmp_path, capsys):
    spec, out, _ = experiment
    assert cli(["regularize", "report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy (%), mean ± std over seeds" in printed and f"report  {out / 'regularize.md'}" in printed
    assert cli(["regularize", "report", str(tmp_path)]) == 2
    assert "holds no experiment" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace("srr_reg = 0.01", "srr_reg = 0.0").replace('name = "CE+SRR (last)"', 'name = "B"'))
    assert cli(["regularize", "run", str(bad), "--dir", str(tmp_path / "x"), "--quiet"]) == 2
    assert "not a regularisation experiment" in capsys.readouterr().err


# -- RandAugment training ----------------------------------------------------------------------
def _ra(**kw):
    options = dict(model="crate-t-digits", model_options={"depth": 1, "dim": 16, "heads": 2}, epochs=2,
                   batch_size=256, target_ce=None, augment="randaugment")
    return TrainConfig(**{**options, **kw})


def test_randaugment_training_is_reproducible_resumable_and_changes_the_run(tmp_path, digits, monkeypatch):
    a = train(_ra(), tmp_path / "a", quiet=True, splits=digits)
    b = train(_ra(), tmp_path / "b", quiet=True, splits=digits)
    assert a.metrics[-1]["train_ce"] == b.metrics[-1]["train_ce"]
    plain = train(_ra(augment="none"), tmp_path / "plain", quiet=True, splits=digits)
    weaker = train(_ra(randaugment_magnitude=0, randaugment_ops=0), tmp_path / "weak", quiet=True, splits=digits)
    assert len({a.final["train_ce"], plain.final["train_ce"], weaker.final["train_ce"]}) == 3
    train_interrupted(_ra(), tmp_path / "c", at_epoch=2, quiet=True, splits=digits)
    c = resume(tmp_path / "c", quiet=True, splits=digits)
    assert c.metrics[-1]["train_ce"] == a.metrics[-1]["train_ce"]


def test_augment_option_values():
    assert TrainConfig(augment=True).augment == "crop-flip" and TrainConfig(augment=False).augment == "none"
    with pytest.raises(ValueError, match="augment must be one of none, crop-flip, randaugment"):
        TrainConfig(augment="autoaugment")
    with pytest.raises(ValueError, match="randaugment_magnitude must be an integer in 0..30"):
        TrainConfig(randaugment_magnitude=31)


def test_cli_train_with_randaugment(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["train", "--model", "crate-t-digits", "--set", "depth=1", "--set", "dim=16", "--set", "heads=2",
                "--epochs", "1", "--batch-size", "512", "--augment", "randaugment", "--randaugment-magnitude", "9",
                "--out", str(out), "--quiet"]) == 0
    from srrlab.io import read_json

    saved = read_json(out / "config.json")["train"]
    assert saved["augment"] == "randaugment" and saved["randaugment_magnitude"] == 9 and saved["randaugment_ops"] == 2
    with pytest.raises(SystemExit):  # argparse refuses the choice
        cli(["train", "--augment", "mixup", "--out", str(tmp_path / "x")])
    assert "invalid choice: 'mixup'" in capsys.readouterr().err


def test_plot_bars_start_at_zero(tmp_path, monkeypatch):
    """The y axis of regularize.png starts at 0 (a zoomed axis exaggerates differences of a point)."""
    import srrlab.report.regularize as report

    figures = []
    monkeypatch.setattr(report, "save_png", lambda fig, path: figures.append(fig) or path)
    arms = ["CE", "CE+SRR (last)"]
    summary = pd.DataFrame({"dataset": "digits", "variant": "crate-t", "arm": arms, "test_acc_mean": [96.0, 97.0],
                            "test_acc_std": [0.5, 0.5]})
    runs = pd.DataFrame({"dataset": "digits", "variant": "crate-t", "arm": [a for a in arms for _ in (0, 1)],
                         "acc": [95.5, 96.5, 96.5, 97.5]})
    report.plot_regularization(summary, runs, tmp_path / "regularize.png")
    (ax,) = figures[0].axes
    low, high = ax.get_ylim()
    assert low == 0.0 and 97.5 < high <= 100.0
