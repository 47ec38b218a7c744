"""Grouped training (srrlab.train.group): members equal runs trained alone, folders equal run folders."""
from __future__ import annotations

import json

import pytest
import torch

from srrlab.io import load_weights
from srrlab.train import TrainConfig, resume, train
from srrlab.train.group import group_blocker, group_key, train_group


def _cfgs(**common):
    base = dict(model="crate-t-digits", model_options={"depth": 2}, batch_size=128, target_ce=None,
                schedule="cosine", **common)
    return [TrainConfig(**base, seed=0, lr=1e-3, epochs=2),
            TrainConfig(**base, seed=1, lr=3e-3, epochs=3, weight_decay=1e-4),
            TrainConfig(**base, seed=2, lr=2e-3, epochs=1)]


def _numbers(result):
    return [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in result.metrics]


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_a_member_equals_its_run_alone_to_fp32_round_off(tmp_path, digits, optimizer):
    cfgs = _cfgs(optimizer=optimizer)
    grouped = train_group(cfgs, [tmp_path / f"g{i}" for i in range(3)], splits=digits)
    for i, cfg in enumerate(cfgs):
        alone = train(cfg, tmp_path / f"a{i}", quiet=True, splits=digits)
        g = grouped[i]
        assert (g.status, g.epochs) == (alone.status, alone.epochs) == ("completed", cfg.epochs)
        # epoch 0 (the initialisation, same seed) is bit-identical; later epochs agree to round-off
        assert _numbers(g)[0] == _numbers(alone)[0]
        for mg, ma in zip(g.metrics[1:2], alone.metrics[1:2]):  # the first epoch: stated tolerance 1e-5 relative
            for key in ("train_loss", "train_ce", "test_ce", "train_acc", "test_acc"):
                assert mg[key] == pytest.approx(ma[key], rel=1e-5, abs=1e-6), (i, key)
            assert (mg["step"], mg["lr"]) == (ma["step"], pytest.approx(ma["lr"], rel=1e-12))
        if cfg.epochs == 1:
            wg, wa = load_weights(g.run_dir / "weights_final.safetensors"), load_weights(
                alone.run_dir / "weights_final.safetensors")
            assert wg.keys() == wa.keys()
            for k in wg:
                torch.testing.assert_close(wg[k], wa[k], rtol=1e-4, atol=2e-6)


def test_a_member_folder_is_a_run_folder(tmp_path, digits):
    cfgs = _cfgs()
    grouped = train_group(cfgs, [tmp_path / f"g{i}" for i in range(3)], splits=digits)
    alone = train(cfgs[1], tmp_path / "a", quiet=True, splits=digits)
    g = grouped[1].run_dir
    names = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert names(g) == names(alone.run_dir)
    cg, ca = json.loads((g / "config.json").read_text()), json.loads((alone.run_dir / "config.json").read_text())
    assert cg["train"] == ca["train"] and cg["model"] == ca["model"]
    assert grouped[1].summary.keys() == alone.summary.keys()
    # the optimizer state in its checkpoint is a torch.optim.Adam state dict, loadable as is
    state = torch.load(sorted((g / "checkpoint").glob("epoch-*"))[-1] / "optimizer.pt", weights_only=True)
    ref = torch.load(sorted((alone.run_dir / "checkpoint").glob("epoch-*"))[-1] / "optimizer.pt", weights_only=True)
    assert state["param_groups"][0].keys() == ref["param_groups"][0].keys()
    for key, value in ref["param_groups"][0].items():
        assert state["param_groups"][0][key] == (pytest.approx(value, rel=1e-12) if key == "lr" else value), key
    assert state["state"].keys() == ref["state"].keys()
    assert all(float(state["state"][k]["step"]) == float(ref["state"][k]["step"]) for k in ref["state"])


def test_a_killed_group_resumes_like_runs_alone(tmp_path, digits):
    cfgs = _cfgs()
    dirs = [tmp_path / f"g{i}" for i in range(3)]
    whole = train_group(cfgs, [tmp_path / f"w{i}" for i in range(3)], splits=digits)

    def kill(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs, dirs, splits=digits, on_epoch=kill)
    # member 2 (1 epoch) had ended; members 0 and 1 stopped after epoch 1's checkpoint
    assert json.loads((dirs[2] / "summary.json").read_text())["status"] == "completed"
    assert json.loads((dirs[0] / "summary.json").read_text())["status"] == "running"
    resumed = train_group(cfgs, dirs, splits=digits)
    for r, w in zip(resumed, whole):
        assert _numbers(r) == _numbers(w)  # same group, same order of operations: identical
    # a member's folder can also be continued alone
    with pytest.raises(KeyboardInterrupt):
        train_group(cfgs, [tmp_path / f"h{i}" for i in range(3)], splits=digits, on_epoch=kill)
    alone = resume(tmp_path / "h1", quiet=True, splits=digits)
    assert alone.status == "completed" and alone.epochs == 3
    assert _numbers(alone)[:2] == _numbers(whole[1])[:2]
    assert _numbers(alone)[2] == pytest.approx(_numbers(whole[1])[2], rel=1e-4)


def test_what_is_grouped_and_what_is_refused(tmp_path, digits):
    a, b = TrainConfig(model="crate-t-digits", seed=0, lr=1e-3), TrainConfig(model="crate-t-digits", seed=5, lr=4e-3,
                                                                             epochs=9, target_ce=0.1)
    assert group_key(a) == group_key(b)
    assert group_key(a) != group_key(TrainConfig(model="crate-t-digits", batch_size=32))
    assert group_key(a) != group_key(TrainConfig(model="crate-c-digits"))
    assert group_blocker(a) is None
    assert group_blocker(TrainConfig(model_options={"dropout": 0.1})) == "dropout"
    assert group_blocker(TrainConfig(augment="crop-flip", srr_every=2)) == "augmentation, SRR recording (srr_every)"
    with pytest.raises(ValueError, match="may differ only in seed, lr"):
        train_group([a, TrainConfig(model="crate-c-digits")], [tmp_path / "x", tmp_path / "y"], splits=digits)
    with pytest.raises(ValueError, match="runs with dropout are trained alone"):
        train_group([TrainConfig(model_options={"dropout": 0.1})], [tmp_path / "x"], splits=digits)
    with pytest.raises(ValueError, match="equal length"):
        train_group([a, b], [tmp_path / "x"], splits=digits)
    assert not (tmp_path / "x").exists()
