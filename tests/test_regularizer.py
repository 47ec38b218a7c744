"""SRR as a regulariser (spec §7): stop-gradient, layer choice, η = 0, the logged value."""
from __future__ import annotations

import collections
import math

import pytest
import torch

import srrlab
from srrlab.io import load_weights
from srrlab.rate import srr
from srrlab.train import TrainConfig, train
from srrlab.train.regularizer import SRRRegularizer, parse_layers


def _model(variant="crate-t", depth=4, seed=0, **kw):
    torch.manual_seed(seed)
    return srrlab.create_model(f"{variant}-digits", depth=depth, dim=32, heads=4, **kw).double()


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: (p.grad is not None and bool(p.grad.abs().sum() > 0)) for n, p in model.named_parameters()}


@pytest.mark.parametrize("variant", ["crate-t", "crate", "crate-c"])
@pytest.mark.parametrize("layers, selected", [("last", {3}), ("all", {0, 1, 2, 3}), ("2,3", {1, 2})])
def test_gradient_only_reaches_the_selected_layers(variant, layers, selected, digits):
    model = _model(variant)
    x = digits.train.images[:16].double()
    reg = SRRRegularizer(4, 1.0, layers, l1=0.01)
    _, term, _ = reg(model, x)
    got = _grads(model, term)
    for name, has_grad in got.items():
        in_selected = name.startswith("layers.") and int(name.split(".")[1]) in selected
        if not in_selected:
            assert not has_grad, f"{name} gets gradient from the regulariser of layers {layers}"
    # every selected layer's subspaces and dictionary do get gradient
    for ell in selected:
        assert got[f"layers.{ell}.attn.qkv.weight"] and got[f"layers.{ell}.ista.weight"], ell


def test_logged_value_equals_srr_on_the_same_tensors(digits):
    model = _model("crate-c")
    model.eval()  # no dropout anyway; eval makes the re-applied layer deterministic
    x = digits.train.images[:20].double()
    reg = SRRRegularizer(4, 0.5, "all", eps=0.7, lam=0.2)
    logits, term, values = reg(model, x)
    with torch.no_grad():
        out = model.forward_layers(x)
        assert torch.equal(logits, out.logits)
        expected = {}
        for ell, (state, u) in enumerate(zip(out.layers, model.subspaces()), 1):
            expected[ell] = srr(state.z_out, u, eps=0.7, lam=0.2).mean().item()
    assert values == pytest.approx(expected, rel=1e-12)
    assert term.item() == pytest.approx(sum(expected.values()) / 4, rel=1e-12)


def test_random_layer_is_uniform_and_seeded():
    reg = SRRRegularizer(6, 1.0, "random")
    draws = [reg.select(torch.Generator().manual_seed(0))[0] for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same layer
    gen = torch.Generator().manual_seed(1)
    counts = collections.Counter(reg.select(gen)[0] for _ in range(6000))
    assert set(counts) == set(range(6))
    chi2 = sum((c - 1000) ** 2 / 1000 for c in counts.values())
    assert chi2 < 20.5  # 5 degrees of freedom, p ≈ 0.001


def test_parse_layers():
    assert parse_layers("last", 12) == "last" and parse_layers("random", 12) == "random"
    assert parse_layers("12,1,1", 12) == (0, 11)
    with pytest.raises(ValueError, match="numbered 1..12"):
        parse_layers("0,3", 12)
    with pytest.raises(ValueError, match="last, all, random"):
        parse_layers("first", 12)
    with pytest.raises(ValueError, match="numbered 1..4"):
        TrainConfig(model="crate-t-digits", srr_layers="7")  # validated when the run starts
        train(TrainConfig(model="crate-t-digits", srr_layers="7"), "/nonexistent/never-created", quiet=True)


def _cfg(**kw):
    base = dict(model="crate-t-digits", model_options={"depth": 2, "dim": 32, "dropout": 0.1}, epochs=2,
                batch_size=128, target_ce=None)
    base.update(kw)
    return TrainConfig(**base)


def test_eta_zero_is_plain_training_bit_for_bit(tmp_path, digits):
    plain = train(_cfg(), tmp_path / "plain", quiet=True, splits=digits)
    zero = train(_cfg(srr_reg=0.0, srr_layers="all", srr_l1=0.5), tmp_path / "zero", quiet=True, splits=digits)
    a = load_weights(tmp_path / "plain" / "weights_final.safetensors")
    b = load_weights(tmp_path / "zero" / "weights_final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda ms: [{k: v for k, v in m.items() if k != "epoch_time_s"} for m in ms]  # noqa: E731
    assert strip(plain.metrics) == strip(zero.metrics)
    assert "srr_reg_value" not in plain.metrics[-1]


def test_regularised_training_logs_and_changes_the_run(tmp_path, digits):
    plain = train(_cfg(), tmp_path / "plain", quiet=True, splits=digits)
    reg = train(_cfg(srr_reg=0.01, srr_layers="random"), tmp_path / "reg", quiet=True, splits=digits)
    m = reg.metrics[-1]
    assert set(m["srr_reg_layers"]) <= {"1", "2"} and math.isfinite(m["srr_reg_value"])
    assert reg.metrics[-1]["train_ce"] != plain.metrics[-1]["train_ce"]
    # the run is reproducible, including the random layer choice
    again = train(_cfg(srr_reg=0.01, srr_layers="random"), tmp_path / "again", quiet=True, splits=digits)
    assert again.metrics[-1]["srr_reg_layers"] == m["srr_reg_layers"]
    assert again.metrics[-1]["train_ce"] == m["train_ce"]


def test_the_regulariser_under_autocast_computes_its_rates_in_fp32():
    """Under bf16 autocast (the trainer's --amp; CPU autocast here, the GPU case is tests/test_cuda.py) the
    rates run with autocast off, in fp32: before, their GEMMs ran in bf16 and the closed-form backward
    failed on the mixed dtypes (on CUDA the bf16 Cholesky of the forward fails first). The value is that of
    the same computation outside autocast up to the bf16 layer output (2%), and the backward reaches the
    layer's parameters."""
    torch.manual_seed(0)
    model = srrlab.create_model("crate-t-digits", depth=2, dim=32, heads=4)
    x = torch.randn(8, 1, 8, 8)
    reg = SRRRegularizer(2, 0.1, "all", None, 0.1, 1e-3)
    _, plain, _ = reg(model, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, value, per_layer = reg(model, x)
    assert value.dtype == torch.float32 and set(per_layer) == {1, 2}
    assert float(value) == pytest.approx(float(plain), rel=0.02)
    model.zero_grad(set_to_none=True)
    (logits.float().sum() + value).backward()
    assert model.layers[1].attn.qkv.weight.grad is not None
    z = torch.randn(3, 20, 32)
    u = torch.linalg.qr(torch.randn(32, 32))[0].reshape(32, 4, 8).permute(1, 0, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = srrlab.rate.srr_terms(z, u, 0.5, 0.1)
    outside = srrlab.rate.srr_terms(z, u, 0.5, 0.1)
    for key in ("R", "Rc", "mu"):
        assert inside[key].dtype == torch.float32 and torch.equal(inside[key], outside[key]), key
