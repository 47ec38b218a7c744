"""The generalisation study: specs, the store, resumption after SIGKILL, failures, Dask, the report."""
from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from srrlab.cli import main as cli
from srrlab.correlation import correlation_table
from srrlab.study import SpecError, StudySpec, StudyStore, load_spec, run_study

TINY = """
name = "tiny"
dataset = "digits"

[fixed]
size = "digits"
depth = 1
dim = 16
heads = 2
epochs = 2
batch_size = 128
target_ce = 0.01

[grid]
variant = ["crate-c", "crate-n"]
lr = [0.001, 0.003]

[measures]
names = ["srr", "l2-dist", "log-prod-of-spec", "path-norm"]

[measures.settings]
max_images = 200
srr_images = 100
"""

def _values(table: pd.DataFrame) -> pd.DataFrame:
    cols = ["id", "status"] + [c for c in table.columns
                               if (c.startswith("gen.") and c != "gen.wall_time_s") or c.startswith("measure.")]
    return table[cols].sort_values("id").reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def reference(tiny_spec, tmp_path_factory) -> pd.DataFrame:
    """The tiny study run once, uninterrupted, sequentially."""
    return run_study(tiny_spec, tmp_path_factory.mktemp("ref"), progress=False)


# -- specs ---------------------------------------------------------------------------------
def test_presets():
    demo = load_spec("demo")
    assert demo.dataset == "digits" and len(demo.points()) >= 32
    assert demo.grid["variant"] == ["crate-c", "crate-n", "crate-t", "crate"]
    # the ten-minute demo names its measures: all but the expensive rivals after 2020 (docs/measures.md)
    from srrlab.measures import MEASURES

    assert [m for m in MEASURES if m not in demo.measures] == [
        "asharp-max-linf", "asharp-max-l2", "asharp-avg-l2", "hessian-trace", "hessian-top"]
    assert load_spec("replicate").measures == list(MEASURES)
    paper = load_spec("paper")
    assert paper.dataset == "cifar10" and len(paper.points()) == 64
    assert set(paper.axes) == {"variant", "batch_size", "lr", "dim", "dropout"}
    cfg = paper.train_config(paper.points()[0])
    assert cfg.model == "crate-c-tiny" and cfg.model_options["depth"] == 12 and cfg.model_options["heads"] == 6
    assert cfg.optimizer == "adam" and cfg.augment == "none" and cfg.target_ce == 0.01
    # the paper's reporting rules: one table per width; the dropout axis sets all three dropouts
    assert paper.report_by == ["dim"] and not paper.include_not_converged
    from srrlab.models import model_config

    point = next(p for p in paper.points() if p["dropout"] == 0.1)
    mc = model_config(paper.train_config(point).model, **paper.train_config(point).model_options)
    assert (mc.dropout, mc.attention_dropout, mc.embedding_dropout) == (0.1, 0.1, 0.1)
    # the replication on Fashion-MNIST (Table 1's design, the paper's target CE, one width, depth >= 6)
    rep = load_spec("replicate")
    assert rep.dataset == "fashion-mnist" and len(rep.points()) == 32 and rep.report_by == ["dim"]
    assert rep.data_options == {"subset": "embedded", "train_per_class": 100}
    assert set(rep.axes) == {"variant", "batch_size", "lr", "dropout"}
    cfg = rep.train_config(rep.points()[0])
    assert cfg.model == "crate-c-fmnist" and cfg.model_options["depth"] >= 6 and cfg.target_ce == 0.01
    assert cfg.optimizer == "adam" and cfg.schedule == "constant" and cfg.augment == "none"
    # the demo's design on Fashion-MNIST, the measured alternative to the digits demo
    alt = load_spec("demo-fmnist")
    assert alt.dataset == "fashion-mnist" and alt.grid == demo.grid and alt.fixed["target_ce"] == demo.fixed["target_ce"]
    # [report] options change no run: the fingerprint ignores them
    assert StudySpec.from_toml(TINY + "\n[report]\nby = [\"lr\"]\n").fingerprint() == StudySpec.from_toml(TINY).fingerprint()
    # so do execution settings (where and how a run executes), but not hyperparameters
    base = StudySpec.from_toml(TINY).fingerprint()
    moved = TINY.replace("[fixed]\n", "[fixed]\ndevice = \"cpu\"\neval_batch_size = 64\ncompile = false\n")
    assert moved != TINY and StudySpec.from_toml(moved).fingerprint() == base
    assert StudySpec.from_toml(TINY.replace("[fixed]\n", "[fixed]\nweight_decay = 0.1\n")).fingerprint() != base


@pytest.mark.parametrize("edit, match", [
    (lambda t: "foo = 1\n" + t, "unknown top-level key 'foo'"),
    (lambda t: t.replace("depth = 1", "depht = 1"), "unknown setting 'depht'"),
    (lambda t: t.replace('"crate-n"]', '"crate-q"]'), "setting 'variant': 'crate-q'"),
    (lambda t: t.replace('"path-norm"]', '"path-nrom"]'), "measures.names.*'path-nrom'"),
    (lambda t: t.replace("max_images = 200", "mc_sample = 2"), "measures.settings.*mc_sample"),
    (lambda t: t.replace("lr = [0.001, 0.003]", "lr = []"), "grid axis 'lr'"),
    (lambda t: t.replace("epochs = 2", "epochs = 2\nlr = 0.1"), "'lr' is both fixed and a grid axis"),
    (lambda t: t.replace("heads = 2", "heads = 0"), "grid point.*heads must be a positive integer"),
    (lambda t: t.replace('dataset = "digits"', 'dataset = "mnist"'), "key 'dataset'"),
    (lambda t: t.replace("[grid]", "[grid"), "not valid TOML"),
    (lambda t: t + "\n[report]\nby = [\"width\"]\n", "report.by.*'width'"),
    (lambda t: t + "\n[report]\ngroup = [\"dim\"]\n", "unknown key 'report.group'"),
    (lambda t: t + "\n[report]\ninclude_not_converged = \"yes\"\n", "include_not_converged"),
    (lambda t: t.replace("[measures.settings]", "[measures.settings]\nlayernorm = \"post\""), "layernorm"),
])
def test_invalid_specs_name_the_key(edit, match):
    with pytest.raises(SpecError, match=match):
        StudySpec.from_toml(edit(TINY))


# -- running, resuming, refusing -------------------------------------------------------------
def test_study_runs_every_point_once(reference, tiny_spec, tmp_path):
    assert len(reference) == 4
    assert set(reference["status"]) <= {"done", "not-converged"}
    assert reference["measure.srr"].notna().all() and reference["measure.path-norm"].notna().all()
    assert (reference["gen.gap_ce"] == reference["gen.test_ce"] - reference["gen.train_ce"]).all()
    assert list(reference["hp.variant"]) == ["crate-c", "crate-c", "crate-n", "crate-n"]
    assert set(reference["hp.lr"]) == {0.001, 0.003}
    # running again trains nothing
    study = tmp_path / "s"
    run_study(tiny_spec, study, progress=False)
    before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in (study / "runs").iterdir()}
    again = run_study(tiny_spec, study, progress=False)
    after = {p.name: (p / "summary.json").stat().st_mtime_ns for p in (study / "runs").iterdir()}
    assert before == after and (again["attempts"] == 1).all()
    pd.testing.assert_frame_equal(_values(again), _values(reference))


def test_spec_change_refused_and_extend(tiny_spec, tmp_path):
    study = tmp_path / "s"
    run_study(tiny_spec, study, progress=False)
    changed = tmp_path / "changed.toml"
    changed.write_text(TINY.replace("epochs = 2", "epochs = 3"))
    with pytest.raises(SpecError, match="different spec.*fixed"):
        run_study(changed, study, progress=False)
    bigger = tmp_path / "bigger.toml"
    bigger.write_text(TINY.replace("lr = [0.001, 0.003]", "lr = [0.001, 0.003, 0.002]"))
    with pytest.raises(SpecError, match="--extend"):
        run_study(bigger, study, progress=False)
    table = run_study(bigger, study, extend=True, progress=False)
    assert len(table) == 6 and set(table["hp.lr"]) == {0.001, 0.002, 0.003}
    with StudyStore(study) as store:
        assert store.counts().get("pending", 0) == 0
    smaller = tmp_path / "smaller.toml"
    smaller.write_text(TINY.replace("lr = [0.001, 0.003]", "lr = [0.001]"))
    with pytest.raises(SpecError, match="drops values of grid axis 'lr'"):
        run_study(smaller, study, extend=True, progress=False)


def test_failing_and_diverging_runs_are_recorded(tmp_path, monkeypatch):
    spec = tmp_path / "spec.toml"
    spec.write_text(TINY.replace("lr = [0.001, 0.003]", "lr = [0.001, 1e12]").replace(
        "target_ce = 0.01", 'target_ce = 0.01\nschedule = "constant"'))
    import srrlab.train as train_mod  # execute_point imports train at call time, so the patch reaches it

    real_train = train_mod.train

    def sometimes_raises(cfg, run_dir, **kw):
        if cfg.model == "crate-n-digits" and cfg.lr == 0.001:
            raise RuntimeError("synthetic failure for the test")
        return real_train(cfg, run_dir, **kw)

    monkeypatch.setattr(train_mod, "train", sometimes_raises)
    table = run_study(spec, tmp_path / "s", progress=False).set_index(["hp.variant", "hp.lr"])
    assert table.loc[("crate-n", 0.001), "status"] == "failed"
    assert "synthetic failure for the test" in table.loc[("crate-n", 0.001), "error"]
    assert table.loc[("crate-c", 1e12), "status"] == "diverged"
    assert pd.isna(table.loc[("crate-c", 1e12), "measure.srr"])
    assert table.loc[("crate-c", 0.001), "status"] in ("done", "not-converged")


def _kill_when(db: Path, proc: subprocess.Popen, finished: int, deadline: float = 120) -> None:
    """SIGKILL `proc` once `finished` rows are final (or right after it starts when finished < 0)."""
    end = time.time() + deadline
    while time.time() < end and proc.poll() is None:
        if db.exists():
            try:
                con = sqlite3.connect(db, timeout=1)
                done = con.execute("SELECT COUNT(*) FROM runs WHERE status NOT IN ('pending', 'running')").fetchone()[0]
                running = con.execute("SELECT COUNT(*) FROM runs WHERE status = 'running'").fetchone()[0]
                con.close()
            except sqlite3.Error:
                done = running = -1
            if done >= finished and running:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_at_several_moments_then_resume(reference, tiny_spec, tmp_path):
    study = tmp_path / "s"
    cmd = [sys.executable, "-m", "srrlab.cli", "study", "run", str(tiny_spec), "--dir", str(study), "--quiet"]
    for finished in (0, 1, 3):  # during the first run, during the second, during the last
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _kill_when(study / "study.sqlite", proc, finished)
    with StudyStore(study) as store:
        assert sum(store.counts().values()) == 4
    assert cli(["study", "run", str(tiny_spec), "--dir", str(study), "--quiet"]) == 0
    table = StudyStore(study).table()
    pd.testing.assert_frame_equal(_values(table), _values(reference))
    # no stray files: one folder per grid point
    assert sorted(p.name for p in (study / "runs").iterdir()) == sorted(table["id"])


# -- Dask ----------------------------------------------------------------------------------
def _close_enough(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # worker processes use a different torch thread count: equal up to float reassociation
    # (absolute slack too: gaps are differences of nearly equal losses, ~1e-4 here)
    a, b = _values(a), _values(b)
    assert list(a["status"]) == list(b["status"])
    num = [c for c in a.columns if c not in ("id", "status")]
    pd.testing.assert_frame_equal(a[num], b[num], rtol=1e-3, atol=1e-5, check_dtype=False)


def test_execution_settings_change_continues_the_study(tmp_path):
    """A spec that differs only in execution settings continues the study (nothing retrained) and
    its settings are the ones stored from then on."""
    from srrlab.study import StudyStore

    first = run_study(StudySpec.from_toml(TINY), tmp_path / "s", progress=False)
    moved = TINY.replace("[fixed]\n", "[fixed]\neval_batch_size = 64\n")
    again = run_study(StudySpec.from_toml(moved), tmp_path / "s", progress=False)
    pd.testing.assert_frame_equal(first, again)  # same runs, same numbers: nothing was retrained
    with StudyStore(tmp_path / "s") as store:
        assert store.spec().fixed["eval_batch_size"] == 64


def test_dask_local_cluster_two_workers(reference, tiny_spec, tmp_path):
    table = run_study(tiny_spec, tmp_path / "s", workers=2, progress=False)
    _close_enough(table, reference)


def _worker_environ() -> dict:
    import os

    return {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}


def test_local_cluster_workers_keep_glibc_malloc_defaults():
    """Dask's MALLOC_TRIM_THRESHOLD_ would pin glibc's mmap threshold (half the CPU in page faults);
    the workers must not inherit it, and Dask's one-thread limits must stay."""
    from dask.distributed import Client

    from srrlab.study.runner import _local_cluster

    import os

    before = dict(os.environ)
    with _local_cluster(1) as cluster, Client(cluster) as client:
        assert dict(os.environ) == before  # this process (and later subprocesses) keep their thread defaults
        (env,) = client.run(_worker_environ).values()
    assert env == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dask_external_scheduler_and_worker(reference, tiny_spec, tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    bindir = Path(sys.executable).parent
    sched = subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([str(bindir / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard",
                               "--host", "127.0.0.1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        table = run_study(tiny_spec, tmp_path / "s", scheduler=address, threads=1, progress=False)
        _close_enough(table, reference)
    finally:
        for p in (worker, sched):
            p.terminate()
        for p in (worker, sched):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_workers_and_scheduler_exclusive(tiny_spec, tmp_path):
    with pytest.raises(ValueError, match="either --workers"):
        run_study(tiny_spec, tmp_path / "s", workers=2, scheduler="tcp://127.0.0.1:1", progress=False)


# -- report --------------------------------------------------------------------------------
def test_report_of_a_tiny_study(reference, tiny_spec, tmp_path, capsys):
    study = tmp_path / "s"
    assert cli(["study", "run", str(tiny_spec), "--dir", str(study), "--quiet"]) == 0
    capsys.readouterr()
    # two epochs reach no target: by default no run enters a table; the option brings them in
    assert cli(["study", "report", str(study)]) == 0
    out = capsys.readouterr().out
    assert "n = 0 converged models: fewer than 2 runs" in out and "report.md" in out
    assert cli(["study", "report", str(study), "--include-not-converged", "--permutations", "500",
                "--bootstrap", "200"]) == 0
    out = capsys.readouterr().out
    assert "report.md" in out and "srr" in out and "n = 4 models (not-converged included)" in out
    for name in ("report.md", "runs.parquet", "runs.csv", "correlation.csv", "fig_srr_vs_gap.png",
                 "fig_measures_grid.png", "fig_summary.png"):
        assert (study / name).exists(), name
    table = pd.read_parquet(study / "runs.parquet")
    assert (table["gen.protocol"] == "layernorm=pre sparsity=count rate=gamma1").all()
    assert table["gen.protocol_train_acc"].between(0, 1).all()
    corr = pd.read_csv(study / "correlation.csv").set_index("measure")
    expected = correlation_table(table[table["status"].isin(["done", "not-converged"])],
                                 measures=["srr", "l2-dist", "log-prod-of-spec", "path-norm"],
                                 axes=["hp.variant", "hp.lr"], gap="gen.gap_ce", permutations=500, bootstrap=200)
    assert list(corr.index) == list(expected.index)
    for col in ("tau", "Psi", "psi.variant", "psi.lr", "tau_p", "tau_lo", "tau_hi", "Psi_p"):
        assert corr[col].to_numpy() == pytest.approx(expected[col].to_numpy(), nan_ok=True)
    text = (study / "report.md").read_text()
    assert "SRR" in text and "Kendall" in text and "layernorm=pre sparsity=count rate=gamma1" in text
    # strata on the command line: one table per lr value, then the pooled one
    assert cli(["study", "report", str(study), "--include-not-converged", "--by", "lr", "--permutations", "100",
                "--bootstrap", "50"]) == 0
    out = capsys.readouterr().out
    assert "lr = 0.001, n = 2" in out and "lr = 0.003, n = 2" in out and "POOLED" in out
    assert cli(["study", "report", str(tmp_path / "nothing")]) == 2
    assert "no study" in capsys.readouterr().err


# -- grouped training (srrlab.train.group) ---------------------------------------------------------
def test_plan_tasks_groups_what_can_share_a_program(tiny_spec):
    from srrlab.study.runner import plan_tasks

    spec = load_spec(tiny_spec)
    points = [(str(i), p, f"runs/{i}") for i, p in enumerate(spec.points())]
    on = plan_tasks(spec, points, "on")
    # variant x lr: the two learning rates of each variant share one program
    assert [[t[1] for t in task] for task in on] == [
        [{"variant": "crate-c", "lr": 0.001}, {"variant": "crate-c", "lr": 0.003}],
        [{"variant": "crate-n", "lr": 0.001}, {"variant": "crate-n", "lr": 0.003}]]
    assert plan_tasks(spec, points, "off") == [[t] for t in points]
    assert plan_tasks(spec, points, "auto") == [[t] for t in points]  # a CPU: grouping does not pay here
    assert [len(t) for t in plan_tasks(spec, points, "on", max_group=1)] == [1, 1, 1, 1]
    dropout = StudySpec.from_toml(TINY.replace("depth = 1", "depth = 1\ndropout = 0.1"))
    assert all(len(t) == 1 for t in plan_tasks(dropout, points, "on"))  # dropout trains alone
    with pytest.raises(SpecError, match="key 'group' must be one of 'auto', 'on', 'off', got 'yes'"):
        StudySpec.from_toml('group = "yes"\n' + TINY)
    assert StudySpec.from_toml('group = "off"\n' + TINY).fingerprint() == spec.fingerprint()


@pytest.mark.parametrize("workers", [0, 2])
def test_a_grouped_study_equals_the_ungrouped_one(reference, tiny_spec, tmp_path, workers):
    table = run_study(tiny_spec, tmp_path / "g", group="on", workers=workers, progress=False)
    _close_enough(table, reference)
    runs = sorted((tmp_path / "g" / "runs").iterdir())
    assert len(runs) == 4 and all((r / "weights_final.safetensors").exists() for r in runs)


def test_no_group_flag(tiny_spec, tmp_path, capsys):
    assert cli(["study", "run", str(tiny_spec), "--dir", str(tmp_path / "s"), "--no-group", "--quiet"]) == 0
    assert "4 grid points; not-converged 4" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli(["study", "run", str(tiny_spec), "--dir", str(tmp_path / "s"), "--group", "maybe"])
    assert exit_.value.code == 2 and "invalid choice: 'maybe'" in capsys.readouterr().err


def test_sigkill_a_grouped_study_then_resume(tiny_spec, tmp_path):
    reference = run_study(tiny_spec, tmp_path / "ref", group="on", progress=False)
    study = tmp_path / "s"
    cmd = [sys.executable, "-m", "srrlab.cli", "study", "run", str(tiny_spec), "--dir", str(study), "--group", "on",
           "--quiet"]
    for finished in (0, 2):  # during the first group, during the second
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        _kill_when(study / "study.sqlite", proc, finished)
    assert cli(["study", "run", str(tiny_spec), "--dir", str(study), "--group", "on", "--quiet"]) == 0
    table = StudyStore(study).table()
    pd.testing.assert_frame_equal(_values(table), _values(reference))  # bit-identical, as single runs resume
    assert sorted(p.name for p in (study / "runs").iterdir()) == sorted(table["id"])
