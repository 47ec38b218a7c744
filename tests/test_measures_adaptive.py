"""Adaptive sharpness (srrlab.measures.adaptive, Andriushchenko et al. 2023): the worst case against
brute force and closed forms, the average case against a naive Monte-Carlo mean and a closed form,
the invariances (logit scale, ReLU rescaling), the untouched model, validation, and a CRATE end to end."""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

import srrlab
from srrlab.measures import MEASURES, MeasureContext, MeasureSettings, compute_measures
from srrlab.measures import adaptive

NAMES = ["asharp-max-linf", "asharp-max-l2", "asharp-avg-l2"]


# ---------------------------------------------------------------------------------------------
# Models and helpers
# ---------------------------------------------------------------------------------------------
def _logistic(seed: int = 0, n: int = 40) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Logistic regression nn.Linear(4, 2) (10 weights, fp64) on ``n`` random samples."""
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, 4, generator=gen, dtype=torch.double))
        model.bias.copy_(torch.randn(2, generator=gen, dtype=torch.double))
    x = torch.randn(n, 4, generator=gen, dtype=torch.double)
    y = (x @ torch.randn(4, generator=gen, dtype=torch.double) > 0).long()
    return model.eval(), x, y


def _logistic_losses(model: nn.Linear, x, y, deltas: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """L_B(w + δ) for a stack of flat perturbations ``deltas`` (k, 10) of (weight, bias), vectorised."""
    w = model.weight.detach() + deltas[:, :8].reshape(-1, 2, 4)
    b = model.bias.detach() + deltas[:, 8:]
    logits = torch.einsum("kcd,nd->knc", w, x) + b[:, None, :]
    if normalize:
        logits = logits / logits.norm(dim=-1, keepdim=True)
    return torch.nn.functional.cross_entropy(logits.permute(0, 2, 1), y.expand(len(deltas), -1), reduction="none").mean(1)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


class MLP(nn.Module):
    def __init__(self, d_in=5, hidden=8, classes=3, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def _mlp_data(seed=0, n=48, d_in=5, classes=3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=gen, dtype=torch.double), torch.randint(classes, (n,), generator=gen)


class LinearMargin(nn.Module):
    """Logits ``(0, w·x)``: with label 0 the loss is softplus(w·x), increasing in w·x."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        s = x @ self.w
        return torch.stack([torch.zeros_like(s), s], dim=-1)


class Quadratic(nn.Module):
    """Logits ``(0, log(exp(‖w‖²) − 1))``: with label 0 the cross-entropy is exactly ‖w‖²."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x):
        s = self.w.pow(2).sum()
        t = s + torch.log(-torch.expm1(-s))  # log(expm1(s)), stable
        return torch.stack([torch.zeros_like(t), t]).expand(len(x), 2)


def _softplus(t: float) -> float:
    return math.log1p(math.exp(-abs(t))) + max(t, 0.0)


# ---------------------------------------------------------------------------------------------
# Worst case: brute force, random feasible points, closed forms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linf_equals_brute_force_vertex_maximum(seed):
    # CE of a linear model is convex in the weights: the box maximum is at one of its 2^10 vertices.
    model, x, y = _logistic(seed)
    rho = 0.5
    w = _flat(model)
    signs = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=w.numel())), dtype=torch.double)
    rises = _logistic_losses(model, x, y, signs * rho * w.abs()) - _logistic_losses(model, x, y, torch.zeros(1, 10, dtype=torch.double))
    expected = rises.max().item()
    assert expected > 0.01
    value = adaptive.adaptive_sharpness(model, x, y, norm="linf", rho=rho, steps=20, restarts=3, batch_size=len(x),
                                        normalize_logits=False)
    assert value == pytest.approx(expected, rel=1e-3)
    assert value <= expected + 1e-12  # every evaluated point is feasible


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_worst_case_dominates_random_feasible_points(norm):
    model, x, y = _logistic(3)
    rho = 0.5
    w = _flat(model)
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(2000, w.numel(), generator=gen, dtype=torch.double)
    if norm == "linf":  # uniform in the box, and its vertices
        v = torch.cat([(2 * torch.rand(1000, w.numel(), generator=gen, dtype=torch.double) - 1) * rho,
                       torch.sign(z[:1000]) * rho])
    else:  # on the ellipsoid's boundary, and uniform inside it
        sphere = z / z.norm(dim=1, keepdim=True)
        inside = sphere[1000:] * torch.rand(1000, 1, generator=gen, dtype=torch.double) ** (1 / w.numel())
        v = torch.cat([sphere[:1000], inside]) * rho
    base = _logistic_losses(model, x, y, torch.zeros(1, 10, dtype=torch.double))
    random_rises = _logistic_losses(model, x, y, v * w.abs()) - base
    result = adaptive.batch_sharpness(model, x, y, norm=norm, rho=rho, steps=20, restarts=2, normalize_logits=False)
    assert result.rise >= random_rises.max().item() - 1e-12
    assert result.rise > 0
    # the reported perturbation is feasible and gives the reported loss
    delta = torch.cat([result.delta[n].reshape(-1) for n, _ in model.named_parameters()])
    scaled = torch.cat([result.scaled[n].reshape(-1) for n, _ in model.named_parameters()])
    assert torch.allclose(delta, scaled * w.abs())
    assert scaled.abs().max() <= rho * (1 + 1e-12) if norm == "linf" else scaled.norm() <= rho * (1 + 1e-12)
    assert _logistic_losses(model, x, y, delta[None]).item() == pytest.approx(result.loss, rel=1e-12)
    assert result.loss - result.base_loss == pytest.approx(result.rise)
    assert result.base_loss == pytest.approx(base.item(), rel=1e-12)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_closed_form_for_a_loss_increasing_in_a_linear_function(norm):
    # One sample, loss softplus(w·x): the maximum of w·(x + …) over the adaptive ball is
    # w·x + ρ Σ|x_i w_i| (ℓ∞) or w·x + ρ‖x ⊙ w‖₂ (ℓ2, Cauchy–Schwarz).
    w = torch.tensor([0.7, -1.3, 0.2, 2.0, -0.5], dtype=torch.double)
    x = torch.tensor([[0.4, 1.1, -2.0, 0.3, -0.9]], dtype=torch.double)
    y = torch.zeros(1, dtype=torch.long)
    model = LinearMargin(w)
    values = []
    for rho in (0.1, 0.3, 1.0):
        reach = (x[0] * w).abs().sum() if norm == "linf" else (x[0] * w).norm()
        m = float(x[0] @ w)
        expected = _softplus(m + rho * float(reach)) - _softplus(m)
        value = adaptive.adaptive_sharpness(model, x, y, norm=norm, rho=rho, steps=5, normalize_logits=False)
        assert value == pytest.approx(expected, rel=1e-9)
        values.append(value)
    assert values == sorted(values) and values[0] > 0


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_weights_do_not_move_and_restarts_stay_feasible(norm):
    w = torch.tensor([0.7, 0.0, 0.2, 2.0, 0.0], dtype=torch.double)
    x = torch.tensor([[0.4, 1.1, -2.0, 0.3, -0.9]], dtype=torch.double)
    y = torch.zeros(1, dtype=torch.long)
    result = adaptive.batch_sharpness(LinearMargin(w), x, y, norm=norm, rho=0.5, steps=4, restarts=4,
                                      normalize_logits=False)
    assert torch.equal(result.delta["w"][w == 0], torch.zeros(2, dtype=torch.double))
    v = result.scaled["w"]
    assert (v.abs().max() if norm == "linf" else v.norm()) <= 0.5 * (1 + 1e-12)
    reach = (x[0] * w).abs().sum() if norm == "linf" else (x[0] * w).norm()
    m = float(x[0] @ w)
    assert result.rise == pytest.approx(_softplus(m + 0.5 * float(reach)) - _softplus(m), rel=1e-9)


def test_mean_over_consecutive_batches_and_l2_monotone_in_rho():
    model, x, y = _logistic(4, n=40)
    kwargs = dict(norm="l2", steps=10, restarts=2, normalize_logits=True, seed=3)
    per_batch = [adaptive.batch_sharpness(model, x[i:i + 16], y[i:i + 16], rho=0.5, batch_index=k, **kwargs).rise
                 for k, i in enumerate(range(0, 40, 16))]
    value = adaptive.adaptive_sharpness(model, x, y, rho=0.5, batch_size=16, **kwargs)
    assert value == pytest.approx(sum(per_batch) / 3, rel=1e-12)
    values = [adaptive.adaptive_sharpness(model, x, y, rho=rho, batch_size=40, **kwargs) for rho in (0.1, 0.3, 0.6, 1.0)]
    assert all(a < b for a, b in zip(values, values[1:])) and values[0] > 0


# ---------------------------------------------------------------------------------------------
# Average case
# ---------------------------------------------------------------------------------------------
def test_average_equals_naive_monte_carlo_with_the_same_draws():
    model, (x, y) = MLP().double().eval(), _mlp_data()
    rho, samples, bs, seed = 0.2, 7, 20, 5
    value = adaptive.average_sharpness(model, x, y, rho=rho, samples=samples, batch_size=bs, seed=seed)
    assert adaptive.average_sharpness(model, x, y, rho=rho, samples=samples, batch_size=bs, seed=seed) == value
    assert adaptive.average_sharpness(model, x, y, rho=rho, samples=samples, batch_size=bs, seed=seed + 1) != value

    names = [n for n, _ in model.named_parameters()]
    draws = []
    for k in range(samples):  # the documented seeding: draw k from its own CPU generator, parameters in order
        gen = adaptive._generator(seed, "average", k)
        draws.append([torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in model.parameters()])
    rises = []
    for i in range(0, len(x), bs):
        xb, yb = x[i:i + bs], y[i:i + bs]

        def loss(m):
            logits = m(xb)
            return torch.nn.functional.cross_entropy(logits / logits.norm(dim=1, keepdim=True), yb).item()

        perturbed = []
        for z in draws:
            copy_ = copy.deepcopy(model)
            with torch.no_grad():
                for p, zp in zip(copy_.parameters(), z):
                    p.add_(rho * p.abs() * zp)
            perturbed.append(loss(copy_))
        rises.append(sum(perturbed) / samples - loss(model))
    assert len(names) == 4 and len(rises) == 3
    assert value == pytest.approx(sum(rises) / len(rises), rel=1e-10, abs=1e-14)


def test_average_closed_form_for_a_quadratic_loss():
    # CE = ‖w‖² exactly: E‖w + ρ|w|⊙z‖² − ‖w‖² = ρ²‖w‖² (Monte-Carlo over 400 draws of 1000 coordinates).
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1000, generator=gen, dtype=torch.double)
    w = w / w.norm()
    model = Quadratic(w)
    x, y = torch.zeros(2, 1, dtype=torch.double), torch.zeros(2, dtype=torch.long)
    for rho in (0.2, 0.5):
        value = adaptive.average_sharpness(model, x, y, rho=rho, samples=400, normalize_logits=False)
        assert value == pytest.approx(rho**2, rel=0.1)


# ---------------------------------------------------------------------------------------------
# Invariances
# ---------------------------------------------------------------------------------------------
def _scaled(model: MLP, first: float = 1.0, last: float = 1.0) -> MLP:
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.fc1.weight.mul_(first)
        out.fc1.bias.mul_(first)
        out.fc2.weight.mul_(last)
        if first == 1.0:  # scaling the logits: the last bias too
            out.fc2.bias.mul_(last)
    return out


def _all_values(model, x, y, normalize: bool) -> list[float]:
    common = dict(batch_size=24, normalize_logits=normalize, seed=1)
    return [adaptive.adaptive_sharpness(model, x, y, norm="linf", rho=0.05, steps=8, restarts=2, **common),
            adaptive.adaptive_sharpness(model, x, y, norm="l2", rho=0.3, steps=8, restarts=2, **common),
            adaptive.average_sharpness(model, x, y, rho=0.2, samples=5, **common)]


def test_logit_normalisation_removes_the_logit_scale():
    model, (x, y) = MLP(seed=2).double().eval(), _mlp_data(2)
    big = _scaled(model, last=7.0)
    logits, big_logits = model(x), big(x)
    assert adaptive.sharpness_loss(big_logits, y).item() == pytest.approx(adaptive.sharpness_loss(logits, y).item(), rel=1e-12)
    assert adaptive.sharpness_loss(big_logits, y, False).item() != pytest.approx(adaptive.sharpness_loss(logits, y, False).item(), rel=1e-3)
    for a, b in zip(_all_values(model, x, y, True), _all_values(big, x, y, True)):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-12)
    # without the normalisation the scale matters
    assert _all_values(big, x, y, False)[0] != pytest.approx(_all_values(model, x, y, False)[0], rel=1e-2)


@pytest.mark.parametrize("normalize", [True, False])
def test_invariant_to_relu_rescaling(normalize):
    model, (x, y) = MLP(seed=3).double().eval(), _mlp_data(3)
    rescaled = _scaled(model, first=4.0, last=0.25)
    assert torch.allclose(model(x), rescaled(x), rtol=1e-12, atol=1e-12)
    values, rescaled_values = _all_values(model, x, y, normalize), _all_values(rescaled, x, y, normalize)
    assert min(values[:2]) > 0
    for a, b in zip(values, rescaled_values):
        assert b == pytest.approx(a, rel=1e-6, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Registry, the untouched model, validation, determinism
# ---------------------------------------------------------------------------------------------
def test_registered_with_data_and_reference():
    for name in NAMES:
        info = MEASURES[name]
        assert info.needs_data and not info.needs_init
        assert "Andriushchenko" in info.reference and "sharpness" in info.reference
        assert info.description


def test_model_untouched_and_deterministic():
    model, (x, y) = MLP(seed=4).double(), _mlp_data(4)
    model.train()
    before = copy.deepcopy(model.state_dict())
    settings = MeasureSettings(max_images=None, adaptive_batch_size=16, adaptive_steps=4, adaptive_restarts=2,
                               adaptive_samples=3, adaptive_rho_linf=0.05)
    first = compute_measures(model, data=(x, y), measures=NAMES, settings=settings)
    second = compute_measures(model, data=(x, y), measures=NAMES, settings=settings)
    assert first == second
    assert first["asharp-max-linf"] > 0 and first["asharp-max-l2"] > 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
    assert all(p.grad is None for p in model.parameters())
    # the plain functions leave the module's mode as it was
    model.train()
    adaptive.adaptive_sharpness(model, x, y, norm="l2", rho=0.1, steps=2)
    adaptive.average_sharpness(model, x, y, rho=0.1, samples=2)
    assert model.training and model.fc1.training
    # the registered measures use the first adaptive_images images
    ctx = MeasureContext(model, data=(x, y), settings=MeasureSettings(max_images=None, adaptive_images=20,
                                                                       adaptive_batch_size=8, adaptive_steps=3))
    expected = adaptive.adaptive_sharpness(model.eval(), x[:20], y[:20], norm="linf", rho=0.001, steps=3,
                                           restarts=1, batch_size=8, normalize_logits=True, seed=0)
    assert MEASURES["asharp-max-linf"](ctx) == expected


def test_bad_arguments_raise_value_error():
    model, x, y = _logistic(0, n=8)
    ok = dict(norm="linf", rho=0.1)
    bad = [
        ("norm", dict(norm="l3")), ("rho", dict(rho=0.0)), ("rho", dict(rho=-1.0)), ("rho", dict(rho=math.inf)),
        ("steps", dict(steps=0)), ("restarts", dict(restarts=0)), ("batch_size", dict(batch_size=0)),
        ("normalize_logits", dict(normalize_logits="yes")), ("seed", dict(seed=1.5)), ("steps", dict(steps=True)),
    ]
    for name, kwargs in bad:
        with pytest.raises(ValueError, match=name):
            adaptive.adaptive_sharpness(model, x, y, **{**ok, **kwargs})
    with pytest.raises(ValueError, match="samples"):
        adaptive.average_sharpness(model, x, y, rho=0.1, samples=0)
    with pytest.raises(ValueError, match="rho"):
        adaptive.average_sharpness(model, x, y, rho=-0.1)
    with pytest.raises(ValueError, match="labels"):
        adaptive.adaptive_sharpness(model, x, y[:4], **ok)
    with pytest.raises(ValueError, match="model"):
        adaptive.average_sharpness("model", x, y, rho=0.1)
    for name in ("adaptive_rho_linf", "adaptive_rho_l2", "adaptive_rho_average", "adaptive_steps",
                 "adaptive_restarts", "adaptive_samples", "adaptive_images", "adaptive_batch_size"):
        with pytest.raises(ValueError, match=name):
            MeasureSettings(**{name: 0})


# ---------------------------------------------------------------------------------------------
# A tiny CRATE end to end
# ---------------------------------------------------------------------------------------------
def test_tiny_crate_end_to_end():
    torch.manual_seed(0)
    model = srrlab.create_model("crate-t-digits", depth=1, dim=16, heads=2)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 1, 8, 8, generator=gen), torch.randint(10, (32,), generator=gen)
    before = copy.deepcopy(model.state_dict())
    settings = MeasureSettings(max_images=None, adaptive_images=64, adaptive_batch_size=32, adaptive_steps=3,
                               adaptive_samples=3)
    values = compute_measures(model, data=(x, y), measures=NAMES, settings=settings)
    assert all(math.isfinite(v) for v in values.values())
    assert values["asharp-max-linf"] >= 0 and values["asharp-max-l2"] >= 0
    assert values["asharp-max-l2"] > 0
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])
