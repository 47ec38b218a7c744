"""PAC-Bayes and sharpness measures (srrlab.measures.flatness): σ as a standard deviation, the
searches, the ascent, the bound formulas, caching, reproducibility and the untouched model."""
from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import srrlab
from srrlab.measures import MEASURES, MeasureContext, MeasureSettings, compute_measures
from srrlab.measures import flatness as fl

NAMES = [
    "pacbayes-init", "pacbayes-orig", "pacbayes-flatness", "pacbayes-mag-init", "pacbayes-mag-orig",
    "pacbayes-mag-flatness", "sharpness-init", "sharpness-orig", "sharpness-flatness", "sharpness-mag-flatness",
]
PROBIT_90 = 1.2815515655446004  # Φ⁻¹(0.9)


# ---------------------------------------------------------------------------------------------
# Toy models with known answers
# ---------------------------------------------------------------------------------------------
class IndexModel(nn.Module):
    """Sample j (input: the integer j) has logits ``(0, w_j − c_j)``; every label is 1.

    Sample j is classified correctly iff its parameter margin ``w_j + u_j − c_j`` is positive, so
    Gaussian noise of std σ flips it with probability Φ(−(w_j − c_j)/σ) and the worst case in the
    box |u_j| ≤ α flips exactly the samples with ``w_j − c_j ≤ α``.
    """

    def __init__(self, w: torch.Tensor, c: float | torch.Tensor = 0.0):
        super().__init__()
        self.w = nn.Parameter(w.clone().float())
        self.register_buffer("c", torch.broadcast_to(torch.as_tensor(c, dtype=torch.float32), w.shape).clone())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        margin = self.w[idx] - self.c[idx]
        return torch.stack([torch.zeros_like(margin), margin], dim=-1)


def _toy_ctx(w, c=0.0, **settings) -> MeasureContext:
    model = IndexModel(w, c)
    n = len(w)
    data = (torch.arange(n), torch.ones(n, dtype=torch.long))
    # Full-batch ascent: every coordinate gets all its sign steps.
    settings = {"ascent_batch_size": 4096, "max_images": None, **settings}
    return MeasureContext(model, data=data, settings=MeasureSettings(**settings))


# ---------------------------------------------------------------------------------------------
# A tiny trained CRATE (trained once per module)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = srrlab.create_model("crate-t-digits", depth=1, dim=16, heads=2)
    init = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = digits.train.images, digits.train.labels
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(len(x), (128,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, init, digits.train


SETTINGS = dict(max_images=400, mc_samples=8, seed=3)


def _ctx(trained, **overrides) -> MeasureContext:
    model, init, data = trained
    return MeasureContext(model, init=init, data=data, settings=MeasureSettings(**{**SETTINGS, **overrides}))


@pytest.fixture(scope="module")
def computed(trained):
    """Every flatness measure of the tiny model on one context (the searches run once)."""
    model, _, _ = trained
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ctx = _ctx(trained)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every search must converge on this model
        values = {name: MEASURES[name](ctx) for name in NAMES}
    return ctx, values, before


def test_registered_with_metadata():
    for name in NAMES:
        info = MEASURES[name]
        assert info.needs_data and info.reference.startswith("Jiang et al. 2020") and info.description
        assert info.needs_init == name.endswith("-init")


# ---------------------------------------------------------------------------------------------
# σ is the standard deviation
# ---------------------------------------------------------------------------------------------
def test_gaussian_noise_sigma_is_the_standard_deviation():
    gen = torch.Generator().manual_seed(0)
    w = torch.zeros(200_000)
    u = fl.gaussian_noise([w], 0.3, gen)[0]
    assert u.std().item() == pytest.approx(0.3, rel=0.01)  # σ² would give 0.09
    assert u.mean().abs().item() < 0.003
    w = torch.full((200_000,), -2.0)
    u = fl.gaussian_noise([w], 0.3, gen, magnitude_eps=0.05)[0]
    assert u.std().item() == pytest.approx(0.3 * 2.0 + 0.05, rel=0.01)


def test_pacbayes_search_finds_the_std_on_a_toy_with_a_known_answer():
    # Every sample has margin 1: the accuracy under N(0, σ²) noise is Φ(1/σ), which drops by
    # 0.1 at σ = 1/Φ⁻¹(0.9) = 0.780 (passing σ² as the std would give √0.780 = 0.883).
    ctx = _toy_ctx(torch.ones(2000), mc_samples=4, search_tolerance=0.005)
    assert ctx.accuracy == 1.0
    sigma = fl.perturbation_scale(ctx, "pacbayes").scale
    assert sigma == pytest.approx(1 / PROBIT_90, abs=0.025)
    # magnitude-aware: std σ'|w| + ε = σ' + ε
    sigma_mag = fl.perturbation_scale(ctx, "pacbayes-mag").scale
    assert sigma_mag + ctx.settings.magnitude_eps == pytest.approx(1 / PROBIT_90, abs=0.025)


def test_sharpness_search_finds_the_box_radius_on_a_toy_with_a_known_answer():
    # margins spread uniformly over [0.5, 1.5]: the worst case in |u| ≤ α flips the samples with
    # margin ≤ α, a fraction of 0.1 at α = 0.6.
    ctx = _toy_ctx(torch.linspace(0.5, 1.5, 1000))
    found = fl.perturbation_scale(ctx, "sharpness")
    assert found.converged and found.scale == pytest.approx(0.6, abs=0.015)
    worst = fl.worst_case_accuracy(ctx, 0.8)
    assert worst.accuracy == pytest.approx(0.7, abs=0.002)
    assert all(torch.equal(u, -r) for u, r in zip(worst.perturbation, worst.radius))  # ascent reached the corner


# ---------------------------------------------------------------------------------------------
# The search on a trained model
# ---------------------------------------------------------------------------------------------
def test_search_reaches_its_target_deviation(computed):
    ctx, _, _ = computed
    s = ctx.settings
    for kind in ("pacbayes", "pacbayes-mag"):
        found = fl.perturbation_scale(ctx, kind)
        assert found.converged and abs(found.drop - s.target_deviation) <= s.search_tolerance
        assert found.accuracy == ctx.accuracy > 0.5
        # an independent Monte-Carlo estimate, other draws and five times as many
        again = fl.expected_accuracy(ctx, found.scale, kind == "pacbayes-mag", samples=40, first_draw=10_000)
        assert ctx.accuracy - again == pytest.approx(s.target_deviation, abs=0.05), kind
    for kind in ("sharpness", "sharpness-mag"):
        found = fl.perturbation_scale(ctx, kind)
        assert found.converged and abs(found.drop - s.target_deviation) <= s.search_tolerance
        worst = fl.worst_case_accuracy(ctx, found.scale, kind == "sharpness-mag")
        assert ctx.accuracy - worst.accuracy >= s.target_deviation - s.search_tolerance


def test_bisection_brackets_consistently(computed):
    ctx, _, _ = computed
    target = ctx.settings.target_deviation
    for kind in fl.KINDS:
        history = fl.perturbation_scale(ctx, kind).history
        assert len(history) <= ctx.settings.search_iterations
        for i, (scale, drop) in enumerate(history):
            for later, _ in history[i + 1:]:
                # too much damage: look below; too little: look above
                assert (later < scale) if drop > target else (later > scale), (kind, history)
        # larger perturbations do more damage, away from the target's noise
        lo = [d for s_, d in history if s_ < 0.5 * history[-1][0]]
        hi = [d for s_, d in history if s_ > 2.0 * history[-1][0]]
        assert all(d < target for d in lo) and all(d > target for d in hi), (kind, history)


def test_bisect_scale_on_a_known_function():
    scale, drop, ok, history = fl.bisect_scale(lambda s: s**2, target=0.1, tolerance=1e-4, lo=1e-6, hi=5.0,
                                               iterations=60)
    assert ok and scale == pytest.approx(math.sqrt(0.1), rel=1e-3) and abs(drop - 0.1) <= 1e-4
    assert history[0][0] == pytest.approx(math.sqrt(5e-6))  # geometric midpoints
    scale, _, ok, history = fl.bisect_scale(lambda s: s, target=0.1, tolerance=1e-3, lo=0.0, hi=1.0, iterations=60)
    assert ok and history[0][0] == 0.5 and scale == pytest.approx(0.1, abs=1e-3)  # arithmetic from 0
    # unreachable target: the closest evaluated scale, not converged
    scale, drop, ok, _ = fl.bisect_scale(lambda s: 0.0 * s, target=0.1, tolerance=1e-3, lo=1e-3, hi=1.0,
                                         iterations=5)
    assert not ok and drop == 0.0


# ---------------------------------------------------------------------------------------------
# Sharpness ascent
# ---------------------------------------------------------------------------------------------
def test_ascent_is_worse_than_random_box_noise_and_stays_in_the_box(trained):
    ctx = _ctx(trained)
    model = ctx.model
    weights = [p.detach() for p in ctx.parameters()]
    for magnitude, alpha in ((False, 2e-3), (True, 2e-2)):
        worst = fl.worst_case_accuracy(ctx, alpha, magnitude)
        eps = ctx.settings.magnitude_eps
        for w, r, u in zip(weights, worst.radius, worst.perturbation):
            expected = alpha * (w.abs() + eps) if magnitude else torch.full_like(w, alpha)
            assert torch.equal(r, expected)
            assert (u.abs() <= r).all()
        gen = torch.Generator().manual_seed(0)
        random_accs = []
        for _ in range(5):
            noisy = copy.deepcopy(model)
            with torch.no_grad():
                for p, r in zip(ctx.parameters(noisy), worst.radius):
                    p.add_((2 * torch.rand(p.shape, generator=gen) - 1) * r)
            random_accs.append(ctx.accuracy_of(noisy))
        assert worst.accuracy <= min(random_accs)
        assert worst.accuracy < ctx.accuracy - 0.05  # the ascent does real damage at this radius


# ---------------------------------------------------------------------------------------------
# Formulas
# ---------------------------------------------------------------------------------------------
def test_formulas_match_a_direct_computation(trained, computed):
    ctx, values, _ = computed
    model, init, data = trained
    w = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    w0 = torch.cat([p.detach().double().flatten() for p in init.parameters()])
    m, omega, eps = len(data), w.numel(), ctx.settings.magnitude_eps
    assert ctx.num_train == m == 1437 and len(ctx.images) == 400  # m is the training-set size
    sigma = fl.perturbation_scale(ctx, "pacbayes").scale
    sigma_mag = fl.perturbation_scale(ctx, "pacbayes-mag").scale
    alpha = fl.perturbation_scale(ctx, "sharpness").scale
    alpha_mag = fl.perturbation_scale(ctx, "sharpness-mag").scale
    d2, n2 = (w - w0).pow(2).sum().item(), w.pow(2).sum().item()

    def mag(v):
        ratio = (eps**2 + (sigma_mag**2 + 1) * v.pow(2).sum() / omega) / (eps**2 + sigma_mag**2 * v.pow(2))
        return 0.25 * ratio.log().sum().item() + math.log(m / sigma_mag) + 10

    expected = {
        "pacbayes-init": d2 / (4 * sigma**2) + math.log(m / sigma) + 10,
        "pacbayes-orig": n2 / (4 * sigma**2) + math.log(m / sigma) + 10,
        "pacbayes-flatness": 1 / sigma**2,
        "pacbayes-mag-init": mag(w - w0),
        "pacbayes-mag-orig": mag(w),
        "pacbayes-mag-flatness": 1 / sigma_mag**2,
        "sharpness-init": d2 * math.log(2 * omega) / (4 * alpha**2) + math.log(m / alpha) + 10,
        "sharpness-orig": n2 * math.log(2 * omega) / (4 * alpha**2) + math.log(m / alpha) + 10,
        "sharpness-flatness": 1 / alpha**2,
        "sharpness-mag-flatness": 1 / alpha_mag**2,
    }
    for name in NAMES:
        assert values[name] == pytest.approx(expected[name], rel=1e-9), name
    assert values["pacbayes-orig"] > values["pacbayes-init"]  # ‖w‖ > ‖w − w⁰‖ after 200 steps


def test_init_measures_need_the_initial_weights(trained):
    model, _, data = trained
    with pytest.raises(ValueError, match="needs init="):
        compute_measures(model, data=data, measures=["pacbayes-mag-init"])
    ctx = MeasureContext(model, data=data, settings=MeasureSettings(**SETTINGS))
    with pytest.raises(ValueError, match="initial weights"):
        MEASURES["sharpness-init"](ctx)


# ---------------------------------------------------------------------------------------------
# The model is untouched; caching; reproducibility
# ---------------------------------------------------------------------------------------------
def test_trained_model_is_bit_exactly_unchanged(trained, computed):
    model, _, _ = trained
    _, _, before = computed
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_each_search_runs_once_per_context(trained, monkeypatch):
    calls: list[str] = []
    original = fl._search

    def counting(ctx, kind):
        calls.append(kind)
        return original(ctx, kind)

    monkeypatch.setattr(fl, "_search", counting)
    ctx = _ctx(trained, mc_samples=2, ascent_restarts=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in NAMES + NAMES:
            MEASURES[name](ctx)
    assert sorted(calls) == sorted(fl.KINDS)


def test_same_seed_same_values(trained, computed):
    _, values, _ = computed
    ctx = _ctx(trained)
    again = {name: MEASURES[name](ctx) for name in NAMES}
    assert again == values
    other = _ctx(trained, seed=SETTINGS["seed"] + 1)
    assert fl.perturbation_scale(other, "pacbayes").scale != fl.perturbation_scale(ctx, "pacbayes").scale


def test_flatness_is_larger_for_a_sharper_model():
    # The same weights; model B's margins are smaller (a larger offset c), so smaller
    # perturbations flip its predictions: every flatness measure must be larger for B.
    w = torch.linspace(1.0, 2.0, 1000)
    flat = ["pacbayes-flatness", "pacbayes-mag-flatness", "sharpness-flatness", "sharpness-mag-flatness"]
    a = {n: MEASURES[n](_toy_ctx(w, 0.25, mc_samples=2)) for n in flat}
    b = {n: MEASURES[n](_toy_ctx(w, 0.75, mc_samples=2)) for n in flat}
    for n in flat:
        assert b[n] > 2 * a[n], (n, a[n], b[n])


@pytest.mark.parametrize("magnitude", [False, True])
def test_batched_draws_equal_one_forward_per_draw(trained, magnitude):
    """settings.batch_draws evaluates the same Monte-Carlo draws in one vmapped forward."""
    one, batched = _ctx(trained), _ctx(trained, batch_draws=True)
    n = len(one.images)
    for sigma in (0.01, 0.05, 0.2):
        a = fl.expected_accuracy(one, sigma, magnitude)
        b = fl.expected_accuracy(batched, sigma, magnitude)
        assert b == pytest.approx(a, abs=1.0 / n)  # at most one argmax near-tie per draw may flip
    assert 0.0 < fl.expected_accuracy(batched, 0.05, magnitude) < 1.0
    # the model in the context is untouched and the searches agree
    s_one, s_batched = fl.perturbation_scale(one, "pacbayes"), fl.perturbation_scale(batched, "pacbayes")
    assert s_batched.scale == pytest.approx(s_one.scale, rel=0.05)
