"""The benchmarks' reference implementation of the official CRATE formulation computes what srrlab's
``crate`` computes (the premise of every "vs official" figure); the study-throughput benchmark runs a
small study and reports consistent numbers."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from official_crate import from_srrlab  # benchmarks/ is on the test path (pyproject: pythonpath)
from study_throughput import study_throughput
from vs_official import ref_keys, check_same_outputs

import srrlab


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_official_reference_matches_crate_in_fp64(dropout):
    torch.manual_seed(0)
    ours = srrlab.create_model("crate-digits", depth=2, dim=32, heads=4, dropout=dropout).double().eval()
    ref = from_srrlab(ours).double().eval()
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4])
    a, b = ours(x), ref(x)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    F.cross_entropy(a, y).backward()
    F.cross_entropy(b, y).backward()
    params = ref.state_dict(keep_vars=True)
    for (name, p), key in zip(ours.named_parameters(), ref_keys(ours)):
        torch.testing.assert_close(p.grad, params[key].grad, rtol=1e-10, atol=1e-12, msg=name)


def test_reference_refuses_other_variants_and_benchmark_check_passes():
    with pytest.raises(ValueError, match="official formulation is the 'crate' variant"):
        from_srrlab(srrlab.create_model("crate-t-digits"))
    checks = check_same_outputs("digits", batch=4)
    assert checks["logits_rel_fp64"] < 1e-12 and checks["grads_rel_fp32"] < 1e-4


def test_study_throughput_digits_runs_and_reports_consistent_numbers(tmp_path):
    import sqlite3

    row = study_throughput("digits", 1, models=2, root=tmp_path, epochs=1, dim=32, depth=1, batch_size=256,
                           measures=["srr", "l2", "path-norm"], measure_settings={"max_images": 100, "srr_images": 50})
    assert row["size"] == "digits" and row["workers"] == 1 and row["models"] == 2
    assert row["threads_per_worker"] == max(1, (os.cpu_count() or 1) // 1)
    assert row["wall_s"] > 0
    assert row["models_per_hour"] == pytest.approx(3600 * 2 / row["wall_s"], rel=1e-12)
    assert row["per_model_s"] == pytest.approx(row["wall_s"] / 2, rel=1e-12)
    assert row["epochs"] == 1 and row["epochs_run"] == [1, 1]
    assert row["measures"] == ["srr", "l2", "path-norm"]
    assert row["variants"] == ["crate-c", "crate-n"] and row["statuses"] == {"done": 2}
    assert 0 < row["train_s_sum"] < row["wall_s"] and 0 < row["store_span_s"] <= row["wall_s"]
    study = Path(row["dir"])
    assert study.parent.parent == tmp_path
    with sqlite3.connect(study / "study.sqlite") as db:
        runs = db.execute("SELECT id, status, measures FROM runs").fetchall()
    assert len(runs) == 2
    for run_id, status, measures in runs:
        assert status == "done"
        assert (study / "runs" / run_id / "summary.json").is_file()
        values = json.loads(measures)
        assert set(values) == set(row["measures"]) and all(math.isfinite(v) for v in values.values())


# --------------------------------------------------------------------------------------
# benchmarks/flops.py: the analytic step count equals what FlopCounterMode counts
# --------------------------------------------------------------------------------------
from flops import PARTS, measured_flops, step_flops  # noqa: E402

from srrlab.models import VARIANTS  # noqa: E402

_KEYS = ("forward", "backward", "total")


def _small(variant: str, **overrides):
    torch.manual_seed(0)
    return srrlab.create_model(f"{variant}-digits", depth=2, dim=32, heads=4, **overrides)


def _assert_analytic_equals_measured(model, batch: int = 3, **kwargs):
    analytic, measured = step_flops(model, batch, **kwargs), measured_flops(model, batch)
    assert {k: analytic[k] for k in _KEYS} == measured
    assert measured["total"] > 0


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_step_flops_equal_flop_counter_for_every_variant(variant):
    _assert_analytic_equals_measured(_small(variant))


@pytest.mark.parametrize("variant", [v for v, spec in VARIANTS.items() if not spec.needs_square])
def test_step_flops_equal_flop_counter_when_heads_times_dim_head_is_not_dim(variant):
    model = _small(variant, dim_head=12)
    assert model.config.inner_dim == 48 != model.config.dim
    _assert_analytic_equals_measured(model)


@pytest.mark.parametrize("dim_head", [8, 12])
def test_step_flops_equal_flop_counter_for_official_reference(dim_head):
    ours = _small("crate", dim_head=dim_head)
    ref = from_srrlab(ours)
    ref.config = ours.config
    _assert_analytic_equals_measured(ref)
    assert step_flops(ref, 3) == step_flops(ours.config, 3, official=True)


@pytest.mark.parametrize("variant", ["crate", "crate-fix", "crate-g"])
def test_step_flops_equal_flop_counter_for_other_shapes_and_options(variant):
    model = srrlab.create_model(f"{variant}-digits", image_size=12, patch_size=3, channels=2, num_classes=5,
                                dim=24, depth=1, heads=3, dim_head=5, pool="mean", prenorm=False, eps=0.5)
    _assert_analytic_equals_measured(model, batch=2)


def test_step_flops_count_math_attention_when_cpu_attention_dropout_is_active():
    model = _small("crate", dropout=0.1).train()  # CPU SDPA falls back to its math decomposition
    _assert_analytic_equals_measured(model)
    c = model.config
    one_scores_product = 2 * 3 * c.heads * c.num_tokens**2 * c.dim_head
    counts = {a: step_flops(model, 3, attention=a)["total"] for a in ("tied", "explicit", "sdpa")}
    assert counts["explicit"] == step_flops(model, 3)["total"]
    assert counts["explicit"] - counts["tied"] == counts["sdpa"] - counts["explicit"] == c.depth * one_scores_product
    with pytest.raises(ValueError, match="attention must be one of"):
        step_flops(model, 3, attention="flash")


def test_step_flops_closed_forms_and_parts():
    c, b = _small("crate").config, 3
    n, d, L = c.num_tokens, c.dim, c.depth
    counts = step_flops(c, b)
    for key in ("forward", "backward", "total"):
        assert counts[key] == sum(part[key] for part in counts["parts"].values())
    assert tuple(counts["parts"]) == PARTS
    ista = counts["parts"]["ista"]
    assert ista["forward"] == L * (2 * b * n * d**2 + 2 * d**3)  # A = I + β(Dᵀ − DᵀD), then y·Aᵀ
    assert ista["backward"] == 2 * ista["forward"]
    assert step_flops(c, b, official=True)["parts"]["ista"]["forward"] == L * 3 * 2 * b * n * d**2
    assert counts["parts"]["attention_core"]["forward"] == L * 2 * 2 * b * c.heads * n * n * c.dim_head
    assert counts["parts"]["head"]["forward"] == 2 * b * d * c.num_classes
    assert counts["parts"]["patch_embed"]["backward"] == 2 * 2 * b * c.num_patches * c.patch_dim * d


def test_output_operator_part_is_the_measured_difference_between_variants():
    # crate-c and crate-identity differ only in the output product (s @ Uᵀ): 1 forward, 2 backward;
    # crate-fix's operator is a buffer: 1 backward product.
    c_counts = measured_flops(_small("crate-c"), 3)
    identity, fixed = measured_flops(_small("crate-identity"), 3), measured_flops(_small("crate-fix"), 3)
    part = step_flops(_small("crate-c"), 3)["parts"]["output_op"]
    assert c_counts["forward"] - identity["forward"] == part["forward"]
    assert c_counts["backward"] - identity["backward"] == part["backward"]
    assert c_counts["backward"] - fixed["backward"] == part["backward"] // 2


def test_step_flops_needs_a_config_on_the_reference():
    ref = from_srrlab(_small("crate"))
    with pytest.raises(ValueError, match="ref.config = model.config"):
        step_flops(ref, 3)
    with pytest.raises(ValueError, match="official formulation is the 'crate' variant"):
        step_flops(_small("crate-c").config, 3, official=True)


# -- the suite ------------------------------------------------------------------------------
def test_suite_paired_speedup_and_targets_verdicts():
    import suite

    assert suite.paired_speedup([2.0, 4.0, 3.0], [1.0, 1.0, 3.0]) == 2.0  # median of 2, 4, 1
    results = {
        "step": {"rows": [
            {"size": "tiny", "model": "crate", "speedup_vs_official": 1.6, "peak_fraction": 0.45},
            {"size": "digits", "model": "crate", "speedup_vs_official": 1.2, "peak_fraction": 0.2}]},
        "srr": {"rows": [{"tokens": 197, "speedup": 4.0}, {"tokens": 65, "speedup": 1.1}]},
        "regularizer": {"rows": [{"model": "crate-t-tiny", "mode": "last", "overhead": 0.05},
                                 {"model": "crate-t-digits", "mode": "last", "overhead": 0.30},
                                 {"model": "crate-t-digits", "mode": "all", "overhead": 2.0}]},
    }
    results["step"]["rows"].append({"size": "digits", "model": suite.COMPILED, "speedup_vs_official": 1.5,
                                    "peak_fraction": 0.2})
    got = {t["target"]: (t["met"], t["missed_by"]) for t in suite.targets(results)}
    assert got["`crate` step vs official, tiny"] == (True, None)
    assert got["`crate` step vs official, digits"] == (False, pytest.approx(1.25))
    assert got["`crate` tiny step, fraction of GEMM peak"] == (False, pytest.approx(0.60 / 0.45))
    assert got["SRR measure vs naive, N=197"] == (False, pytest.approx(1.25))
    assert got["SRR measure vs naive, N=65"] == (True, None)
    assert got["regulariser overhead, last layer, crate-t-tiny"] == (True, None)
    assert got["regulariser overhead, last layer, crate-t-digits"] == (False, pytest.approx(3.0))
    assert got["`crate --compile` step vs official, digits"] == (True, None)
    assert len(got) == 8


def test_suite_runs_the_step_section_and_writes_json_and_markdown(tmp_path, monkeypatch):
    import json

    import suite

    monkeypatch.setitem(suite.SHAPES, "digits", dict(batch=8, steps=1))
    monkeypatch.setattr(suite, "VARIANTS", {"crate": None, "crate-t": None})
    results = suite.run_suite(["step", "profile"], ["digits"], 1, tmp_path, with_compile=False)
    rows = {r["model"]: r for r in results["step"]["rows"]}
    assert set(rows) == {"official", "crate", "crate-t"}
    assert rows["official"]["speedup_vs_official"] == 1.0
    assert rows["crate"]["gflop_per_step"] == pytest.approx(flops_step(rows["crate"]) / 1e9)
    assert rows["crate"]["peak_fraction"] is None  # no machine section: no peak
    assert results["step"]["checks"]["digits"]["logits_rel_fp64"] < 1e-12
    kinds = results["profile"]["digits"]["crate"]["kinds"]
    assert sum(kinds.values()) == pytest.approx(1.0) and kinds["matrix products"] > 0
    [target] = results["targets"]
    assert target["target"] == "`crate` step vs official, digits"
    saved = json.loads((tmp_path / f"{results['meta']['date']}.json").read_text())
    assert saved["step"]["rows"][1]["model"] == "crate"
    md = (tmp_path / f"{results['meta']['date']}.md").read_text()
    assert "| digits | crate-t | 8 |" in md and "## Targets" in md
    with pytest.raises(ValueError, match="unknown sections"):
        suite.run_suite(["steps"], ["digits"], 1, tmp_path)


def flops_step(row):
    return step_flops(srrlab.create_model(f"{row['model']}-digits"), row["batch"])["total"]


def test_suite_kendall_section_times_the_table_and_checks_its_target(tmp_path, monkeypatch):
    import functools

    import kendall_uncertainty
    import suite

    small = functools.partial(kendall_uncertainty.measure, n_measures=3, permutations=300, bootstrap=50)
    monkeypatch.setattr(suite.kendall_uncertainty, "measure", small)
    results = suite.run_suite(["kendall"], ["digits"], 1, tmp_path)
    [row] = results["kendall"]["rows"]
    assert row["measures"] == 3 and row["models"] == 64 and row["permutations"] == 300
    assert len(row["table_s_rounds"]) == 1 and row["table_s_median"] == row["table_s_rounds"][0] > 0
    assert {"tau_p", "tau_lo", "tau_hi", "Psi_p"} <= set(row["columns"])
    [target] = results["targets"]
    assert target["goal"] == 10.0 and target["met"] == (row["table_s_median"] <= 10.0)
    md = (tmp_path / f"{results['meta']['date']}.md").read_text()
    assert "## Correlation table with uncertainty" in md and "| ≤ 10.00 s |" in md


# -- grouped training ------------------------------------------------------------------------
def test_group_throughput_runs_and_reports_consistent_numbers():
    import group_throughput
    import suite

    rows = group_throughput.run(["digits"], [1], members=2, repeats=1, epochs=1)
    (r,) = rows
    assert r["members"] == 2 and r["epochs"] == 1 and len(r["alone_s"]) == len(r["grouped_s"]) == 1
    assert r["ratio"] == pytest.approx(r["alone_s"][0] / r["grouped_s"][0])
    assert r["grouped_models_per_h"] == pytest.approx(2 * 3600 / r["grouped_s"][0])
    table = group_throughput.markdown(rows)
    assert f"{r['ratio']:.2f}×" in table and "| digits | 1 | 2 | 1 |" in table
    got = {t["target"]: t for t in suite.targets({"group": {"rows": rows}})}
    verdict = got["grouped vs single training, digits, 1 worker(s)"]
    assert verdict["goal"] == 3.0 and verdict["met"] == (r["ratio"] >= 3.0)


def test_group_throughput_draws_part_times_the_same_values():
    import group_throughput

    row = group_throughput.draws("digits", 2, repeats=1, epochs=1)
    assert isinstance(row["same_values"], bool) and row["mc_samples"] == 2  # equality itself: test_measures_flatness
    assert row["ratio"] == pytest.approx(row["one_by_one_s"] / row["batched_s"])


def test_measure_cost_benchmark_times_the_measures_of_a_preset(tmp_path):
    """benchmarks/measure_cost.py: the preset's settings, every requested measure timed, values those of
    compute_measures on the same model, the JSON written."""
    import measure_cost

    from srrlab.measures import MEASURES, MeasureSettings, compute_measures

    assert set(measure_cost.NEW) <= set(MEASURES) and len(measure_cost.NEW) == 10
    settings = measure_cost.preset_settings("demo", 40)
    assert settings["max_images"] == 40 and settings["mc_samples"] == 2  # the demo preset's, images replaced
    names = ["db-index", "augment-margin", "ww-alpha"]
    out = tmp_path / "cost.json"
    measure_cost.SIZES["demo"] = measure_cost.SIZES["demo"][:4] + (40,)  # 40 images: a quick run
    try:
        measure_cost.main(["--sizes", "demo", "--measures", ",".join(names), "--out", str(out)])
    finally:
        measure_cost.SIZES["demo"] = measure_cost.SIZES["demo"][:4] + (300,)
    result = json.loads(out.read_text())["results"][0]
    assert list(result["seconds"]) == names and all(t >= 0 for t in result["seconds"].values())
    assert result["total_s"] >= sum(result["seconds"].values()) * 0.99
    model, init, x, y = measure_cost.size_inputs("demo", 40)
    assert model.config.depth == 3 and model.config.dim == 64 and tuple(x.shape) == (40, 1, 8, 8)
    again = compute_measures(model, init=init, data=(x, y), measures=names,
                             settings=MeasureSettings.from_dict(settings))
    assert result["values"] == pytest.approx(again)
