"""measure_runs checks every input before computing anything, with one ValueError that names the bad
argument or folder and says how to fix it."""
from __future__ import annotations

import json
import shutil

import pytest

from srrlab.measures import MeasureSettings, compute, measure_runs
from srrlab.train import TrainConfig, train


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (one epoch of a one-layer model)."""
    run = tmp_path_factory.mktemp("measure-inputs") / "run"
    train(TrainConfig(model="crate-t-digits", model_options={"depth": 1, "dim": 16, "heads": 2}, epochs=1,
                      target_ce=None), run, quiet=True)
    return run


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if any run is measured: the checks must come first."""
    def measured(*args, **kwargs):
        raise AssertionError("measure_run was called before the inputs were checked")

    monkeypatch.setattr(compute, "measure_run", measured)


def _copy(finished, tmp_path, name):
    return shutil.copytree(finished, tmp_path / name)


def test_good_inputs_are_measured(finished):
    table = measure_runs([finished], "srr,params", MeasureSettings(max_images=200, srr_images=100))
    assert len(table) == 1 and {"measure.srr", "measure.params"} <= set(table.columns)
    assert table.loc[0, "run"] == str(finished)


def test_bad_folders_are_all_named_before_any_work(finished, tmp_path, no_work):
    empty = tmp_path / "empty"
    empty.mkdir()
    running = _copy(finished, tmp_path, "running")
    (running / "summary.json").unlink()  # before the first epoch ended
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as err:
        measure_runs([finished, missing, empty, running, ...], "srr")
    text = str(err.value)
    assert text.startswith("4 of the 5 run folders cannot be measured: (1) ") and "\n" not in text
    assert f"{missing} is not a run folder" in text and "does not exist" in text
    assert f"{empty} is not a run folder (no config.json)" in text and f"srrlab train --out {empty}" in text
    assert f"{running} has not finished" in text and f"srrlab train --resume {running}" in text
    assert "run_dirs[4] is Ellipsis" in text and 'e.g. ["runs/t", "runs/n"]' in text
    assert "(4) " in text and "(5) " not in text and str(finished) not in text  # the good folder is not blamed
    # one bad folder: its sentence alone
    with pytest.raises(ValueError, match=r"^\S*nowhere is not a run folder: it does not exist"):
        measure_runs([missing])


def test_damaged_and_incomplete_folders(finished, tmp_path, no_work):
    damaged = _copy(finished, tmp_path, "damaged")
    (damaged / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON .* the file is damaged"):
        measure_runs([damaged])
    other = _copy(finished, tmp_path, "other-data")
    config = json.loads((other / "config.json").read_text())
    config["train"]["dataset"] = "mnist"
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"names the dataset 'mnist', not one of digits"):
        measure_runs([other])
    no_init = _copy(finished, tmp_path, "no-init")
    (no_init / "weights_init.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no-init lacks weights_init.safetensors: the folder is incomplete"):
        measure_runs([no_init])


def test_run_dirs_must_be_a_nonempty_list(finished, no_work):
    with pytest.raises(ValueError, match=r"got the single path .*; pass \["):
        measure_runs(str(finished))
    with pytest.raises(ValueError, match=r"got the single path"):
        measure_runs(finished)  # a Path too: not iterated as characters
    with pytest.raises(ValueError, match="run_dirs is empty"):
        measure_runs([])
    with pytest.raises(ValueError, match="run_dirs must be a list of run folders, got int"):
        measure_runs(3)


def test_measures_and_settings_are_checked_first(finished, no_work):
    with pytest.raises(ValueError, match=r"unknown measures 'nope', 'srr2'; available: srr, "):
        measure_runs([finished], ["srr", "nope", "srr2"])
    with pytest.raises(ValueError, match="unknown measure 'x'"):
        measure_runs([finished], "srr, x")
    with pytest.raises(ValueError, match="no measures given"):
        measure_runs([finished], [])
    with pytest.raises(ValueError, match="measures must be None"):
        measure_runs([finished], [1, 2])
    with pytest.raises(ValueError, match=r"settings must be a MeasureSettings or None, got dict; .*from_dict"):
        measure_runs([finished], "srr", {"max_images": 100})
    settings = MeasureSettings()
    settings.max_images = 0  # assigned after construction: checked again
    with pytest.raises(ValueError, match=r"^settings: max_images must be a positive integer"):
        measure_runs([finished], "srr", settings)
    settings = MeasureSettings()
    settings.rate = "gamma2"
    with pytest.raises(ValueError, match=r"^settings: .*gamma2"):
        measure_runs([finished], "srr", settings)
    # a bad measure name is reported even when a folder is bad too (arguments first, then folders)
    with pytest.raises(ValueError, match="unknown measure 'nope'"):
        measure_runs(["nowhere"], "nope")
