"""Committed results of regularisation experiments (docs/results/<name>/: runs.csv, spec.toml and the
report's tables) re-derive byte for byte from runs.csv + spec.toml, and `srrlab regularize report`
works on such a folder without a database. With no such folder committed yet, a synthetic one is
built and checked the same way."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from srrlab.report.regularize import REPORT_TABLES
from srrlab.study import (SpecError, StudySpec, StudyStore, arm_axis, read_results, regularize_tables,
                          report_regularize)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"

SPEC = """
name = "reg-synthetic"
dataset = "digits"

[fixed]
size = "digits"
depth = 2
dim = 16
heads = 2
epochs = 2
batch_size = 256
lr = 0.003
target_ce = "none"

[grid]
variant = ["crate-t", "crate"]
arm = [
    { name = "CE", srr_reg = 0.0 },
    { name = "CE+SRR (layer 2)", srr_reg = 0.001, srr_layers = "2" },
    { name = "CE+SRR (layer 1, l1)", srr_reg = 0.001, srr_layers = "1", srr_l1 = 0.0001, augment = true },
]
seed = [0, 1, 2]

[measures]
names = ["srr", "l2"]
"""


def _regularisation_results() -> list[str]:
    """The folders under docs/results/ holding runs.csv + spec.toml of a regularisation experiment."""
    names = []
    for folder in sorted(RESULTS.glob("*/")) if RESULTS.is_dir() else []:
        if (folder / "runs.csv").is_file() and (folder / "spec.toml").is_file():
            try:
                arm_axis(StudySpec.from_toml((folder / "spec.toml").read_text(encoding="utf-8"), str(folder)))
            except SpecError:
                continue  # a generalisation study: tests/test_report.py checks those
            names.append(folder.name)
    return names


def _synthetic_study(directory: Path) -> Path:
    """A regularisation study whose rows are recorded without training: every status, NaN and missing
    values, text with commas, quotes and new lines, numeric-looking text settings."""
    rng = np.random.default_rng(0)
    with StudyStore(directory) as store:
        store.attach(StudySpec.from_toml(SPEC))
        for k, (run_id, _, _) in enumerate(store.unfinished()):
            if k == 5:
                continue  # stays pending
            store.mark_running(run_id)
            if k == 7:
                continue  # an interrupted run
            train_acc, test_acc = rng.uniform(0.8, 1.0), rng.uniform(0.7, 0.95)
            summary = {"status": "completed", "epochs": 2, "train_ce": float(rng.uniform(0.01, 0.5)),
                       "test_ce": float(rng.uniform(0.2, 0.9)), "train_acc": train_acc, "test_acc": test_acc,
                       "gap_ce": 0.1 / 3, "gap_err": train_acc - test_acc, "wall_time_s": float(rng.uniform(1, 9)),
                       "protocol": "layernorm=pre sparsity=count rate=gamma1", "measure_network": "trained",
                       "protocol_train_acc": 0.5, "protocol_images": 200}
            measures = {"srr": float(rng.uniform(40, 60)), "l2": math.nan if k == 3 else float(rng.uniform(10, 20))}
            result = {"status": "done", "summary": summary, "measures": measures,
                      "warnings": ["σ search stopped short, at 0.5", 'margin "≤ 0", 3 images'] if k == 2 else None}
            if k == 4:
                result = {"status": "failed", "error": 'RuntimeError: "x", y\nTraceback (most recent call last):\n  ...'}
            elif k == 9:
                result = {"status": "diverged", "summary": {**summary, "train_ce": math.nan, "test_acc": 0.1}}
            elif k == 11:
                result = {**result, "status": "not-converged"}
            store.record(run_id, result)
    return directory


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """A results folder as it is committed: runs.csv, spec.toml and the report's tables, no database."""
    study = _synthetic_study(tmp_path_factory.mktemp("study"))
    report_regularize(study)
    results = tmp_path_factory.mktemp("results")
    with StudyStore(study) as store:
        (results / "spec.toml").write_text(store.meta()["spec"], encoding="utf-8")
        store.table().to_csv(results / "runs.csv", index=False)
    for name in REPORT_TABLES:
        shutil.copyfile(study / name, results / name)
    return results


@pytest.mark.parametrize("name", [*_regularisation_results(), "synthetic"])
def test_committed_tables_rederive_from_runs_csv(name, synthetic):
    folder = synthetic if name == "synthetic" else RESULTS / name
    spec, table = read_results(folder)
    texts = regularize_tables(spec, table)
    committed = [n for n in texts if (folder / n).is_file()]
    assert committed, f"{folder} holds none of the report's tables ({', '.join(texts)}); commit them"
    for n in committed:
        assert (folder / n).read_bytes() == texts[n].encode("utf-8"), \
            f"{folder / n} does not re-derive from {folder / 'runs.csv'}; run `srrlab regularize report {folder}`"


def test_the_synthetic_table_reads_back_exactly(synthetic):
    study = _synthetic_study(synthetic.parent / "again")
    with StudyStore(study) as store:
        table = store.table()
    assert set(table["status"]) == {"done", "failed", "diverged", "not-converged", "pending", "running"}
    _, read = read_results(synthetic)
    pd.testing.assert_frame_equal(read, table, check_exact=True)
    assert read["hp.srr_layers"].dropna().tolist() == (["2"] * 3 + ["1"] * 3) * 2  # text that reads as numbers


def test_report_from_runs_csv_without_a_database(synthetic, tmp_path):
    folder = tmp_path / "r"
    shutil.copytree(synthetic, folder)
    report = report_regularize(folder)
    assert not (folder / "study.sqlite").exists() and (folder / "regularize.md").is_file()
    assert "| Model | digits: CE | digits: CE+SRR (layer 2) | digits: CE+SRR (layer 1, l1) |" in report["path"].read_text()
    for name in REPORT_TABLES:  # the rewritten tables are the committed ones
        assert (folder / name).read_bytes() == (synthetic / name).read_bytes()
    with pytest.raises(FileNotFoundError, match=r"no study.sqlite, nor runs.csv \+ spec.toml"):
        report_regularize(tmp_path / "empty")
