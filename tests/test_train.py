"""Training: accuracy on digits, determinism, resume after interruption, run-folder contents, CLI."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import srrlab
from srrlab.cli import main as cli
from srrlab.io import load_weights, read_json, read_jsonl
from srrlab.train import TrainConfig, evaluate, load_run, resume, train
from srrlab.train import trainer as trainer_mod

from conftest import train_interrupted

TIMING = {"epoch_time_s"}


def _strip(metrics):
    return [{k: v for k, v in m.items() if k not in TIMING} for m in metrics]


def _small(**kw):
    base = dict(model="crate-t-digits", model_options={"depth": 2, "dim": 32}, epochs=3, batch_size=128,
                target_ce=None, lr=2e-3)
    base.update(kw)
    return TrainConfig(**base)


def test_digits_reaches_90_percent(tmp_path, digits):
    result = train(TrainConfig(model="crate-t-digits", epochs=25, lr=2e-3, batch_size=64, target_ce=0.01),
                   tmp_path / "run", quiet=True, splits=digits)
    assert result.final["test_acc"] >= 0.90, result.final
    assert result.status in ("converged", "not-converged")
    # the reported numbers are those of the saved final weights
    model = load_run(tmp_path / "run")
    again = evaluate(model, digits.test)
    assert again["acc"] == pytest.approx(result.final["test_acc"])
    assert again["ce"] == pytest.approx(result.final["test_ce"], rel=1e-5)


def test_run_folder_contents(tmp_path, digits):
    cfg = _small(model="crate-c-digits")
    result = train(cfg, tmp_path / "r", quiet=True, splits=digits)
    run = tmp_path / "r"
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "summary.json", "weights_init.safetensors",
            "weights_final.safetensors", "checkpoint"} <= names
    assert not [p for p in run.rglob("*.tmp")], "temporary files left behind"
    config = read_json(run / "config.json")
    assert config["train"] == cfg.to_dict()
    assert config["model"]["variant"] == "crate-c" and config["model"]["depth"] == 2
    metrics = read_jsonl(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == [0, 1, 2, 3]
    assert metrics[-1]["step"] == 3 * math.ceil(1437 / 128)
    summary = read_json(run / "summary.json")
    assert summary["status"] == "completed" and summary["epochs"] == 3
    assert summary["gap_ce"] == pytest.approx(metrics[-1]["test_ce"] - metrics[-1]["train_ce"])
    # initial weights are those at epoch 0; final ones equal the returned model
    init = load_weights(run / "weights_init.safetensors")
    final = load_weights(run / "weights_final.safetensors")
    torch.manual_seed(cfg.seed)
    fresh = srrlab.create_model("crate-c-digits", depth=2, dim=32)
    for k, v in fresh.state_dict().items():
        assert torch.equal(init[k], v), k
    for k, v in result.model.state_dict().items():
        assert torch.equal(final[k], v.cpu()), k
    assert any(not torch.equal(init[k], final[k]) for k in init)
    # full-train-set metrics are recomputed in eval mode, not the running minibatch loss
    tr = evaluate(result.model, digits.train)
    assert tr["ce"] == pytest.approx(metrics[-1]["train_ce"], rel=1e-5)


def test_same_config_same_numbers(tmp_path, digits):
    cfg = _small(model_options={"depth": 2, "dim": 32, "dropout": 0.1, "emb_dropout": 0.1}, augment=True)
    a = train(cfg, tmp_path / "a", quiet=True, splits=digits)
    b = train(cfg, tmp_path / "b", quiet=True, splits=digits)
    assert _strip(a.metrics) == _strip(b.metrics)
    c = train(TrainConfig(**{**cfg.to_dict(), "seed": 1}), tmp_path / "c", quiet=True, splits=digits)
    assert _strip(a.metrics) != _strip(c.metrics)


def test_resume_equals_uninterrupted(tmp_path, digits, monkeypatch):
    cfg = _small(epochs=4, model_options={"depth": 2, "dim": 32, "dropout": 0.1}, augment=True, warmup_epochs=1)
    full = train(cfg, tmp_path / "full", quiet=True, splits=digits)

    train_interrupted(cfg, tmp_path / "cut", at_epoch=3, quiet=True, splits=digits)
    assert read_json(tmp_path / "cut" / "checkpoint" / "latest.json")["epoch"] == 2
    assert not (tmp_path / "cut" / "weights_final.safetensors").exists()
    assert read_json(tmp_path / "cut" / "summary.json")["status"] == "running"

    resumed = resume(tmp_path / "cut", quiet=True, splits=digits)
    assert _strip(resumed.metrics) == _strip(full.metrics)
    a = load_weights(tmp_path / "full" / "weights_final.safetensors")
    b = load_weights(tmp_path / "cut" / "weights_final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == _strip(full.metrics)
    # resuming a finished run returns it unchanged
    again = resume(tmp_path / "cut", quiet=True, splits=digits)
    assert again.status == "completed" and _strip(again.metrics) == _strip(full.metrics)


def test_sigkill_then_resume_from_cli(tmp_path):
    """A real `srrlab train` process killed with SIGKILL mid-run resumes to the same numbers."""
    args = ["--model", "crate-t-digits", "--set", "depth=2", "--set", "dim=32", "--epochs", "6",
            "--batch-size", "32", "--target-ce", "none", "--quiet"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # the reference runs as a process too, so both see the same torch thread settings
    subprocess.run([sys.executable, "-m", "srrlab.cli", "train", *args, "--out", str(tmp_path / "ref")], env=env,
                   check=True)
    proc = subprocess.Popen([sys.executable, "-m", "srrlab.cli", "train", *args, "--out", str(tmp_path / "cut")], env=env)
    latest = tmp_path / "cut" / "checkpoint" / "latest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.exists() and read_json(latest)["epoch"] >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_json(latest)["epoch"] < 6, "the run finished before it could be killed"
    assert cli(["train", "--resume", str(tmp_path / "cut"), "--quiet"]) == 0
    assert _strip(read_jsonl(tmp_path / "cut" / "metrics.jsonl")) == _strip(read_jsonl(tmp_path / "ref" / "metrics.jsonl"))
    a = load_weights(tmp_path / "ref" / "weights_final.safetensors")
    b = load_weights(tmp_path / "cut" / "weights_final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_target_ce_stops_early(tmp_path, digits):
    result = train(_small(epochs=10, target_ce=2.0), tmp_path / "r", quiet=True, splits=digits)
    assert result.status == "converged"
    assert result.final["train_ce"] <= 2.0
    assert all(m["train_ce"] > 2.0 for m in result.metrics[:-1])
    not_conv = train(_small(epochs=1, target_ce=1e-6), tmp_path / "n", quiet=True, splits=digits)
    assert not_conv.status == "not-converged"


def test_divergence_is_marked(tmp_path, digits):
    result = train(_small(epochs=3, lr=1e12, schedule="constant"), tmp_path / "r", quiet=True, splits=digits)
    assert result.status == "diverged"
    assert read_json(tmp_path / "r" / "summary.json")["status"] == "diverged"
    assert result.epochs < 3 or not math.isfinite(result.final["train_loss"])
    # strict JSON: the NaN losses are null, never a bare NaN that strict parsers reject
    import json

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    summary = strict((tmp_path / "r" / "summary.json").read_text())
    assert summary["train_ce"] is None or math.isfinite(summary["train_ce"])
    rows = [strict(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["train_loss"] is None for r in rows)
    # every file of the run folder has the same permissions as any other file the user writes
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "r").rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
    from srrlab.measures import compute_measures

    with pytest.warns(UserWarning, match="non-finite outputs \\(a diverged run\\?\\); margin-based measures are nan"):
        compute_measures(result.model, data=digits.train, measures=["inverse-margin"])


def test_cosine_schedule_and_warmup():
    cfg = _small(epochs=2, warmup_epochs=1, lr=1.0)
    lrs = [trainer_mod._lr_at(cfg, s, total=20, steps_per_epoch=10) for s in range(20)]
    assert lrs[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0)
    assert lrs[15] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    const = _small(schedule="constant", lr=0.3)
    assert trainer_mod._lr_at(const, 7, total=20, steps_per_epoch=10) == 0.3


@pytest.mark.parametrize("bad, match", [
    (dict(model="crate-q-digits"), "variant 'crate-q'"),
    (dict(optimizer="sgd"), "optimizer"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=-1.0), "lr"),
    (dict(schedule="step"), "schedule"),
    (dict(compile="yes"), "compile must be true or false"),
])
def test_config_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_existing_run_folder_refused(tmp_path, digits):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "something").write_text("x")
    with pytest.raises(FileExistsError, match="--resume"):
        train(_small(), tmp_path / "r", quiet=True, splits=digits)
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        resume(tmp_path / "nothing", quiet=True)


def test_amp_refused_on_cpu(tmp_path, digits):
    with pytest.raises(ValueError, match="CUDA"):
        train(_small(amp=True, device="cpu"), tmp_path / "r", quiet=True, splits=digits)
    assert not (tmp_path / "r").exists(), "a refused run must leave nothing behind"


# -- torch.compile -------------------------------------------------------------------------
def _tiny(**kw):
    """The smallest model; 1437 = 3 × 479 training images, so every batch is full and one shape compiles."""
    base = dict(model="crate-t-digits", model_options={"depth": 1, "dim": 16, "heads": 2}, epochs=2, batch_size=479,
                target_ce=None, lr=1e-2)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # from torch's compile path
def test_compile_matches_eager_and_checkpoints_stay_plain(tmp_path, digits, monkeypatch):
    """The one test that really compiles (inductor, ~10 s on 2 CPU cores): same losses as eager, checkpoints
    without ``_orig_mod.``, and a run checkpointed with compile resumes without it."""
    cfg = _tiny(compile=True)
    eager = train(_tiny(), tmp_path / "eager", quiet=True, splits=digits)
    train_interrupted(cfg, tmp_path / "c", at_epoch=2, quiet=True, splits=digits)
    assert read_json(tmp_path / "c" / "config.json")["train"]["compile"] is True
    weights = load_weights(tmp_path / "c" / "checkpoint" / "epoch-0001" / "model.safetensors")
    assert weights.keys() == eager.model.state_dict().keys()
    assert not [k for k in weights if "_orig_mod" in k]
    compiled = read_jsonl(tmp_path / "c" / "metrics.jsonl")
    assert len(compiled) == 2
    for c, e in zip(_strip(compiled), _strip(eager.metrics)):
        assert c == pytest.approx(e, rel=1e-4)
    # resume the compiled run's checkpoint with compile off: the rest of the run is eager training
    config = read_json(tmp_path / "c" / "config.json")
    config["train"]["compile"] = False
    (tmp_path / "c" / "config.json").write_text(json.dumps(config))
    resumed = resume(tmp_path / "c", quiet=True, splits=digits)
    assert len(resumed.metrics) == len(eager.metrics) == 3
    for r, e in zip(_strip(resumed.metrics), _strip(eager.metrics)):
        assert r == pytest.approx(e, rel=1e-4)
    final = load_weights(tmp_path / "c" / "weights_final.safetensors")
    for k, v in eager.model.state_dict().items():
        torch.testing.assert_close(final[k], v, rtol=1e-4, atol=1e-6)


def test_compile_failures_are_refused(tmp_path, digits, monkeypatch, capsys):
    """No compilation here: torch.compile is replaced by failing stand-ins."""
    def fails_at_call(model, **kw):
        def forward(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler found")
        return forward

    monkeypatch.setattr(torch, "compile", fails_at_call)
    with pytest.raises(ValueError, match=r"torch.compile failed to set up \(RuntimeError: InductorError.*drop --compile"):
        train(_tiny(compile=True), tmp_path / "r", quiet=True, splits=digits)
    assert not (tmp_path / "r").exists(), "a refused run must leave nothing behind"
    # the CLI flag reaches TrainConfig.compile and the refusal is one clear line
    assert cli(["train", "--model", "crate-t-digits", "--set", "depth=1", "--set", "dim=16", "--set", "heads=2",
                "--epochs", "1", "--compile", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "drop --compile" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert cli(["train", "--resume", str(tmp_path / "x"), "--compile"]) == 2
    assert "--compile" in capsys.readouterr().err
    monkeypatch.delattr(torch, "compile")
    with pytest.raises(ValueError, match="has no torch.compile.*drop --compile"):
        train(_tiny(compile=True), tmp_path / "r", quiet=True, splits=digits)
    monkeypatch.undo()
    # a study spec takes compile like any TrainConfig field
    from srrlab.study.spec import SpecError, StudySpec

    spec = dict(name="s", dataset="digits", fixed={"model": "crate-t-digits", "compile": True}, grid={"seed": [0]})
    assert StudySpec.from_dict(spec).train_config({"seed": 0}).compile is True
    with pytest.raises(SpecError, match="compile"):
        StudySpec.from_dict({**spec, "fixed": {"model": "crate-t-digits", "compile": "yes"}})


# -- CLI ---------------------------------------------------------------------------------
def test_cli_models(capsys):
    assert cli(["models", "--size", "tiny"]) == 0
    out = capsys.readouterr().out
    for v in srrlab.VARIANTS:
        assert f"{v}-tiny" in out
    n = srrlab.create_model("crate-tiny").num_parameters()
    assert f"{n:,}" in out
    assert cli(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} >= {"crate-t-digits", "crate-g-large"}


def test_cli_train_and_errors(tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli(["train", "--model", "crate-n-digits", "--set", "depth=1", "--set", "dim=32", "--epochs", "1",
              "--target-ce", "none", "--lr", "3e-3", "--out", str(out), "--quiet", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run_dir"] == str(out) and summary["status"] == "completed"
    assert read_json(out / "config.json")["train"]["lr"] == 3e-3
    # errors: one clear line, exit code 2, nothing half-written
    assert cli(["train", "--model", "crate-t-huge", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "size 'huge'" in err and "tiny" in err
    assert not (tmp_path / "x").exists()
    assert cli(["train", "--resume", str(out), "--epochs", "3"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert cli(["train", "--set", "nonsense", "--out", str(tmp_path / "y")]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    assert cli(["train", "--set", "depht=2", "--out", str(tmp_path / "z")]) == 2
    assert "depht" in capsys.readouterr().err


def test_cli_train_synthetic_rgb_with_augmentation(tmp_path, capsys):
    """Non-default dataset with options, 3 channels at 32×32 (padding-4 crops), AdamW + warm-up."""
    out = tmp_path / "syn"
    rc = cli(["train", "--model", "crate-fix-micro", "--set", "depth=1", "--set", "dim=32", "--set", "heads=2",
              "--dataset", "synthetic", "--data-option", "image_size=32", "--data-option", "channels=3",
              "--data-option", "num_train=64", "--data-option", "num_test=32", "--data-option", "num_classes=4",
              "--augment", "--optimizer", "adamw", "--weight-decay", "0.05", "--warmup-epochs", "1",
              "--epochs", "2", "--batch-size", "16", "--out", str(out), "--quiet", "--json"])
    assert rc == 0, capsys.readouterr().err
    config = read_json(out / "config.json")
    assert config["model"]["channels"] == 3 and config["model"]["image_size"] == 32
    assert config["model"]["num_classes"] == 4
    assert config["train"]["data_options"]["num_train"] == 64
    metrics = read_jsonl(out / "metrics.jsonl")
    assert metrics[1]["step"] == 4 and metrics[1]["lr"] == pytest.approx(1e-3)  # end of warm-up
    model = load_run(out)
    assert model.variant == "crate-fix" and model.head.out_features == 4
