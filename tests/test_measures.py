"""The measures framework: registry, context, compute API, whole-vector measures, `srrlab measure`."""
from __future__ import annotations

import copy
import io

import pandas as pd
import pytest
import torch

import srrlab
from srrlab.cli import main as cli
from srrlab.measures import MEASURES, MeasureContext, MeasureSettings, compute_measures, measure_run, weight_matrices
from srrlab.train import TrainConfig, train

ISSUE_MEASURES = [
    "srr", "srr-rate", "srr-sparsity", "srr-fraction", "srr-unit", "params", "l2", "l2-dist", "param-norm", "fro-dist", "dist-spec-init", "log-prod-of-spec",
    "log-sum-of-spec", "log-prod-of-fro", "log-sum-of-fro", "spec-init", "spec-orig", "fro-over-spec", "path-norm",
    "inverse-margin", "pacbayes-init", "pacbayes-orig", "pacbayes-flatness", "pacbayes-mag-init", "pacbayes-mag-orig",
    "pacbayes-mag-flatness", "sharpness-init", "sharpness-orig", "sharpness-flatness", "sharpness-mag-flatness",
    # the rivals after 2020 (issue "The strongest rivals")
    "asharp-max-linf", "asharp-max-l2", "asharp-avg-l2", "hessian-trace", "hessian-top", "db-index", "mixup-margin",
    "augment-margin", "ww-alpha", "ww-alpha-hat",
]


def _pair(variant="crate-c", seed=0):
    torch.manual_seed(seed)
    init = srrlab.create_model(f"{variant}-digits", depth=2, dim=16, heads=2)
    model = copy.deepcopy(init)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, init


def test_registry_holds_every_measure_with_metadata():
    assert list(MEASURES) == ISSUE_MEASURES  # registration order: the correlation table's row order
    assert list(MEASURES)[0] == "srr"
    for name, info in MEASURES.items():
        assert info.name == name and info.reference and info.description, name
    assert MEASURES["srr"].needs_data and not MEASURES["srr"].needs_init
    assert MEASURES["l2-dist"].needs_init and not MEASURES["params"].needs_data


def test_whole_vector_measures(digits):
    model, init = _pair()
    values = compute_measures(model, init=init, data=digits, measures=["params", "l2", "l2-dist"])
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    flat0 = torch.cat([p.detach().double().flatten() for p in init.parameters()])
    assert values["params"] == model.num_parameters() == flat.numel()
    assert values["l2"] == pytest.approx(flat.norm().item(), rel=1e-12)
    assert values["l2-dist"] == pytest.approx((flat - flat0).norm().item(), rel=1e-12)
    # a state dict works as init too
    again = compute_measures(model, init=init.state_dict(), measures="l2-dist")
    assert again["l2-dist"] == pytest.approx(values["l2-dist"], rel=1e-12)


def test_srr_measure_is_measure_srr_on_the_fixed_subset(digits):
    model, _ = _pair("crate-t")
    settings = MeasureSettings(max_images=300, srr_images=120, seed=5)
    value = compute_measures(model, data=digits, measures=["srr"], settings=settings)["srr"]
    gen = torch.Generator().manual_seed(5)
    idx = torch.randperm(len(digits.train), generator=gen)[:300].sort().values
    expected = srrlab.measure_srr(model, digits.train.images[idx][:120]).value
    assert value == pytest.approx(expected, rel=1e-9)
    # its parts and conventions come from the same pass, and add up
    record = {}
    parts = compute_measures(model, data=digits, settings=settings, record=record,
                             measures=["srr", "srr-rate", "srr-sparsity", "srr-fraction", "srr-unit"])
    assert parts["srr"] == pytest.approx(parts["srr-rate"] + parts["srr-sparsity"], rel=1e-12)
    sub = (digits.train.images[idx][:120], digits.train.labels[idx][:120])
    frac = srrlab.measure_srr(model, sub, sparsity="fraction")
    unit = srrlab.measure_srr(model, sub, rate="unit")
    assert parts["srr-fraction"] == pytest.approx(frac.value, rel=1e-9)
    assert parts["srr-unit"] == pytest.approx(unit.value, rel=1e-9)
    assert record == {"protocol": "layernorm=pre sparsity=count rate=gamma1", "measure_network": "trained",
                      "protocol_train_acc": pytest.approx(frac.train_acc), "protocol_images": 120}
    # the protocol is a setting: other LayerNorm readings give other values, named in the record
    record = {}
    value_all = compute_measures(model, data=digits, settings=MeasureSettings(max_images=300, srr_images=120, seed=5,
                                                                              layernorm="all"),
                                 measures="srr", record=record)["srr"]
    assert value_all == pytest.approx(srrlab.measure_srr(model, sub, layernorm="all").value, rel=1e-9)
    assert record["protocol"] == "layernorm=all sparsity=count rate=gamma1"
    # no SRR measure: no SRR pass, no accuracy to record
    record = {}
    compute_measures(model, data=digits, settings=settings, measures="params", record=record)
    assert record["protocol_train_acc"] is None
    # the data order does not matter when all images are used
    perm = torch.randperm(len(digits.train))
    full = MeasureSettings(max_images=None, srr_images=None)
    a = compute_measures(model, data=digits.train, measures="srr", settings=full)["srr"]
    b = compute_measures(model, data=(digits.train.images[perm], digits.train.labels[perm]), measures="srr",
                         settings=full)["srr"]
    assert a == pytest.approx(b, rel=1e-6)


@pytest.mark.filterwarnings("ignore:margin")  # an untrained pair: its margins are not positive
def test_network_setting_evaluates_the_protocol_network(digits):
    model, init = _pair("crate-n")
    with torch.no_grad():  # non-trivial LayerNorms, so removing them changes the network
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 2.0)
    trained = MeasureSettings(max_images=200)
    protocol = MeasureSettings(max_images=200, network="protocol")
    bare = model.without_layernorms("pre")
    ctx = MeasureContext(model, init=init, data=digits, settings=protocol)
    x = ctx.images
    assert torch.equal(ctx.logits, torch.cat([bare(x[i:i + 500]) for i in range(0, len(x), 500)]).detach())
    a = compute_measures(model, init=init, data=digits, settings=trained, measures=["inverse-margin", "params", "srr"])
    b = compute_measures(model, init=init, data=digits, settings=protocol, measures=["inverse-margin", "params", "srr"])
    assert a["srr"] == b["srr"]  # SRR is measured under the protocol either way
    assert b["params"] == a["params"] - sum(p.numel() for n, p in model.named_parameters()
                                            if ".norm1." in n or ".norm2." in n)
    with pytest.raises(ValueError, match="network"):
        MeasureSettings(network="bare")
    with pytest.raises(ValueError, match="layernorm"):
        MeasureSettings(layernorm="post")
    assert MeasureSettings(layernorm=None).layernorm == "none"  # `--set layernorm=none` parses to None


def test_weight_matrices_by_module_type():
    crate, _ = _pair("crate")
    names = [n for n, _ in weight_matrices(crate)]
    assert names == ["patch_proj.weight",
                     "layers.0.attn.qkv.weight", "layers.0.attn.to_out.weight", "layers.0.ista.weight",
                     "layers.1.attn.qkv.weight", "layers.1.attn.to_out.weight", "layers.1.ista.weight",
                     "head.weight"]
    fix, _ = _pair("crate-fix")
    assert all("fixed_out" not in n and "norm" not in n for n, _ in weight_matrices(fix))
    assert len(weight_matrices(fix)) == 1 + 2 * 2 + 1


def test_missing_inputs_and_unknown_names(digits):
    model, init = _pair()
    with pytest.raises(ValueError, match="l2-dist needs init=") as err:
        compute_measures(model, measures=["params", "l2-dist", "srr"])
    assert "srr needs data=" in str(err.value)
    with pytest.raises(ValueError, match="unknown measure 'l3'.*srr"):
        compute_measures(model, measures=["l3"])
    with pytest.raises(ValueError, match="max_images"):
        MeasureSettings(max_images=0)
    with pytest.raises(ValueError, match="unknown measure setting"):
        MeasureSettings.from_dict({"mc_sample": 3})
    ctx = MeasureContext(model)
    with pytest.raises(ValueError, match="needs training data"):
        ctx.images


def test_measure_run_and_cli(tmp_path, digits, capsys):
    run = tmp_path / "run"
    train(TrainConfig(model="crate-n-digits", model_options={"depth": 1, "dim": 16, "heads": 2}, epochs=2,
                      target_ce=None), run, quiet=True, splits=digits)
    row = measure_run(run, ["srr", "params", "l2-dist"], splits=digits)
    assert row["hp.model"] == "crate-n-digits" and row["hp.depth"] == 1 and row["gen.status"] == "completed"
    assert row["gen.gap_ce"] == pytest.approx(row["gen.test_ce"] - row["gen.train_ce"])
    assert row["measure.params"] == srrlab.train.load_run(run).num_parameters()
    assert row["gen.protocol"] == "layernorm=pre sparsity=count rate=gamma1" and row["gen.measure_network"] == "trained"
    assert 0.0 <= row["gen.protocol_train_acc"] <= 1.0
    out = tmp_path / "m.csv"
    assert cli(["measure", str(run), "--measures", "srr,params,l2-dist", "--set", "max_images=2000",
                "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "srr" in printed and str(out) in printed
    table = pd.read_csv(out)
    assert table.loc[0, "measure.srr"] == pytest.approx(row["measure.srr"], rel=1e-9)
    assert "protocol" in printed and "layernorm=pre" in printed
    # measures as rows, the run as a column, values as in the CSV
    rows = {line.split()[0]: line.split()[1:] for line in printed.splitlines()}
    assert printed.splitlines()[0].split() == ["run"] and rows["srr"] == [f"{row['measure.srr']:.4g}"]
    assert rows["params"] == [f"{row['measure.params']:.4g}"]
    import json

    for fmt, parse in (("csv", lambda text: pd.read_csv(io.StringIO(text)).to_dict(orient="records")),
                       ("json", json.loads)):
        assert cli(["measure", str(run), "--measures", "srr,params", "--out", str(out), "--quiet",
                    "--format", fmt]) == 0
        records = parse(capsys.readouterr().out)
        assert len(records) == 1 and records[0]["measure.srr"] == pytest.approx(row["measure.srr"], rel=1e-9)
        assert records[0]["hp.model"] == "crate-n-digits"
    assert cli(["measure", str(run), "--measures", "srr", "--set", "layernorm=none", "--set", "rate=unit",
                "--out", str(out), "--quiet"]) == 0
    assert pd.read_csv(out).loc[0, "gen.protocol"] == "layernorm=none sparsity=count rate=unit"
    capsys.readouterr()
    assert cli(["measure", str(run), "--set", "layernorm=post"]) == 2
    assert "layernorm" in capsys.readouterr().err
    assert cli(["measure", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in MEASURES)
    assert cli(["measure", str(run), "--measures", "nope"]) == 2
    assert "unknown measure 'nope'" in capsys.readouterr().err


def test_measured_population_feeds_the_correlation_table(tmp_path, digits):
    """End to end: a 2×2 grid of runs → measure_runs → correlation_table (the study's data path)."""
    from srrlab.correlation import correlation_table, granulated_kendall
    from srrlab.measures import measure_runs

    runs = []
    for variant in ("crate-c", "crate-n"):
        for lr in (1e-3, 3e-3):
            run = tmp_path / f"{variant}-{lr}"
            train(TrainConfig(model=f"{variant}-digits", model_options={"depth": 1, "dim": 16, "heads": 2},
                              epochs=2, lr=lr, target_ce=None), run, quiet=True, splits=digits)
            runs.append(run)
    table = measure_runs(runs, ["srr", "l2-dist", "log-prod-of-spec"], MeasureSettings(max_images=300))
    assert len(table) == 4 and table["hp.variant"].nunique() == 2 and table["hp.lr"].nunique() == 2
    corr = correlation_table(table, axes=["hp.variant", "hp.lr"], gap="gen.gap_ce")
    assert list(corr.index) == ["srr", "l2-dist", "log-prod-of-spec"]
    assert {"psi.variant", "psi.lr", "tau", "Psi", "cmi"} <= set(corr.columns)
    g = granulated_kendall(table, ["hp.variant", "hp.lr"], "srr", "gen.gap_ce")
    assert corr.loc["srr", "Psi"] == pytest.approx(g.Psi)
    assert corr.loc["srr", "psi.lr"] == pytest.approx(g.psi["lr"])
