"""Network readings and measures added to a finished study without retraining (issue 21, parts 2 and 4);
the environment log of each execution."""
from __future__ import annotations

import copy
import datetime
import json
import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch

import srrlab
from srrlab.cli import main as cli
from srrlab.measures import MEASURES, MeasureSettings, compute_measures
from srrlab.runs import RunFolder, measure_key
from srrlab.study import SpecError, StudySpec, StudyStore, measure_study, run_study

SPEC = """
name = "readings"
dataset = "digits"  # the embedded digits

[fixed]
size = "digits"
depth = 1
dim = 16
heads = 2
epochs = 1
batch_size = 128

[grid]
variant = ["crate-c"]
lr = [0.001, 0.003]

[measures]
names = ["l2", "srr"]

[measures.settings]
max_images = 200
srr_images = 100
"""
SETTINGS = MeasureSettings(max_images=200, srr_images=100)
WIDER = SPEC.replace('names = ["l2", "srr"]', 'names = ["l2", "srr", "params"]\nnetworks = ["trained", "protocol"]')
#: The columns of WIDER, in the documented order: the primary names in spec order, then name@protocol
#: of each measure that depends on the network (srr is network-free: no srr@protocol).
WIDER_COLUMNS = ["measure.l2", "measure.srr", "measure.params", "measure.l2@protocol", "measure.params@protocol"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The SPEC study trained and measured once (l2, srr); tests work on copies."""
    directory = tmp_path_factory.mktemp("finished") / "s"
    run_study(StudySpec.from_toml(SPEC), directory, progress=False)
    return directory


@pytest.fixture
def study(finished, tmp_path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "s"))


def _files(directory: Path) -> dict[str, int]:
    """mtime of every weights and summary file of the study's run folders."""
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in sorted((directory / "runs").rglob("*"))
            if p.name.startswith("weights_") or p.name == "summary.json"}


def _expected(directory: Path, run_id: str, names: list[str], network: str, data) -> dict[str, float]:
    folder = RunFolder(directory / "runs" / run_id)
    settings = MeasureSettings(max_images=200, srr_images=100, network=network)
    return compute_measures(folder.load_model("final"), init=folder.load_model("init"), data=data.train,
                            measures=names, settings=settings)


def _no_training(monkeypatch) -> None:
    import srrlab.train as train_mod

    def refuse(*args, **kwargs):
        raise AssertionError("a stored run was trained again")

    monkeypatch.setattr(train_mod, "train", refuse)
    monkeypatch.setattr(train_mod, "resume", refuse)


# -- 1. network-free measures -------------------------------------------------------------------
def test_network_free_flag_says_which_values_do_not_depend_on_the_network(digits):
    """Every measure but the flatness searches, on a model with non-trivial LayerNorms, under both
    networks: a network-free one gives the same value, any other a different one. The data are the
    trained network's own predictions, so its margins are positive and the margin measures defined."""
    torch.manual_seed(0)
    init = srrlab.create_model("crate-n-digits", depth=1, dim=16, heads=2)
    model = copy.deepcopy(init)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
        images = digits.train.images[:200]
        # centre the logits so that the predictions (the labels below) span several classes: the
        # representation measures need at least two classes with two images each
        model.head.bias.copy_(-model.head.weight @ model.eval().features(images).mean(0))
    data = (images, model.eval()(images).argmax(-1).detach())
    flatness = [n for n in MEASURES if n.startswith(("pacbayes", "sharpness"))]
    names = [n for n in MEASURES if n not in flatness]
    small = dict(max_images=200, srr_images=100, spectrum_min_evals=16, hessian_images=50, hutchinson_probes=2,
                 power_iterations=3, adaptive_images=64, adaptive_steps=2, adaptive_samples=2)  # 16×16 matrices
    trained = compute_measures(model, init=init, data=data, measures=names, settings=MeasureSettings(**small))
    protocol = compute_measures(model, init=init, data=data, measures=names,
                                settings=MeasureSettings(**small, network="protocol"))
    assert all(trained[n] == trained[n] for n in names), "a measure is nan: the comparison would say nothing"
    assert {n for n in names if trained[n] == protocol[n]} == {n for n in names if MEASURES[n].network_free}
    assert {n for n in MEASURES if MEASURES[n].network_free} == {
        "srr", "srr-rate", "srr-sparsity", "srr-fraction", "srr-unit", "param-norm", "fro-dist", "dist-spec-init",
        "log-prod-of-spec", "log-sum-of-spec", "log-prod-of-fro", "log-sum-of-fro", "fro-over-spec", "path-norm",
        "ww-alpha", "ww-alpha-hat"}
    assert not any(MEASURES[n].network_free for n in flatness)  # they perturb LayerNorm parameters too


# -- 2. readings in the spec --------------------------------------------------------------------
def test_networks_in_the_spec():
    base = StudySpec.from_toml(SPEC)
    assert base.networks == ["trained"] and base.measure_keys == ["l2", "srr"]
    wider = StudySpec.from_toml(WIDER)
    assert wider.measure_keys == [c.removeprefix("measure.") for c in WIDER_COLUMNS]
    assert wider.reading_key("srr", "protocol") == "srr"
    assert wider.reading_key("l2", "protocol") == measure_key("l2", "protocol") == "l2@protocol"
    assert wider.reading_names("protocol") == ["l2", "params"]
    assert wider.reading_settings("protocol").network == "protocol" and wider.reading_settings().network == "trained"
    assert wider.keys_by_network(["params@protocol", "srr", "l2@protocol"]) == [("trained", ["srr"]),
                                                                               ("protocol", ["params", "l2"])]
    # measure names and extra readings are not in the fingerprint; the settings, primary network included, are
    assert wider.fingerprint() == base.fingerprint()
    given_twice = SPEC.replace("max_images = 200", 'max_images = 200\nnetwork = "protocol"')
    by_setting = StudySpec.from_toml(given_twice)
    by_list = StudySpec.from_toml(SPEC.replace('names = ["l2", "srr"]',
                                               'names = ["l2", "srr"]\nnetworks = ["protocol"]'))
    assert by_setting.networks == by_list.networks == ["protocol"] and by_setting.fingerprint() == by_list.fingerprint()
    assert by_list.fingerprint() != base.fingerprint()
    assert StudySpec.from_toml(SPEC.replace("max_images = 200", "max_images = 300")).fingerprint() != base.fingerprint()
    agreeing = given_twice.replace('names = ["l2", "srr"]', 'names = ["l2", "srr"]\nnetworks = ["protocol", "trained"]')
    assert StudySpec.from_toml(agreeing).measure_keys == ["l2", "srr", "l2@trained"]


@pytest.mark.parametrize("networks, settings, match", [
    ('["trained", "bare"]', "", "measures.networks': unknown network 'bare'; available: trained, protocol"),
    ('["trained", "trained"]', "", "measures.networks' repeats a network"),
    ("[]", "", "measures.networks' must be a non-empty list"),
    ('["trained", "protocol"]', 'network = "protocol"',
     r"measures.settings.network' \('protocol'\) differs from the first of 'measures.networks' \('trained'\)"),
])
def test_invalid_networks_are_refused(networks, settings, match):
    text = SPEC.replace('names = ["l2", "srr"]', f'names = ["l2", "srr"]\nnetworks = {networks}')
    with pytest.raises(SpecError, match=match):
        StudySpec.from_toml(text.replace("max_images = 200", f"max_images = 200\n{settings}"))


# -- 3. measures added without retraining -------------------------------------------------------
def test_added_measures_and_reading_measure_only_what_is_missing(study, tmp_path, monkeypatch, digits):
    before = StudyStore(study).table()
    files = _files(study)
    _no_training(monkeypatch)
    spec = tmp_path / "wider.toml"
    spec.write_text(WIDER)
    table = run_study(spec, study, progress=False)  # `srrlab study run SPEC --dir DIR` with an edited spec
    assert _files(study) == files and (table["attempts"] == 1).all()
    assert [c for c in table.columns if c.startswith("measure.")] == WIDER_COLUMNS  # no measure.srr@protocol
    kept = [c for c in before.columns if not c.startswith("measure.")]
    pd.testing.assert_frame_equal(table[kept], before[kept])  # status, summary (gen.*), warnings kept
    assert table["measure.l2"].tolist() == before["measure.l2"].tolist()  # bit-identical: not measured again
    assert table["measure.srr"].tolist() == before["measure.srr"].tolist()
    for _, row in table.iterrows():
        trained = _expected(study, row["id"], ["params"], "trained", digits)
        protocol = _expected(study, row["id"], ["l2", "params"], "protocol", digits)
        assert row["measure.params"] == trained["params"]
        assert (row["measure.l2@protocol"], row["measure.params@protocol"]) == (protocol["l2"], protocol["params"])
        assert row["measure.params@protocol"] < row["measure.params"]  # the protocol's LayerNorms are gone
    with StudyStore(study) as store:
        assert store.spec().source == WIDER  # the new spec is stored: `study report` uses it
        assert store.missing_measures(store.spec().measure_keys) == []
    # a spec that drops measures is accepted: the values stay in the database, the table shows the spec's keys
    narrow = tmp_path / "narrow.toml"
    narrow.write_text(SPEC.replace('names = ["l2", "srr"]', 'names = ["srr"]'))
    table = run_study(narrow, study, progress=False)
    assert [c for c in table.columns if c.startswith("measure.")] == ["measure.srr"]
    stored = json.loads(sqlite3.connect(study / "study.sqlite").execute("SELECT measures FROM runs").fetchone()[0])
    assert set(stored) == {"l2", "srr", "params", "l2@protocol", "params@protocol"}


def test_a_changed_measure_setting_is_still_refused(study, tmp_path):
    changed = tmp_path / "changed.toml"
    changed.write_text(WIDER.replace("max_images = 200", "max_images = 300"))
    with pytest.raises(SpecError, match=r"different spec \(measures.settings.max_images: 200 -> 300\)"):
        run_study(changed, study, progress=False)
    primary = tmp_path / "primary.toml"
    primary.write_text(WIDER.replace('["trained", "protocol"]', '["protocol", "trained"]'))
    with pytest.raises(SpecError, match=r"measures.networks\[0\] \(the primary reading\): \"trained\" -> \"protocol\""):
        run_study(primary, study, progress=False)


def test_extend_and_add_measures_in_one_call(study, tmp_path, digits):
    """A new grid point is trained and measured under every key; the stored ones get only what they lack."""
    bigger = tmp_path / "bigger.toml"
    bigger.write_text(WIDER.replace("lr = [0.001, 0.003]", "lr = [0.001, 0.003, 0.002]"))
    files = _files(study)
    table = run_study(bigger, study, extend=True, progress=False).set_index("hp.lr")
    assert {k: v for k, v in _files(study).items() if k in files} == files
    new = table.loc[0.002]
    assert new["attempts"] == 1 and new[WIDER_COLUMNS].notna().all()
    protocol = _expected(study, new["id"], ["l2", "params"], "protocol", digits)
    assert (new["measure.l2@protocol"], new["measure.params@protocol"]) == (protocol["l2"], protocol["params"])
    assert new["gen.measure_network"] == "trained"  # the record stays the primary reading's
    with StudyStore(study) as store:
        (entry,) = store.environments()[-1:]
    assert entry["points_trained"] == 1 and entry["rows_measured"] == 2
    assert entry["measure_keys_added"] == ["params", "l2@protocol", "params@protocol"]


def test_a_killed_measure_pass_resumes(study, monkeypatch):
    from srrlab.study import runner

    real, calls = runner.execute_measures, []

    def killed_after_one(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # as a kill between the first row's update and the second's
        calls.append(args[2])
        return real(*args, **kwargs)

    _no_training(monkeypatch)
    monkeypatch.setattr(runner, "execute_measures", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        measure_study(study, ["params"], progress=False)
    with StudyStore(study) as store:
        first, second = store.table()["id"]
        assert store.missing_measures(store.spec().measure_keys) == [(second, {"variant": "crate-c", "lr": 0.003},
                                                                       ["params"])]
    value = StudyStore(study).table().set_index("id").loc[first, "measure.params"]

    def counted(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr(runner, "execute_measures", counted)
    table = measure_study(study, progress=False).set_index("id")  # nothing added: what the killed call left
    assert [Path(c).name for c in calls] == [second]
    assert table.loc[first, "measure.params"] == value == table.loc[second, "measure.params"]


def test_failed_rows_are_left_alone(study, monkeypatch):
    _no_training(monkeypatch)
    with StudyStore(study) as store:
        first, second = store.table()["id"]
        store.db.execute("UPDATE runs SET status = 'failed', error = 'synthetic' WHERE id = ?", (second,))
    table = measure_study(study, ["params"], progress=False).set_index("id")
    assert table.loc[first, "measure.params"] > 0 and pd.isna(table.loc[second, "measure.params"])
    assert table.loc[second, ["status", "error"]].tolist() == ["failed", "synthetic"]
    with StudyStore(study) as store:
        assert store.environments()[-1]["rows_measured"] == 1
        with pytest.raises(ValueError, match="only rows with status done or not-converged hold measures"):
            store.update_measures(second, {"params": 1.0})
        with pytest.raises(KeyError, match="no grid point 'nope'"):
            store.update_measures("nope", {"params": 1.0})


def test_a_run_folder_that_cannot_be_measured_is_reported_and_kept(study):
    with StudyStore(study) as store:
        first, second = store.table()["id"]
    weights = RunFolder(study / "runs" / first).weights_path("final")
    saved = weights.read_bytes()
    weights.unlink()
    message = rf"1 of the 2 stored run\(s\) could not be measured .*{first}: FileNotFoundError"
    with pytest.warns(UserWarning, match=message):
        table = measure_study(study, ["params"], progress=False).set_index("id")
    assert pd.isna(table.loc[first, "measure.params"]) and table.loc[second, "measure.params"] > 0
    assert table.loc[first, "status"] in ("done", "not-converged")
    weights.write_bytes(saved)
    table = measure_study(study, progress=False).set_index("id")  # the next call retries it
    assert table.loc[first, "measure.params"] == table.loc[second, "measure.params"]


def test_cli_study_measure(study, capsys, monkeypatch, digits):
    _no_training(monkeypatch)
    assert cli(["study", "measure", str(study), "--add", "params", "--add", "l2-dist,srr", "--network", "protocol",
                "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "measured params, l2-dist, l2@protocol, params@protocol, l2-dist@protocol on 2 stored run(s)" in out
    assert "readings: trained, protocol" in out and f"srrlab study report {study}" in out
    with StudyStore(study) as store:
        spec = store.spec()
        table = store.table()
    assert spec.measures == ["l2", "srr", "params", "l2-dist"] and spec.networks == ["trained", "protocol"]
    assert StudySpec.from_toml(spec.source).to_dict() == spec.to_dict()
    assert spec.source.startswith(SPEC.split("[measures]")[0].rstrip())  # the rest of the text, comments included
    row = table.iloc[0]
    expected = _expected(study, row["id"], ["l2", "params", "l2-dist"], "protocol", digits)
    assert row["measure.l2-dist@protocol"] == expected["l2-dist"]
    assert cli(["study", "measure", str(study), "--quiet"]) == 0
    assert "measured nothing new on 0 stored run(s)" in capsys.readouterr().out
    assert cli(["study", "measure", str(study), "--add", "l2,pathnorm,fro"]) == 2
    err = capsys.readouterr().err
    assert "unknown measures 'pathnorm', 'fro'; available: srr, srr-rate" in err and err.count("\n") == 1
    assert cli(["study", "measure", str(study.parent / "none"), "--add", "l2"]) == 2
    assert "holds no study" in capsys.readouterr().err


def test_with_measures_edits_only_the_measures_keys():
    spec = StudySpec.from_toml(SPEC.replace("[grid]", "# the axes\n[grid]") + '\n[report]\nby = ["lr"]\n')
    wider = spec.with_measures(["params", "srr"], ["protocol"])
    assert wider.measures == ["l2", "srr", "params"] and wider.networks == ["trained", "protocol"]
    assert "# the axes" in wider.source and wider.report_by == ["lr"]
    assert wider.measure_settings == spec.measure_settings
    assert StudySpec.from_toml(wider.source).to_dict() == wider.to_dict()
    assert spec.with_measures([], []).to_dict() == {**spec.to_dict(), "source": spec.with_measures([], []).source}
    bare = StudySpec.from_toml(SPEC.split("[measures]")[0])  # no [measures]: every measure
    assert bare.with_measures([], ["protocol"]).measures == list(MEASURES)
    # the README tour's form: an inline table, or dotted keys (a value may span lines), at the top level
    top = SPEC.split("[measures]")[0]
    for form in ('measures = { names = ["l2"], settings = { max_images = 200 } }  # [x]\n',
                 'measures.names = [\n  "l2",  # "]"\n]\nmeasures.settings.max_images = 200\n'):
        spec = StudySpec.from_toml(top.replace("[fixed]", form + "[fixed]"))
        wider = spec.with_measures(["srr"], ["protocol"])
        assert (wider.measures, wider.networks, wider.measure_settings) == (["l2", "srr"], ["trained", "protocol"],
                                                                           {"max_images": 200})
        # edited where it stands (tomlkit), not moved: still before [fixed], its comments kept
        assert wider.source.rindex("measures") < wider.source.index("[fixed]")
        assert ("# [x]" in wider.source) == ("# [x]" in form) and wider.fingerprint() == spec.fingerprint()
    unstored = StudySpec.from_dict({"name": "x", "dataset": "digits", "fixed": {"model": "crate-c-digits"},
                                    "grid": {"seed": [0, 1]}})
    with pytest.raises(SpecError, match=r"cannot rewrite the measures of this spec: write them as a \[measures\]"):
        unstored.with_measures(["srr"])
    with pytest.raises(SpecError, match="unknown network 'bare'"):
        spec.with_measures([], ["bare"])


# -- 4. the environment of each execution ---------------------------------------------------------
def test_environment_log(study, monkeypatch):
    _no_training(monkeypatch)
    with StudyStore(study) as store:
        (first,) = store.environments()
    assert first["points_trained"] == 2 and first["rows_measured"] == 0 and first["measure_keys_added"] == []
    measure_study(study, ["params"], ["protocol"], threads=1, progress=False)
    with StudyStore(study) as store:
        entries = store.environments()
        store.log_environment({"note": "by hand"})
        assert store.environments()[-1] == {"note": "by hand"} and len(store.environments()) == 3
    assert entries[0] == first
    second = entries[1]
    assert set(second) >= {"date", "srrlab", "git_commit", "torch", "threads", "workers", "scheduler", "device",
                           "points_trained", "measure_keys_added"}
    date = datetime.datetime.fromisoformat(second["date"])
    assert date.utcoffset() == datetime.timedelta(0) and date <= datetime.datetime.now(datetime.timezone.utc)
    assert second["srrlab"] == srrlab.__version__ and second["torch"] == torch.__version__
    assert (second["threads"], second["workers"], second["scheduler"]) == (1, 0, None)
    assert second["device"] == ("cuda" if torch.cuda.is_available() else "cpu")  # the spec's device "auto", resolved
    assert second["points_trained"] == 0 and second["rows_measured"] == 2
    assert second["measure_keys_added"] == ["params", "l2@protocol", "params@protocol"]
    commit = second["git_commit"]
    assert commit is None or (len(commit) == 40 and isinstance(second["git_dirty"], bool))


# ---------------------------------------------------------------------------------------------- publish


def test_publish_writes_a_folder_that_re_derives(study, tmp_path):
    from srrlab.study import check_report, load_study, publish_study

    run_study(StudySpec.from_toml(WIDER), study, progress=False)  # two calls: trained, then measured
    out = tmp_path / "results" / "readings"
    assert cli(["study", "publish", str(study), str(out)]) == 0
    with StudyStore(study) as store:
        table, source, executions = store.table(), store.spec().source, store.environments()
    assert (out / "spec.toml").read_text() == source
    assert (out / "runs.csv").read_text() == table.to_csv(index=False, lineterminator="\n")
    committed, spec, from_files = load_study(out)
    assert from_files and list(committed.columns) == list(table.columns)
    pd.testing.assert_frame_equal(committed, table)
    env = json.loads((out / "environment.json").read_text())
    assert env["population"] == "readings" and env["executions"] == executions and len(executions) == 2
    trained = executions[0]
    assert trained["points_trained"] == 2 and executions[1]["points_trained"] == 0
    assert env["srrlab_commit"] == trained["git_commit"]
    assert {k: env[k] for k in ("torch", "threads", "workers", "date")} == \
        {k: trained[k] for k in ("torch", "threads", "workers", "date")}
    assert env["torch"] == torch.__version__
    # the report was rebuilt from the committed files, and its tables re-derive byte for byte
    assert (out / "report.md").exists() and check_report(out) == []
    assert (out / "correlation.csv").read_text().startswith("stratum,network,measure,")
    # publishing again replaces the folder as a whole; a failure leaves the old one untouched
    (out / "stale.txt").write_text("old")
    publish_study(study, out)
    assert not (out / "stale.txt").exists()
    with pytest.raises(FileNotFoundError, match="holds no study"):
        publish_study(tmp_path / "nothing", out)
    assert (out / "runs.csv").exists() and not list(out.parent.glob(".*publishing"))
