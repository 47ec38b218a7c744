"""The run folder, the status words and the tidy row: one owner each (srrlab.runs)."""
from __future__ import annotations

import pytest
import torch

from srrlab.io import read_json
from srrlab.measures import measure_run
from srrlab.runs import (CORRELATED_STATUSES, FINAL_STATUSES, GEN_KEYS, MEASURABLE_STATUSES, RECORD_KEYS,
                         RUN_STATUSES, STATUS_OF_RUN, STUDY_STATUSES, RunFolder, run_hparams, tidy_row, variant_of)
from srrlab.train import TrainConfig, load_run, resume, train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "r"
    cfg = TrainConfig(model="crate-n-digits", epochs=2, target_ce=None, batch_size=128,
                      model_options={"depth": 1, "dim": 16, "heads": 2})
    seen: list[int] = []
    result = train(cfg, folder, quiet=True, on_epoch=seen.append)
    assert seen == [1, 2]  # the hook sees every trained epoch (epoch 0 is the initialisation)
    return folder, result


def test_status_vocabulary_is_consistent():
    assert set(STATUS_OF_RUN) == set(RUN_STATUSES) - {"running"}
    assert set(STATUS_OF_RUN.values()) <= set(FINAL_STATUSES) <= set(STUDY_STATUSES)
    assert set(CORRELATED_STATUSES) <= set(MEASURABLE_STATUSES) <= set(FINAL_STATUSES)
    assert "failed" in FINAL_STATUSES and "failed" not in MEASURABLE_STATUSES


def test_train_returns_what_it_wrote(run):
    folder, result = run
    rf = RunFolder(folder)
    assert result.summary == read_json(folder / RunFolder.SUMMARY) == rf.summary()
    assert result.summary["status"] == result.status == "completed" and result.summary["epochs"] == 2
    assert rf.metrics() == result.metrics and [m["epoch"] for m in rf.metrics()] == [0, 1, 2]
    assert rf.has_checkpoint() and rf.has_weights("init") and rf.has_weights("final")
    assert rf.config()["train"]["model"] == "crate-n-digits" and rf.label() == "crate-n-digits · seed 0"
    # a finished run resumed is returned as is, with the same summary
    assert resume(folder, quiet=True).summary == result.summary


def test_load_model_is_the_trained_model(run):
    folder, result = run
    final, init = RunFolder(folder).load_model("final"), RunFolder(folder).load_model("init")
    for (name, a), b in zip(result.model.state_dict().items(), final.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), init.state_dict().values()))
    assert all(torch.equal(a, b) for a, b in zip(load_run(folder).state_dict().values(), final.state_dict().values()))
    with pytest.raises(ValueError, match="which must be 'final' or 'init', got 'best'"):
        RunFolder(folder).load_model("best")


def test_not_a_run_folder_is_named(tmp_path):
    rf = RunFolder(tmp_path / "nothing")
    assert not rf.is_run() and rf.summary() is None and rf.metrics() == [] and rf.layerwise() == []
    with pytest.raises(FileNotFoundError, match=r"nothing is not a run folder: it does not exist; check the path"):
        rf.config()
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match=r"nothing is not a run folder \(no config.json\); start it with "
                                                r"`srrlab train --out .*nothing`"):
        rf.config()
    assert rf.label() == "nothing"  # the label falls back to the folder name


def test_records_round_trip(tmp_path):
    rf = RunFolder(tmp_path / "x")
    rf.write_config({"model": "crate-t-digits", "seed": 3}, {"variant": "crate-t"}, {"srrlab": "0"})
    rf.write_summary({"status": "running", "epochs": 0})
    rf.write_metrics([{"epoch": 0, "train_ce": 2.3}, {"epoch": 1, "train_ce": 1.1}])
    rf.write_layerwise([{"epoch": 0, "layer": 1, "mu": 4.0}])
    assert rf.config() == {"train": {"model": "crate-t-digits", "seed": 3}, "model": {"variant": "crate-t"},
                           "versions": {"srrlab": "0"}}
    assert rf.summary() == {"status": "running", "epochs": 0}
    assert [m["train_ce"] for m in rf.metrics()] == [2.3, 1.1] and rf.layerwise() == [{"epoch": 0, "layer": 1, "mu": 4.0}]
    assert rf.label() == "crate-t-digits · seed 3" and not rf.has_checkpoint()


def test_tidy_row_names_every_column_once():
    row = tidy_row({"model": "crate-c-digits", "lr": 0.1, "device": "cpu"}, {"status": "converged", "gap_ce": 0.5, "extra": 1},
                   {"b": 2.0, "a": 1.0}, measure_names=["a", "b", "c"], run="r1")
    assert list(row) == (["run", "hp.model", "hp.lr", "hp.variant"] + [f"gen.{k}" for k in GEN_KEYS + RECORD_KEYS]
                         + ["measure.a", "measure.b", "measure.c"])
    assert row["hp.variant"] == "crate-c" and row["gen.status"] == "converged" and row["gen.gap_ce"] == 0.5
    assert row["gen.train_ce"] is None and "gen.extra" not in row
    assert (row["measure.a"], row["measure.b"], row["measure.c"]) == (1.0, 2.0, None)
    assert list(tidy_row({}, None, {"z": 1, "y": 2}))[-2:] == ["measure.z", "measure.y"]
    assert variant_of("crate-identity-tiny") == "crate-identity" and variant_of("crate-digits") == "crate"


def test_measure_run_row_is_the_tidy_row(run):
    folder, result = run
    row = measure_run(folder, ["l2", "srr"])
    config = RunFolder(folder).config()
    assert run_hparams(config) == {**{k: config["train"][k] for k in ("model", "dataset", "lr", "batch_size",
                                                                     "weight_decay", "optimizer", "epochs", "seed",
                                                                     "augment")}, **config["train"]["model_options"]}
    expected = tidy_row(run_hparams(config), result.summary, {}, measure_names=["l2", "srr"], run=str(folder))
    assert list(row) == list(expected)
    gen = [k for k in row if k.startswith("gen.") and k[4:] in GEN_KEYS]
    assert all(row[k] == expected[k] for k in gen)  # status, gaps, accuracies, wall time from the summary
    assert row["hp.variant"] == config["model"]["variant"] == "crate-n"
    assert row["gen.protocol"] == "layernorm=pre sparsity=count rate=gamma1" and row["gen.protocol_images"] > 0
