"""WeightWatcher α / α̂ measures (srrlab.measures.spectrum, Martin & Mahoney 2021) against known spectra."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import srrlab
from srrlab.measures import MEASURES, MeasureContext, MeasureSettings, compute_measures
from srrlab.measures import spectrum  # registers ww-alpha, ww-alpha-hat
from srrlab.measures.spectrum import fit_alpha, layer_alphas

NAMES = ["ww-alpha", "ww-alpha-hat"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _pareto_quantiles(alpha: float, n: int) -> np.ndarray:
    """Exact quantiles of Pareto p(λ) ∝ λ^(−α) on [1, ∞): λ = (1 − u)^(−1/(α−1)), u = (i + ½)/n."""
    u = (np.arange(n) + 0.5) / n
    return (1 - u) ** (-1 / (alpha - 1))


def _pareto_draws(alpha: float, n: int, seed: int) -> np.ndarray:
    u = np.random.default_rng(seed).random(n)
    return (1 - u) ** (-1 / (alpha - 1))


def _orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=gen))
    return q * torch.sign(torch.diagonal(r))


# -- the fit ----------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [2.5, 4.0])
def test_fit_alpha_recovers_a_pareto_exponent(alpha):
    """Exact quantiles (no sampling noise): the library's fit recovers α, above powerlaw 2.0's default cap of 3 too."""
    assert fit_alpha(_pareto_quantiles(alpha, 500)) == pytest.approx(alpha, abs=0.05)


def test_fit_alpha_on_random_pareto_draws():
    # n = 2000 draws: the MLE's standard error (α−1)/√n_tail is ≈ 0.05, so 0.15 is about 3 of them
    assert fit_alpha(_pareto_draws(2.5, 2000, seed=0)) == pytest.approx(2.5, abs=0.15)


def test_fit_alpha_is_quiet_and_handles_degenerate_spectra(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning leaking from powerlaw / numpy fails the test
        value = fit_alpha(_pareto_quantiles(2.5, 200))
        assert math.isfinite(value)
        assert math.isnan(fit_alpha(np.ones(60)))  # a single distinct eigenvalue: no power law
        assert math.isnan(fit_alpha(np.zeros(60)))
        assert fit_alpha(np.r_[np.zeros(40), _pareto_quantiles(2.5, 200)]) == value  # zero eigenvalues dropped
    assert capsys.readouterr().out == ""


def test_squared_singular_values_are_fitted():
    """W = U diag(s) Vᵀ with s² Pareto(α): the matrix's fit recovers α (fitting s instead would give 2α − 1)."""
    gen = torch.Generator().manual_seed(0)
    alpha, n = 2.5, 300
    lam = torch.from_numpy(_pareto_quantiles(alpha, n))
    lam = lam[torch.randperm(n, generator=gen)]
    w = _orthogonal(n, gen) @ torch.diag(lam.sqrt()) @ _orthogonal(n, gen).T
    (record,) = layer_alphas([("w", w)], min_evals=50)
    assert record.name == "w" and record.n_evals == n
    assert record.alpha == pytest.approx(alpha, abs=0.15)
    assert record.lambda_max == pytest.approx(lam.max().item(), rel=1e-9)
    assert record.alpha_hat == record.alpha * math.log10(record.lambda_max)
    assert fit_alpha(lam.sqrt().numpy()) == pytest.approx(2 * alpha - 1, abs=0.3)  # the other reading
    # a rectangular matrix has min(N, M) eigenvalues; the transpose has the same spectrum
    rect = w[:, :120]
    (r1,) = layer_alphas([("r", rect)], min_evals=50)
    (r2,) = layer_alphas([("r", rect.T)], min_evals=50)
    assert r1.n_evals == r2.n_evals == 120 and r1.alpha == pytest.approx(r2.alpha, rel=1e-9)


def test_small_matrices_are_skipped():
    gen = torch.Generator().manual_seed(1)
    mats = [("big", torch.randn(80, 100, dtype=torch.float64, generator=gen)),
            ("small", torch.randn(100, 20, dtype=torch.float64, generator=gen))]
    assert [r.name for r in layer_alphas(mats, min_evals=50)] == ["big"]
    assert [r.name for r in layer_alphas(mats, min_evals=20)] == ["big", "small"]
    assert layer_alphas(mats, min_evals=81) == []


# -- the measures -----------------------------------------------------------------------------
def test_registry_metadata():
    for name in NAMES:
        info = MEASURES[name]
        assert not info.needs_data and not info.needs_init and info.network_free
        assert "Martin & Mahoney 2021" in info.reference and info.description


def test_only_small_matrices_give_nan_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 30), nn.ReLU(), nn.Linear(30, 5))
    with pytest.warns(UserWarning, match=r"spectrum_min_evals = 50.*largest here has 10.*0\.weight 30×10"):
        values = compute_measures(model, measures=NAMES)
    assert all(math.isnan(v) for v in values.values())
    low = compute_measures(model, measures=NAMES, settings=MeasureSettings(spectrum_min_evals=5))
    assert all(math.isfinite(v) for v in low.values())


def test_measures_on_tiny_crate_equal_the_layer_means(monkeypatch):
    torch.manual_seed(0)
    model = srrlab.create_model("crate-t-digits", depth=1, dim=64, heads=4)
    calls = []
    real = spectrum.fit_alpha

    def counting(evals):
        calls.append(len(evals))
        return real(evals)

    monkeypatch.setattr(spectrum, "fit_alpha", counting)
    ctx = MeasureContext(model, settings=MeasureSettings())
    alpha, alpha_hat = MEASURES["ww-alpha"](ctx), MEASURES["ww-alpha-hat"](ctx)
    assert len(calls) == 2, "one fit per kept matrix, shared by both measures through ctx.cache"
    records = layer_alphas(ctx.matrices, 50)
    # the two 64×64 matrices; the 64×4 patch projection and the 10×64 head are skipped
    assert [r.name for r in records] == ["layers.0.attn.qkv.weight", "layers.0.ista.weight"]
    assert all(r.n_evals == 64 for r in records)
    assert math.isfinite(alpha) and math.isfinite(alpha_hat)
    assert alpha == pytest.approx(np.mean([r.alpha for r in records]), rel=1e-12)
    assert alpha_hat == pytest.approx(np.mean([r.alpha * math.log10(r.lambda_max) for r in records]), rel=1e-12)
    # network-free: the protocol's LayerNorm-free copy has the same matrices
    proto = compute_measures(model, measures=NAMES, settings=MeasureSettings(network="protocol"))
    assert proto == {"ww-alpha": alpha, "ww-alpha-hat": alpha_hat}
