"""measure_srr against a naive per-image computation; SRR recorded during training; the layerwise figure."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import srrlab
from srrlab.cli import main as cli
from srrlab.rate import measure_srr
from srrlab.train import TrainConfig, load_run, read_layerwise, resume, train

from conftest import train_interrupted


def _naive_layer_terms(z: torch.Tensor, u: torch.Tensor, eps: float, lam: float) -> tuple[float, float, float, float]:
    """Per-image R, R^c, ‖Z‖₀, μ by the literal N×N formulas (spec §2, §5), column form, fp64, averaged."""
    z = z.double()
    u = u.double()
    b, n, d = z.shape
    k_heads, _, p = u.shape
    out = torch.zeros(4, dtype=torch.float64)
    for i in range(b):
        zc = z[i].T  # d × N
        r = 0.5 * torch.logdet(torch.eye(n, dtype=torch.float64) + d / (n * eps**2) * zc.T @ zc)
        rc = 0.0
        for k in range(k_heads):
            a = u[k].T @ zc  # p × N
            rc = rc + 0.5 * torch.logdet(torch.eye(n, dtype=torch.float64) + p / (n * eps**2) * a.T @ a)
        nnz = float((zc != 0).sum())
        out += torch.tensor([float(r), float(rc), nnz, lam * nnz + float(rc) - float(r)], dtype=torch.float64)
    return tuple((out / b).tolist())


def test_measure_srr_equals_naive(digits):
    torch.manual_seed(0)
    model = srrlab.create_model("crate-c-digits", depth=3).double()
    x = digits.train.images[:24].double()
    result = measure_srr(model, x, layernorm="all", batch_size=10, lam=0.1)
    table, value, eps = result.table, result.value, result.eps
    assert list(table.columns) == ["layer", "R", "Rc", "l0", "fraction", "mu"]
    assert list(table["layer"]) == [1, 2, 3]
    n, p = 17, 16
    assert eps == pytest.approx(math.sqrt(p / n))
    with torch.no_grad():
        states = model.forward_layers(x, layernorm=False).layers
    for ell, (state, u) in enumerate(zip(states, model.subspaces())):
        ref = _naive_layer_terms(state.z_out, u.detach(), eps, 0.1)
        got = table.iloc[ell][["R", "Rc", "l0", "mu"]].to_numpy(dtype=float)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-9), ell
        assert table.iloc[ell]["fraction"] == pytest.approx(ref[2] / (n * 64), rel=1e-12)
    assert value == pytest.approx(table["mu"].mean())
    assert result.images == 24 and result.layernorm == "all" and result.protocol.name.startswith("layernorm=all")
    assert result.train_acc is None  # no labels given
    assert table.attrs["eps"] == eps
    # the boolean alias of earlier releases: False = every LayerNorm removed
    assert measure_srr(model, x, layernorm=False).value == value
    # explicit eps and lam are used as given
    other = measure_srr(model, x, layernorm="all", eps=0.5, lam=0.3)
    ref = _naive_layer_terms(states[0].z_out, model.subspaces()[0].detach(), 0.5, 0.3)
    assert other.table.iloc[0][["R", "Rc", "l0", "mu"]].to_numpy(dtype=float) == pytest.approx(ref, rel=1e-9)


def test_measure_srr_layernorm_and_data_forms(digits):
    torch.manual_seed(1)
    model = srrlab.create_model("crate-t-digits", depth=2, dropout=0.3)
    model.train()
    x = digits.train.images[:40]
    base = measure_srr(model, x)
    assert model.training, "the model's mode must be restored"
    # eval mode is used: dropout does not make two measurements differ
    assert measure_srr(model, x).value == base.value
    with_ln = measure_srr(model, x, layernorm=True)
    assert with_ln.value != pytest.approx(base.value)
    assert with_ln.value == measure_srr(model, x, layernorm="none").value
    # the same images given as a dataset, splits, or an iterable of (x, y) batches
    sub = srrlab.data.ImageDataset(x, digits.train.labels[:40], digits.train.classes, "sub")
    assert measure_srr(model, sub).value == pytest.approx(base.value, rel=1e-6)
    batches = [(x[i:i + 7], None) for i in range(0, 40, 7)]
    assert measure_srr(model, batches).value == pytest.approx(base.value, rel=1e-6)
    assert measure_srr(model, batches, max_images=14).images == 14
    # a fixed random subset, reproducible by seed, of Splits' *train* split
    a = measure_srr(model, digits, max_images=30, seed=3)
    b = measure_srr(model, digits, max_images=30, seed=3)
    c = measure_srr(model, digits, max_images=30, seed=4)
    assert a.images == 30 and a.value == b.value and a.value != c.value
    with pytest.raises(ValueError, match="max_images"):
        measure_srr(model, x, max_images=0)
    with pytest.raises(TypeError, match="data must be"):
        measure_srr(model, 3.0)


def test_srr_recorded_during_training(tmp_path, digits):
    cfg = TrainConfig(model="crate-t-digits", model_options={"depth": 3, "dim": 32}, epochs=5, batch_size=128,
                      target_ce=None, srr_every=2, srr_images=64)
    result = train(cfg, tmp_path / "r", quiet=True, splits=digits)
    table = read_layerwise(tmp_path / "r")
    assert sorted(table["epoch"].unique()) == [0, 2, 4, 5]  # init, every 2 epochs, and the final epoch
    # both default protocols (pre-operator LayerNorms removed, and kept), 3 layers each
    assert (table.groupby(["epoch", "layernorm"]).size() == 3).all()
    assert list(dict.fromkeys(table["layernorm"])) == ["pre", "none"]
    assert {"R", "Rc", "l0", "fraction", "mu", "eps", "lam", "images", "protocol", "protocol_train_acc"} <= set(table.columns)
    assert (table["images"] == 64).all()
    metrics = result.metrics
    assert [("srr" in m) for m in metrics] == [True, False, True, False, True, True]
    assert [("srr_none" in m) for m in metrics] == [True, False, True, False, True, True]
    # the recorded final tables are measure_srr of the final weights on the same fixed subset
    model = load_run(tmp_path / "r")
    for ln, key in (("pre", "srr"), ("none", "srr_none")):
        again = measure_srr(model, digits.train, layernorm=ln, max_images=64)
        final = table[(table["epoch"] == 5) & (table["layernorm"] == ln)].sort_values("layer")
        assert final["mu"].to_numpy() == pytest.approx(again.table["mu"].to_numpy(), rel=1e-5)
        assert metrics[-1][key] == pytest.approx(again.value, rel=1e-5)
        assert final["protocol_train_acc"].iloc[0] == pytest.approx(again.train_acc)
    # the initial table is that of the initial weights
    init = load_run(tmp_path / "r", which="init")
    first = table[(table["epoch"] == 0) & (table["layernorm"] == "pre")].sort_values("layer")
    assert first["mu"].to_numpy() == pytest.approx(measure_srr(init, digits.train, max_images=64).table["mu"].to_numpy(), rel=1e-5)
    # one protocol only, on request; a bad protocol is refused before anything is written
    assert TrainConfig(srr_layernorm="all").srr_protocols()[0].layernorm == "all"
    with pytest.raises(ValueError, match="srr_layernorm"):
        TrainConfig(srr_layernorm="pre,pre")
    with pytest.raises(ValueError, match="sparsity"):
        TrainConfig(srr_sparsity="ratio")


def test_srr_records_survive_resume(tmp_path, digits, monkeypatch):
    cfg = TrainConfig(model="crate-c-digits", model_options={"depth": 2, "dim": 32}, epochs=4, batch_size=128,
                      target_ce=None, srr_every=1, srr_images=32)
    train(cfg, tmp_path / "full", quiet=True, splits=digits)
    train_interrupted(cfg, tmp_path / "cut", at_epoch=3, quiet=True, splits=digits)
    resume(tmp_path / "cut", quiet=True, splits=digits)
    pd.testing.assert_frame_equal(read_layerwise(tmp_path / "cut"), read_layerwise(tmp_path / "full"))


def test_cli_layerwise_figure(tmp_path, capsys):
    runs = []
    for variant in ("crate-c", "crate-n"):
        out = tmp_path / variant
        assert cli(["train", "--model", f"{variant}-digits", "--set", "depth=3", "--set", "dim=32", "--epochs", "2",
                    "--target-ce", "none", "--srr-every", "1", "--srr-images", "32", "--out", str(out), "--quiet"]) == 0
        runs.append(str(out))
    capsys.readouterr()
    assert cli(["layerwise", *runs, "--out", str(tmp_path / "fig.png")]) == 0
    printed = capsys.readouterr().out
    assert "crate-c-digits" in printed and "crate-n-digits" in printed and "fig.png" in printed
    assert printed.count("layernorm removed: pre") == 2 and printed.count("layernorm removed: none") == 2
    assert cli(["layerwise", *runs, "--layernorm", "pre", "--out", str(tmp_path / "pre.png")]) == 0
    assert "layernorm removed: none" not in capsys.readouterr().out
    assert cli(["layerwise", *runs, "--layernorm", "all", "--out", str(tmp_path / "x.png")]) == 2
    assert "recorded pre, none" in capsys.readouterr().err
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert cli(["layerwise", runs[0], "--quantities", "mu"]) == 0
    assert (tmp_path / "crate-c" / "layerwise.png").exists()
    # a run without SRR records and an unknown quantity: one clear error each
    assert cli(["train", "--model", "crate-c-digits", "--set", "depth=1", "--set", "dim=32", "--epochs", "1",
                "--out", str(tmp_path / "plain"), "--quiet"]) == 0
    capsys.readouterr()
    assert cli(["layerwise", str(tmp_path / "plain")]) == 2
    assert "--srr-every" in capsys.readouterr().err
    assert cli(["layerwise", runs[0], "--quantities", "mu,zz"]) == 2
    assert "zz" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.tmp*"))


# -- the evaluation protocols -------------------------------------------------------------------
def _ln(x: torch.Tensor, module) -> torch.Tensor:
    """LayerNorm written out: (x − mean) / sqrt(var + eps) · weight + bias."""
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias


def _protocol_forward(model, x, removed: set[str]):
    """The CRATE forward written in the test, skipping exactly the LayerNorms named in ``removed``
    (patch_norm_in, patch_norm_out, norm1, norm2, head_norm); returns ([Z^ℓ], logits)."""
    norm = (lambda name, module, t: t if name in removed else _ln(t, module))
    b = x.shape[0]
    p = model.config.patch_size
    patches = x.reshape(b, 1, 4, p, 4, p).permute(0, 2, 4, 3, 5, 1).reshape(b, 16, p * p)
    t = norm("patch_norm_out", model.patch_norm_out, model.patch_proj(norm("patch_norm_in", model.patch_norm_in, patches)))
    z = torch.cat([model.cls_token.expand(b, -1, -1), t], 1) + model.pos_embedding
    outs = []
    for layer in model.layers:
        y = z + layer.attn(norm("norm1", layer.norm1, z))
        z = layer.ista(norm("norm2", layer.norm2, y))
        outs.append(z)
    return outs, model.head(norm("head_norm", model.head_norm, z[:, 0]))


@pytest.mark.parametrize("layernorm, removed", [
    ("pre", {"norm1", "norm2"}),
    ("all", {"patch_norm_in", "patch_norm_out", "norm1", "norm2", "head_norm"}),
    ("none", set()),
])
def test_each_protocol_removes_exactly_its_layernorms(digits, layernorm, removed):
    torch.manual_seed(3)
    model = srrlab.create_model("crate-t-digits", depth=3).double().eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters, so keeping one is visible
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.5, 0.5)
    x, y = digits.train.images[:30].double(), digits.train.labels[:30]
    result = measure_srr(model, (x, y), layernorm=layernorm, lam=0.1, dtype=torch.float64)
    with torch.no_grad():
        outs, logits = _protocol_forward(model, x, removed)
        # the protocol network as an ordinary module computes the same logits
        assert model.without_layernorms(layernorm)(x) == pytest.approx(logits, rel=1e-12, abs=1e-12)
    assert result.train_acc == pytest.approx((logits.argmax(-1) == y).double().mean().item())
    eps = math.sqrt(16 / 17)
    for ell, (z, u) in enumerate(zip(outs, model.subspaces())):
        ref = _naive_layer_terms(z, u.detach(), eps, 0.1)
        got = result.table.iloc[ell][["R", "Rc", "l0", "mu"]].to_numpy(dtype=float)
        assert got == pytest.approx(ref, rel=1e-9, abs=1e-9), (layernorm, ell)


def _naive_unit_terms(z: torch.Tensor, u: torch.Tensor) -> tuple[float, float]:
    """R and R^c in the official analysis convention, literally: every token (per head for R^c)
    divided by its norm, ε² = 0.01, N×N logdets, fp64, averaged over images."""
    z, u = z.double(), u.double()
    b, n, d = z.shape
    r_sum = rc_sum = 0.0
    for i in range(b):
        t = z[i] / z[i].norm(dim=-1, keepdim=True).clamp_min(1e-300)
        r_sum += 0.5 * torch.logdet(torch.eye(n, dtype=torch.float64) + d / (n * 0.01) * t @ t.T).item()
        for k in range(u.shape[0]):
            a = z[i] @ u[k]
            a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-300)
            rc_sum += 0.5 * torch.logdet(torch.eye(n, dtype=torch.float64) + u.shape[2] / (n * 0.01) * a @ a.T).item()
    return r_sum / b, rc_sum / b


def test_sparsity_and_rate_conventions(digits):
    torch.manual_seed(4)
    model = srrlab.create_model("crate-n-digits", depth=2).double()
    x = digits.train.images[:12].double()
    base = measure_srr(model, x, both_rates=True)  # pre, count, gamma1
    assert base.layernorm == "pre" and base.protocol.name == "layernorm=pre sparsity=count rate=gamma1"
    assert {"R_gamma1", "Rc_gamma1", "R_unit", "Rc_unit"} <= set(base.table.columns)
    assert base.table["R_gamma1"].tolist() == base.table["R"].tolist()
    frac = measure_srr(model, x, sparsity="fraction")
    t = frac.table
    assert t["mu"].to_numpy() == pytest.approx((0.1 * t["l0"] / (17 * 64) + t["Rc"] - t["R"]).to_numpy(), rel=1e-12)
    unit = measure_srr(model, x, rate="unit")
    assert unit.eps == pytest.approx(0.1)
    with torch.no_grad():
        states = model.forward_layers(x, layernorm="pre").layers
    for ell, (state, u) in enumerate(zip(states, model.subspaces())):
        r, rc = _naive_unit_terms(state.z_out, u.detach())
        assert unit.table.iloc[ell]["R"] == pytest.approx(r, rel=1e-9)
        assert unit.table.iloc[ell]["Rc"] == pytest.approx(rc, rel=1e-9)
        # both_rates gives the same unit rates from the gamma1 protocol's pass
        assert base.table.iloc[ell]["Rc_unit"] == pytest.approx(rc, rel=1e-9)
    for bad, match in (({"layernorm": "pre-only"}, "layernorm"), ({"sparsity": "ratio"}, "sparsity"),
                       ({"rate": "gamma2"}, "rate")):
        with pytest.raises(ValueError, match=match):
            measure_srr(model, x, **bad)
