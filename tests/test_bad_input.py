"""Bad input through the real command-line entry point: one table, one contract.

Every row runs ``srrlab.cli.main(argv)`` (what the ``srrlab`` console script calls) in a fresh
folder prepared by the row's setup, and asserts: exit code 2; exactly one line on stderr, starting
``srrlab <command>: error:`` and containing the row's expected fragments (the offending key or file
and the fix); no traceback; nothing written to stdout; and no file created, changed or removed.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from srrlab.cli import main
from srrlab.study import StudySpec
from srrlab.study.store import StudyStore
from srrlab.train import TrainConfig, train

from conftest import train_interrupted
from test_data import _RunsShell, idx, make_raw, write_python


# -- fixtures: a finished run and an interrupted one, trained once --------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(model="crate-t-digits", epochs=2, target_ce=None, batch_size=256, eval_batch_size=500)
    train(cfg, root / "done", quiet=True)
    # interrupted in epoch 3: checkpoints of epochs 1 and 2 are kept
    train_interrupted(TrainConfig(**{**cfg.to_dict(), "epochs": 4}), root / "cut", at_epoch=3, quiet=True)
    return root


def _copy_run(runs: Path, name: str, to: Path) -> Path:
    return Path(shutil.copytree(runs / name, to / name))


def _checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoint").glob("epoch-*"))


def _truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


_SPEC = '''name = "bad"
dataset = "digits"
[fixed]
model = "crate-t-digits"
epochs = 1
[grid]
seed = [0, 1]
'''


def _spec(tmp: Path, text: str = _SPEC, name: str = "spec.toml") -> None:
    (tmp / name).write_text(text)


def _study(tmp: Path) -> None:
    """A study folder holding _SPEC (attached, nothing trained)."""
    _spec(tmp)
    with StudyStore(tmp / "st") as store:
        store.attach(StudySpec.from_toml(_SPEC))


def _evil_cifar(tmp: Path) -> None:
    folder = write_python(tmp / "data", "cifar10", make_raw("cifar10", seed=1))
    (folder / "data_batch_2").write_bytes(pickle.dumps(_RunsShell(f"touch {tmp / 'executed'}"), protocol=2))


def _truncated_cifar_archive(tmp: Path) -> None:
    folder = write_python(tmp / "src", "cifar10", make_raw("cifar10", seed=1))
    (tmp / "data").mkdir()
    with tarfile.open(tmp / "data" / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
    shutil.rmtree(tmp / "src")
    _truncate(tmp / "data" / "cifar-10-python.tar.gz", 3000)


def _bad_idx(tmp: Path) -> None:
    data = tmp / "data"
    data.mkdir()
    images = np.zeros((10, 28, 28), np.uint8)
    labels = np.arange(10, dtype=np.uint8)
    for stem, array in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels),
                        ("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        (data / stem).write_bytes(idx(array))
    (data / "train-images-idx3-ubyte").write_bytes(b"\x12\x34" + idx(images)[2:])


# -- the table: (id, argv, setup, fragments the error line must contain) ----------------------------------------
# argv may name the fixture runs as {done} / {cut} (copied into the test folder first).
CASES = [
    # the command line itself
    ("unknown-command", ["fly"], None, ["invalid choice: 'fly'", "srrlab --help"]),
    ("unknown-flag", ["train", "--lrr", "0.1"], None, ["unrecognized arguments: --lrr", "srrlab train --help"]),
    ("missing-subcommand", ["study"], None, ["STUDY_COMMAND", "srrlab study --help"]),
    # training options: typed from TrainConfig's declarations
    ("lr-word", ["train", "--lr", "fast"], None, ["--lr", "lr must be a finite number, got 'fast'"]),
    ("lr-inf", ["train", "--lr", "inf"], None, ["lr must be a finite number, got 'inf'"]),
    ("lr-nan", ["train", "--lr", "nan"], None, ["lr must be a finite number, got 'nan'"]),
    ("lr-negative", ["train", "--lr", "-0.1"], None, ["lr must be positive, got -0.1"]),
    ("epochs-zero", ["train", "--epochs", "0"], None, ["epochs must be a positive integer, got 0"]),
    ("epochs-float", ["train", "--epochs", "2.5"], None, ["epochs must be an integer, got '2.5'"]),
    ("batch-size-word", ["train", "--batch-size", "big"], None, ["batch_size must be an integer, got 'big'"]),
    ("target-ce-negative", ["train", "--target-ce", "-1"], None, ["target_ce must be non-negative or None"]),
    ("optimizer", ["train", "--optimizer", "sgd"], None, ["--optimizer", "invalid choice: 'sgd'"]),
    ("schedule", ["train", "--schedule", "step"], None, ["--schedule", "invalid choice: 'step'"]),
    ("augment", ["train", "--augment", "mixup"], None, ["--augment", "invalid choice: 'mixup'"]),
    ("randaugment-magnitude", ["train", "--randaugment-magnitude", "31"], None,
     ["randaugment_magnitude must be an integer in 0..30, got 31"]),
    ("srr-layernorm", ["train", "--srr-layernorm", "post"], None, ["srr_layernorm", "'post'"]),
    ("srr-images-zero", ["train", "--srr-images", "0"], None, ["srr_images must be a positive integer or None"]),
    ("device", ["train", "--device", "cuda"], None, ["device 'cuda'", "use --device cpu or auto"]),
    ("dataset", ["train", "--dataset", "mnist"], None, ["--dataset", "invalid choice: 'mnist'"]),
    # models and --set: typed from CRATEConfig's declarations
    ("model-variant", ["train", "--model", "crate-x-digits"], None, ["crate-x-digits", "srrlab models"]),
    ("model-size", ["train", "--model", "crate-t-huge"], None, ["crate-t-huge", "srrlab models"]),
    ("set-no-equals", ["train", "--set", "dim"], None, ["--set takes KEY=VALUE, got 'dim'"]),
    ("set-unknown", ["train", "--set", "depht=3"], None, ["unknown model option 'depht'", "valid: ", "depth"]),
    ("set-bool", ["train", "--set", "prenorm=maybe"], None, ["prenorm must be true or false, got 'maybe'"]),
    ("set-int", ["train", "--set", "dim=abc"], None, ["dim must be an integer, got 'abc'"]),
    ("set-heads", ["train", "--set", "heads=four"], None, ["heads must be an integer, got 'four'"]),
    ("set-float", ["train", "--set", "dropout=high"], None, ["dropout must be a finite number, got 'high'"]),
    ("set-dropout-range", ["train", "--set", "dropout=1.5"], None, ["dropout must be in [0, 1), got 1.5"]),
    ("set-patch", ["train", "--set", "patch_size=3"], None, ["not divisible by patch_size=3"]),
    ("crate-t-dim-heads", ["train", "--model", "crate-t-digits", "--set", "dim=30"], None,
     ["crate-t needs dim == heads * dim_head", "choose a dim divisible by heads (e.g. dim=32)"]),
    ("data-option", ["train", "--data-option", "colour=1"], None, ["colour"]),
    # data: missing, truncated, malformed and malicious files
    ("cifar-missing", ["train", "--dataset", "cifar10", "--model", "crate-t-micro", "--data-dir", "nowhere"], None,
     ["nowhere"]),
    ("cifar-truncated-archive", ["train", "--dataset", "cifar10", "--model", "crate-t-micro", "--data-dir", "data"],
     _truncated_cifar_archive, ["cifar-10-python.tar.gz"]),
    ("cifar-malicious-pickle", ["train", "--dataset", "cifar10", "--model", "crate-t-micro", "--data-dir", "data"],
     _evil_cifar, ["data_batch_2", "refused to unpickle global"]),
    ("fashion-bad-idx", ["train", "--dataset", "fashion-mnist", "--model", "crate-t-fmnist", "--data-dir", "data"],
     _bad_idx, ["train-images-idx3-ubyte", "is not an IDX header"]),
    ("fashion-subset", ["train", "--dataset", "fashion-mnist", "--model", "crate-t-fmnist", "--data-option",
                        "subset=half"], None, ["subset must be one of 'auto', 'embedded', 'full', got 'half'"]),
    # resuming
    ("resume-missing", ["train", "--resume", "nowhere"], None, ["nowhere is not a run folder: it does not exist"]),
    ("resume-with-flags", ["train", "--resume", "{cut}", "--lr", "0.1"], None,
     ["--resume continues a run with its saved configuration", "--lr"]),
    ("resume-bad-config", ["train", "--resume", "{cut}"],
     lambda t: (t / "cut" / "config.json").write_text("{'train': 1}"), ["cut/config.json is not valid JSON"]),
    ("resume-config-not-a-run", ["train", "--resume", "{cut}"],
     lambda t: (t / "cut" / "config.json").write_text("[1, 2]"), ["cut/config.json is not a run configuration"]),
    ("resume-no-checkpoint", ["train", "--resume", "{cut}"],
     lambda t: shutil.rmtree(t / "cut" / "checkpoint"), ["has no complete checkpoint", "delete it and train again"]),
    ("resume-both-checkpoints-damaged", ["train", "--resume", "{cut}"],
     lambda t: [_truncate(c / "model.safetensors") for c in _checkpoints(t / "cut")],
     ["model.safetensors", "are damaged", "train again"]),
    ("resume-optimizer-damaged", ["train", "--resume", "{cut}"],
     lambda t: [_truncate(c / "optimizer.pt") for c in _checkpoints(t / "cut")], ["optimizer.pt", "are damaged"]),
    ("resume-metrics-damaged", ["train", "--resume", "{cut}"],
     lambda t: (t / "cut" / "metrics.jsonl").write_text('{"epoch": 0}\n{"epo'), ["metrics.jsonl is not valid JSON"]),
    # measuring
    ("measure-missing", ["measure", "nowhere"], None, ["nowhere"]),
    ("measure-not-a-run", ["measure", "empty"], lambda t: (t / "empty").mkdir(), ["empty", "config.json"]),
    ("measure-unknown", ["measure", "{done}", "--measures", "srr,path-nrom"], None, ["path-nrom"]),
    ("measure-set-type", ["measure", "{done}", "--set", "max_images=abc"], None,
     ["--set max_images must be an integer or none, got 'abc'"]),
    ("measure-set-unknown", ["measure", "{done}", "--set", "max_image=5"], None, ["unknown measure setting 'max_image'"]),
    ("measure-set-protocol", ["measure", "{done}", "--set", "layernorm=post"], None, ["layernorm", "'post'"]),
    ("measure-damaged-weights", ["measure", "{done}", "--measures", "l2"],
     lambda t: _truncate(t / "done" / "weights_final.safetensors"), ["weights_final.safetensors is damaged"]),
    ("measure-no-runs", ["measure"], None, ["give one or more RUN_DIRs"]),
    # layer-wise figures
    ("layerwise-missing", ["layerwise", "nowhere"], None, ["nowhere is not a run folder: it does not exist"]),
    ("layerwise-no-records", ["layerwise", "{done}"], None, ["trained without --srr-every", "--srr-every E"]),
    # studies
    ("study-no-spec", ["study", "run", "nothing.toml", "--dir", "st"], None, ["nothing.toml"]),
    ("study-bad-toml", ["study", "run", "spec.toml", "--dir", "st"], lambda t: _spec(t, "name = [\n"),
     ["spec.toml: not valid TOML"]),
    ("study-unknown-setting", ["study", "run", "spec.toml", "--dir", "st"],
     lambda t: _spec(t, _SPEC.replace("epochs = 1", "epochz = 1")), ["unknown setting 'epochz'"]),
    ("study-grid-type", ["study", "run", "spec.toml", "--dir", "st"],
     lambda t: _spec(t, _SPEC.replace("seed = [0, 1]", 'lr = ["fast", 0.002]')),
     ["grid point {'lr': 'fast'}: lr must be a finite number, got 'fast'"]),
    ("study-empty-grid", ["study", "run", "spec.toml", "--dir", "st"],
     lambda t: _spec(t, _SPEC.replace("seed = [0, 1]\n", "")), ["key 'grid' is missing or empty", "srrlab train"]),
    ("study-changed-spec", ["study", "run", "spec2.toml", "--dir", "st"],
     lambda t: (_study(t), _spec(t, _SPEC.replace("epochs = 1", "epochs = 2"), "spec2.toml")),
     ["different spec (fixed.epochs: 1 -> 2)", "use a new --dir"]),
    ("study-report-missing", ["study", "report", "nowhere"], None, ["nowhere"]),
    # execution options: checked before the study folder is touched
    ("study-workers-per-gpu-cpu", ["study", "run", "spec.toml", "--dir", "st", "--workers-per-gpu", "2"],
     lambda t: _spec(t, _SPEC.replace("epochs = 1", 'epochs = 1\ndevice = "cpu"')),
     ["--workers-per-gpu needs the spec's device", "'cpu'", "use --workers N for CPU workers"]),
    ("study-workers-per-gpu-scheduler", ["study", "run", "spec.toml", "--dir", "st", "--workers-per-gpu", "1",
                                         "--scheduler", "tcp://127.0.0.1:1"], _spec, ["drop --workers-per-gpu"]),
    ("study-queue-without-cluster", ["study", "run", "spec.toml", "--dir", "st", "--queue", "gpu"], _spec,
     ["--queue", "add --cluster slurm|pbs|lsf|sge"]),
    ("study-cluster-no-cores", ["study", "run", "spec.toml", "--dir", "st", "--cluster", "slurm"], _spec,
     ["--cluster slurm needs --cores-per-job C and --memory-per-job M"]),
    ("study-cluster-and-workers", ["study", "run", "spec.toml", "--dir", "st", "--cluster", "pbs", "--workers", "2"],
     _spec, ["--workers starts workers on this machine", "drop --workers"]),
    ("regularize-workers-per-gpu-zero", ["regularize", "run", "demo", "--dir", "rg", "--workers-per-gpu", "0"], None,
     ["--workers-per-gpu must be >= 1, got 0"]),
    ("regularize-unknown-preset", ["regularize", "run", "nope", "--dir", "rg"], None, ["nope"]),
    # the toy study
    ("toy-rule", ["toy", "--rules", "exact,magic"], None, ["unknown rule(s) 'magic'", "valid rules"]),
    ("toy-seeds", ["toy", "--seeds", "a,b"], None, ["--seeds takes a comma-separated list"]),
]


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = (path.stat().st_mode, hashlib.sha1(path.read_bytes()).hexdigest() if path.is_file() else "dir")
    return out


def test_the_table_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line_and_changes_nothing(case, runs, tmp_path, monkeypatch, capsys):
    name, argv, setup, fragments = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SRRLAB_DATA", raising=False)
    monkeypatch.delenv("SRRLAB_DEBUG", raising=False)
    for run in ("done", "cut"):
        if any("{" + run + "}" in a for a in argv):
            _copy_run(runs, run, tmp_path)
    argv = [a.replace("{done}", "done").replace("{cut}", "cut") for a in argv]
    if setup is not None:
        setup(tmp_path)
    before = _snapshot(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, f"{name}: exit {code}; stderr: {err}"
    assert len(lines) == 1, f"{name}: expected one error line, got:\n{err}"
    assert lines[0].startswith(f"srrlab{' ' + argv[0] if argv[0] in _COMMANDS else ''}: error: "), lines[0]
    assert "Traceback" not in err and out == "", f"{name}: stdout {out!r}"
    for fragment in fragments:
        assert fragment in lines[0], f"{name}: {fragment!r} not in {lines[0]!r}"
    assert _snapshot(tmp_path) == before, f"{name}: files were created or changed"
    assert not (tmp_path / "executed").exists()


_COMMANDS = {"models", "train", "measure", "layerwise", "study", "regularize", "demo", "toy"}


# -- what bad input must not break: a damaged newest checkpoint falls back to the one before ---------------------
def test_resume_falls_back_to_the_earlier_checkpoint_when_the_newest_is_damaged(runs, tmp_path, capsys):
    whole = _copy_run(runs, "cut", tmp_path / "a")
    damaged = _copy_run(runs, "cut", tmp_path / "b")
    newest, earlier = _checkpoints(damaged)[-1], _checkpoints(damaged)[-2]
    assert (newest.name, earlier.name) == ("epoch-0002", "epoch-0001")
    _truncate(newest / "model.safetensors")
    assert main(["train", "--resume", str(whole), "--quiet", "--json"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(damaged), "--quiet", "--json"]) == 0
    err = capsys.readouterr().err
    assert "epoch-0002/model.safetensors" in err and "resuming from the earlier checkpoint of epoch 1" in err
    # the same numbers as resuming the undamaged copy: epoch 2 is recomputed exactly
    import json

    def numbers(run):
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]

    assert numbers(whole) == numbers(damaged) and len(numbers(whole)) == 5


def test_a_warning_is_one_line_naming_the_command(runs, tmp_path):
    import subprocess
    import sys
    import warnings

    before = warnings.formatwarning
    _copy_run(runs, "done", tmp_path)
    # a 2-epoch digits model misclassifies more than 10% of its training images: the margin warning
    argv = ["measure", str(tmp_path / "done"), "--measures", "inverse-margin", "--quiet", "--out", str(tmp_path / "m.csv")]
    proc = subprocess.run([sys.executable, "-m", "srrlab.cli", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("srrlab measure: warning: margin γ") for ln in lines), proc.stderr
    with pytest.warns(UserWarning, match="margin γ"):
        assert main(argv) == 0
    assert warnings.formatwarning is before  # in-process: restored for the caller
