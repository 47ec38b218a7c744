"""Export and import of a study (srrlab.study.transfer): what the export holds, an exact rebuild,
damaged files named, nothing half-written, archives, re-measuring an imported run, the CLI."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from srrlab.study import transfer
from srrlab.cli import main as cli
from srrlab.io import read_json, read_jsonl
from srrlab.runs import RunFolder, read_tidy_table
from srrlab.study import StudySpec, StudyStore, export_study, import_study, read_results, run_study, verify_export

TOY = """
name = "transfer"
dataset = "synthetic"
data_options = { num_train = 200, num_test = 100 }

[fixed]
variant = "crate-t"
size = "digits"
depth = 1
dim = 16
heads = 2
epochs = 1
batch_size = 100
target_ce = "none"
srr_every = 1
srr_images = 20

[grid]
seed = [0, 1]

[measures]
names = ["l2", "srr"]

[measures.settings]
srr_images = 50
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Two trained points and a third, added with --extend, still pending."""
    spec = tmp_path_factory.mktemp("spec") / "toy.toml"
    spec.write_text(TOY)
    folder = tmp_path_factory.mktemp("study") / "s"
    run_study(spec, folder, progress=False)
    with StudyStore(folder) as store:
        store.attach(StudySpec.from_toml(TOY.replace("seed = [0, 1]", "seed = [0, 1, 2]")), extend=True)
    return folder


@pytest.fixture(scope="module")
def exported(study, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "toy-export"
    export_study(study, out)
    return out


def _done_ids(table: pd.DataFrame) -> list[str]:
    return list(table.loc[table["status"] == "done", "id"])


def test_the_export_holds_what_its_manifest_lists(study, exported):
    manifest = read_json(exported / "manifest.json")
    files = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert files == {f["path"] for f in manifest["files"]} | {"manifest.json"}
    for f in manifest["files"]:
        data = (exported / f["path"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"])
    assert {"srrlab", "torch", "python", "created"} <= set(manifest)
    assert manifest["points"] == 3 and manifest["statuses"] == {"done": 2, "pending": 1}
    with StudyStore(study) as store:
        ids = _done_ids(store.table())
        assert (exported / "spec.toml").read_text() == store.meta()["spec"]
        assert read_jsonl(exported / "points.jsonl") == store.rows()
        assert read_json(exported / "meta.json") == {k: v for k, v in store.meta().items() if k != "spec"}
    for run_id in ids:  # every result file, byte for byte, and no checkpoint
        names = sorted(p.name for p in (exported / "runs" / run_id).iterdir())
        assert names == sorted(RunFolder.RESULT_FILES) and "layerwise.jsonl" in names
        for name in names:
            assert (exported / "runs" / run_id / name).read_bytes() == (study / "runs" / run_id / name).read_bytes()


def test_import_rebuilds_the_study_exactly(study, exported, tmp_path):
    target = import_study(exported, tmp_path / "copy")
    _, csv_table = read_results(exported)
    with StudyStore(study) as original, StudyStore(target) as copy:
        pd.testing.assert_frame_equal(copy.table(), csv_table, check_exact=True)
        pd.testing.assert_frame_equal(copy.table(), original.table(), check_exact=True)
        assert copy.rows() == original.rows() and copy.meta() == original.meta()
        assert copy.spec().source == original.spec().source
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary folder left
    assert not (target / "runs" / _done_ids(csv_table)[0] / "checkpoint").exists()
    with pytest.raises(FileExistsError, match="already holds a study; import into a new folder"):
        import_study(exported, target)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "note.txt").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        import_study(exported, tmp_path / "busy")
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    import_study(exported, tmp_path / "empty")
    assert (tmp_path / "empty" / "study.sqlite").is_file()


def test_an_imported_run_measures_as_the_original(study, exported, tmp_path, capsys):
    target = import_study(exported, tmp_path / "copy")
    table = StudyStore(target).table()
    run_id = _done_ids(table)[0]
    for folder, name in ((study, "original.csv"), (target, "imported.csv")):
        assert cli(["measure", str(folder / "runs" / run_id), "--measures", "l2,srr", "--set", "srr_images=50",
                    "--out", str(tmp_path / name), "--quiet"]) == 0
    capsys.readouterr()
    original, imported = (pd.read_csv(tmp_path / n) for n in ("original.csv", "imported.csv"))
    cols = ["measure.l2", "measure.srr"]
    pd.testing.assert_frame_equal(imported[cols], original[cols], check_exact=True)
    stored = table.loc[table["id"] == run_id, cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(imported[cols], stored, check_exact=True)  # the values the study stored


def test_damaged_and_missing_files_are_named_and_nothing_is_written(exported, tmp_path):
    ids = sorted(p.name for p in (exported / "runs").iterdir())
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    weights = copy / "runs" / ids[0] / "weights_final.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one byte
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"1 missing or damaged file\(s\): runs/{ids[0]}/weights_final.safetensors: "
                                         r"damaged .*nothing was imported"):
        import_study(copy, tmp_path / "s")
    (copy / "runs" / ids[1] / "weights_init.safetensors").unlink()
    with pytest.raises(ValueError) as err:
        import_study(copy, tmp_path / "s")
    message = str(err.value)
    assert f"runs/{ids[0]}/weights_final.safetensors: damaged" in message
    assert f"runs/{ids[1]}/weights_init.safetensors: missing" in message and "\n" not in message
    with pytest.raises(ValueError, match="2 missing or damaged"):
        verify_export(copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # nothing written, no temporary folder


def test_a_killed_import_or_export_leaves_nothing(study, exported, tmp_path, monkeypatch):
    copy = transfer._copy
    calls = []

    def killed(source, target):
        calls.append(source)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return copy(source, target)

    monkeypatch.setattr(transfer, "_copy", killed)
    with pytest.raises(KeyboardInterrupt):
        import_study(exported, tmp_path / "s")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        export_study(study, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_archive_round_trip(study, tmp_path):
    archive = tmp_path / "toy.tar.gz"
    manifest = export_study(study, archive)
    assert verify_export(archive) == manifest
    target = import_study(archive, tmp_path / "copy")
    with StudyStore(study) as original, StudyStore(target) as copy:
        pd.testing.assert_frame_equal(copy.table(), original.table(), check_exact=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "toy.tar.gz"]
    with pytest.raises(FileExistsError, match="it exists"):
        export_study(study, archive)


def test_runs_csv_reads_back_as_the_table(study, exported):
    with StudyStore(study) as store:
        table = store.table()
    pd.testing.assert_frame_equal(read_tidy_table(exported / "runs.csv"), table, check_exact=True)
    assert read_results(exported)[1].to_csv(index=False) == (exported / "runs.csv").read_text()


def test_cli(study, tmp_path, capsys):
    out = tmp_path / "e"
    assert cli(["study", "export", str(study), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 grid points (done 2, pending 1), 2 run folders" in printed and f"srrlab study import {out} DIR" in printed
    assert cli(["study", "verify", str(out)]) == 0
    assert "matches its size and sha256" in capsys.readouterr().out
    assert cli(["study", "import", str(out), str(tmp_path / "s")]) == 0
    assert "3 grid points (done 2, pending 1)" in capsys.readouterr().out
    assert cli(["study", "import", str(out), str(tmp_path / "s")]) == 2
    assert "already holds a study" in capsys.readouterr().err
    assert cli(["study", "export", str(study), str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli(["study", "export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "holds no study" in capsys.readouterr().err
    (out / "spec.toml").write_text("changed")
    assert cli(["study", "verify", str(out)]) == 2
    assert "spec.toml: damaged" in capsys.readouterr().err
    assert cli(["study", "import", str(tmp_path / "s"), str(tmp_path / "t")]) == 2
    assert "is not a study export (no manifest.json)" in capsys.readouterr().err


def test_an_imported_study_is_reported(exported, tmp_path):
    from srrlab.study import report_study

    target = import_study(exported, tmp_path / "copy")
    report = report_study(target, permutations=20, bootstrap=20)
    assert report.path.is_file() and report.path.parent == target


def test_an_export_without_weights_imports_reports_and_resumes(study, tmp_path, capsys):
    """`--no-weights`: results and progress alone; the imported study finishes its pending and
    interrupted points and keeps its finished ones exactly; what needs weights says so."""
    from srrlab.study import reuse_runs

    out = tmp_path / "light.tar.gz"
    assert cli(["study", "export", str(study), str(out), "--no-weights"]) == 0
    assert "(without weights)" in capsys.readouterr().out
    manifest = verify_export(out)
    assert manifest["weights"] is False and manifest["statuses"] == {"done": 2, "pending": 1}
    assert not [f for f in manifest["files"] if f["path"].endswith(".safetensors")]
    assert {f["path"].rsplit("/", 1)[-1] for f in manifest["files"] if "/" in f["path"]} == {
        "config.json", "summary.json", "metrics.jsonl", "layerwise.jsonl"}
    target = import_study(out, tmp_path / "copy")
    with StudyStore(study) as original, StudyStore(target) as copy:
        pd.testing.assert_frame_equal(copy.table(), original.table(), check_exact=True)
        done = _done_ids(copy.table())
        [(pending, _, _)] = copy.unfinished()
        copy.mark_running(pending)  # as a study killed while this point trained, before its first checkpoint
        before = {r["id"]: r for r in copy.rows() if r["id"] in done}
    (target / "runs" / pending).mkdir(parents=True)
    (target / "runs" / pending / "metrics.jsonl").write_text('{"epoch": 0, "half": "written"')

    with pytest.raises(FileNotFoundError, match="exported with --no-weights"):
        RunFolder(target / "runs" / done[0]).load_model()
    fresh = StudyStore(tmp_path / "fresh")
    fresh.attach(StudySpec.from_toml(TOY))
    assert reuse_runs(fresh, [target])["reused"][0]["rows"] == 0  # nothing without weights is adopted
    fresh.close()

    spec = tmp_path / "extended.toml"
    spec.write_text(TOY.replace("seed = [0, 1]", "seed = [0, 1, 2]"))
    run_study(spec, target, progress=False)
    with StudyStore(target) as copy:
        table = copy.table()
        assert sorted(table["status"]) == ["done"] * 3
        assert {r["id"]: r for r in copy.rows() if r["id"] in done} == before  # finished points untouched
    assert RunFolder(target / "runs" / pending).has_weights("final")
    assert len(read_jsonl(target / "runs" / pending / "metrics.jsonl")) >= 1  # restarted cleanly
