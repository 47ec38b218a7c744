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


def test_read_tidy_table_reads_back_what_to_csv_wrote(tmp_path):
    """The round trip of a tidy table through DataFrame.to_csv(index=False), as the reports write it:
    bit-identical floats, the dtypes of the original, None/NaN, text with commas, quotes and new lines."""
    import math

    import pandas as pd

    from srrlab.runs import read_tidy_table

    hp = [{"model": "crate-t-digits", "lr": 0.1, "dim": 64, "augment": True, "arm": "CE", "srr_layers": "2",
           "target_ce": None, "optimizer": "adam"},
          {"model": "crate-digits", "lr": 1e-300, "dim": 128, "arm": "CE+SRR, \"last\"", "srr_layers": "4",
           "target_ce": 0.01, "srr_l1": 5},
          {"model": "crate-c-digits", "lr": 1 / 3, "dim": 128, "augment": False, "arm": "B", "srr_layers": "4",
           "target_ce": None}]
    summaries = [{"status": "converged", "epochs": 3, "train_ce": 1 / 3, "test_acc": -0.0}, None,
                 {"status": "not-converged", "epochs": 7, "train_ce": math.nan, "test_acc": 5e-324}]
    measures = [{"srr": math.nan, "l2": 2.5}, {"srr": 1.5, "l2": -0.0}, None]
    rows = [tidy_row(h, s, m, measure_names=["srr", "l2", "path-norm"], id=i, status=st, error=e, warnings=w,
                     attempts=a)
            for h, s, m, i, st, e, w, a in zip(hp, summaries, measures, ["0123456789ab", "1e4500000000", "abc"],
                                                  ["done", "failed", "not-converged"],
                                                  [None, "Error: \"x\", y\n  line 2", None],
                                                  ["a, b", None, "σ ≤ 0"], [1, 2, 0])]
    table = pd.DataFrame(rows)
    assert {str(table[c].dtype) for c in ("hp.lr", "hp.dim", "hp.augment", "hp.srr_l1", "measure.path-norm")} == \
        {"float64", "int64", "object"}
    path = tmp_path / "runs.csv"
    table.to_csv(path, index=False)
    back = read_tidy_table(path, text=["hp.srr_layers"])
    pd.testing.assert_frame_equal(back, table, check_exact=True)
    assert back.to_csv(index=False) == path.read_text()
    assert back["id"].tolist() == ["0123456789ab", "1e4500000000", "abc"]  # ids are text
    assert math.copysign(1.0, back.loc[0, "gen.test_acc"]) == -1.0 and back.loc[2, "gen.test_acc"] == 5e-324
    # a text setting whose every value reads as a number comes back as text only when named
    assert read_tidy_table(path)["hp.srr_layers"].tolist() == [2, 4, 4]
    (tmp_path / "empty.csv").write_text("")
    assert read_tidy_table(tmp_path / "empty.csv").empty
