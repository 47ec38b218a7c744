"""Curvature measures (srrlab.measures.curvature): Hessian-vector products, Hutchinson's trace and the
top eigenvalue against the exact Hessian of tiny models and a closed form, chunking, determinism, the
untouched model, argument checks, and CRATE end to end."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import srrlab
from srrlab.measures import MEASURES, MeasureSettings, compute_measures
from srrlab.measures import curvature as cv

NAMES = ["hessian-trace", "hessian-top"]
F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# Tiny models whose Hessian is computed exactly, from their parameters as one flat vector
# ---------------------------------------------------------------------------------------------
def mlp(x, w1, b1, w2, b2):
    return torch.tanh(x @ w1.T + b1) @ w2.T + b2


class MLP(nn.Module):
    """3 → 4 (tanh) → 3 classes: 31 parameters."""

    fn = staticmethod(mlp)

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 4), nn.Linear(4, 3)

    def forward(self, x):
        return mlp(x, self.l1.weight, self.l1.bias, self.l2.weight, self.l2.bias)


def tied_mlp(x, w, b1, b2, w3, b3):
    h = torch.tanh(x @ w.T + b1)
    h = torch.tanh(h @ w.T + b2)
    return h @ w3.T + b3


class TiedMLP(nn.Module):
    """3 → 3 → 3 (tanh, both layers one shared weight tensor) → 3 classes: 27 parameters, the
    shared 3×3 weight counted once; ``named_parameters()`` lists l1.weight, l1.bias, l2.bias, l3.*."""

    fn = staticmethod(tied_mlp)

    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 3)
        self.l2.weight = self.l1.weight

    def forward(self, x):
        return self.l3(torch.tanh(self.l2(torch.tanh(self.l1(x)))))


def _problem(cls, seed=4, n=12):
    """``cls()`` in fp64 with N(0, 1) weights, 12 N(0, I) inputs and random labels of 3 classes."""
    gen = torch.Generator().manual_seed(seed)
    model = cls().double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    x = torch.randn(n, 3, generator=gen, dtype=F64)
    y = torch.randint(3, (n,), generator=gen)
    return model, x, y


def exact_hessian(model, x, y):
    """The reference: ``torch.autograd.functional.hessian`` of the mean cross-entropy, written
    with the model's plain function ``model.fn`` of its parameters (in ``parameters()`` order,
    a tied tensor once) as one flat fp64 vector."""
    params = [p.detach() for p in model.parameters()]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def loss(w):
        return F.cross_entropy(model.fn(x, *[c.view(s) for c, s in zip(w.split(sizes), shapes)]), y)

    return torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for p in params]))


@pytest.fixture(scope="module")
def problem():
    model, x, y = _problem(MLP)
    return model, x, y, exact_hessian(model, x, y)


# ---------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls, dim", [(MLP, 31), (TiedMLP, 27)])
def test_hvp_equals_exact_hessian(cls, dim):
    model, x, y = _problem(cls)
    H = exact_hessian(model, x, y)
    hvp = cv.hvp_fn(model, x, y)
    assert hvp.dim == dim == H.shape[0] and hvp.dtype == F64
    V = torch.randn(5, dim, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(hvp(V[0]), H @ V[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hvp(V), V @ H, rtol=1e-10, atol=1e-12)  # H symmetric: rows of V H = H v
    torch.testing.assert_close(hvp(torch.eye(dim, dtype=F64)), H, rtol=1e-10, atol=1e-12)


def test_tie_is_one_parameter():
    """The shared weight is one block of w whose curvature collects both uses: not the Hessian of
    the untied network restricted to l1.weight."""
    model, x, y = _problem(TiedMLP)
    untied = copy.deepcopy(model)
    untied.l2.weight = nn.Parameter(untied.l1.weight.detach().clone())
    h_tied, h_untied = cv.hvp_fn(model, x, y), cv.hvp_fn(untied, x, y)
    assert h_untied.dim == h_tied.dim + 9
    e = torch.zeros(h_tied.dim, dtype=F64)
    e[0] = 1.0  # first entry of the shared weight
    assert not torch.allclose(h_tied(e)[:9], h_untied(torch.cat([e, torch.zeros(9, dtype=F64)]))[:9])


def test_chunked_hvp_equals_unchunked(problem):
    model, x, y, _ = problem
    V = torch.randn(3, 31, generator=torch.Generator().manual_seed(2), dtype=F64)
    whole = cv.hvp_fn(model, x, y, batch_size=100)(V)
    for bs in (1, 5, 11):  # 12 images: chunks of unequal size weighted by their size
        torch.testing.assert_close(cv.hvp_fn(model, x, y, batch_size=bs)(V), whole, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Hutchinson's trace and the top eigenvalue against the exact Hessian
# ---------------------------------------------------------------------------------------------
def _hutchinson_se(H, probes):
    """Standard error of the mean of ``probes`` Rademacher quadratic forms: Var = 2 Σ_{i≠j} H_ij²."""
    var = 2 * (H.pow(2).sum() - H.diagonal().pow(2).sum())
    return math.sqrt(var / probes)


@pytest.mark.parametrize("probes", [2000, 20])
def test_hutchinson_matches_exact_trace(problem, probes):
    model, x, y, H = problem
    estimate = cv.hessian_trace(model, x, y, probes=probes, seed=0, probe_batch=500)
    assert abs(estimate - H.trace().item()) <= 4 * _hutchinson_se(H, probes)


def test_hutchinson_probe_batch_does_not_change_the_probes(problem):
    model, x, y, _ = problem
    one = cv.hessian_trace(model, x, y, probes=20, seed=3)
    assert cv.hessian_trace(model, x, y, probes=20, seed=3, probe_batch=7) == pytest.approx(one, rel=1e-12)
    assert cv.hessian_trace(model, x, y, probes=20, seed=4) != one


def test_top_eigenvalue_matches_eigvalsh(problem):
    model, x, y, H = problem
    evals = torch.linalg.eigvalsh(H)
    top = evals[-1].item()
    assert top > -evals[0].item() > 0  # precondition: indefinite, the positive end dominant
    hvp = cv.hvp_fn(model, x, y)
    assert cv.hessian_top_eigenvalue(hvp, None, None, iterations=500, tol=1e-12) == pytest.approx(top, rel=1e-8)
    default = cv.hessian_top_eigenvalue(hvp, None, None, iterations=20, tol=1e-3, seed=0)
    assert default == pytest.approx(top, rel=1e-2)
    assert default <= top + 1e-12  # a Rayleigh quotient


def test_power_iteration_finds_the_largest_magnitude():
    """The documented behaviour: power iteration converges to the eigenvalue of largest |λ|, with
    its sign; here (an untrained network, a saddle) H's negative end dominates."""
    model, x, y = _problem(MLP, seed=31)
    evals = torch.linalg.eigvalsh(exact_hessian(model, x, y))
    assert -evals[0] > 2 * evals[-1] > 0  # precondition
    top = cv.hessian_top_eigenvalue(model, x, y, iterations=200, tol=1e-12, seed=1)
    assert top == pytest.approx(evals[0].item(), rel=1e-8)


# ---------------------------------------------------------------------------------------------
# A closed form: the linear softmax classifier
# ---------------------------------------------------------------------------------------------
def _linear_softmax_hessian(model, x):
    """H of mean CE for logits ``Wx + b``: mean_i (diag(p_i) − p_i p_iᵀ) ⊗ x̃_i x̃_iᵀ with
    x̃ = (x, 1), in the order of Θ = [W | b] row-major, permuted to the flat (W, b) order."""
    W, b = model.weight.detach(), model.bias.detach()
    c, d = W.shape
    H = torch.zeros(c * (d + 1), c * (d + 1), dtype=F64)
    for xi in x:
        p = torch.softmax(W @ xi + b, 0)
        xt = torch.cat([xi, xi.new_ones(1)])
        H += torch.kron(torch.diag(p) - torch.outer(p, p), torch.outer(xt, xt)) / len(x)
    theta = torch.arange(c * (d + 1)).view(c, d + 1)
    order = torch.cat([theta[:, :d].reshape(-1), theta[:, d]])  # flat (W, b) index → Θ index
    return H[order][:, order]


def test_linear_softmax_closed_form():
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(4, 3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64))
    x = torch.randn(10, 4, generator=gen, dtype=F64)
    y = torch.randint(3, (10,), generator=gen)
    H = _linear_softmax_hessian(model, x)
    hvp = cv.hvp_fn(model, x, y, batch_size=4)
    torch.testing.assert_close(hvp(torch.eye(15, dtype=F64)), H, rtol=1e-10, atol=1e-12)
    p = torch.softmax(model(x).detach(), 1)
    trace = ((1 - p.pow(2).sum(1)) * (x.pow(2).sum(1) + 1)).mean().item()  # tr(A ⊗ x̃x̃ᵀ) = tr(A)‖x̃‖²
    assert H.trace().item() == pytest.approx(trace, rel=1e-12)
    assert abs(cv.hessian_trace(hvp, None, None, probes=2000, probe_batch=1000) - trace) <= 4 * _hutchinson_se(H, 2000)


def test_linear_softmax_one_sample_top_eigenvalue():
    """Two classes, one image: H = (diag(p) − ppᵀ) ⊗ x̃x̃ᵀ has rank one, λ_max = 2 p₀p₁ ‖x̃‖²."""
    gen = torch.Generator().manual_seed(5)
    model = nn.Linear(4, 2).double()
    with torch.no_grad():
        for q in model.parameters():
            q.copy_(torch.randn(q.shape, generator=gen, dtype=F64))
    x = torch.randn(1, 4, generator=gen, dtype=F64)
    p = torch.softmax(model(x).detach()[0], 0)
    expected = (2 * p[0] * p[1] * (x.pow(2).sum() + 1)).item()
    assert cv.hessian_top_eigenvalue(model, x, torch.tensor([1]), iterations=5, tol=1e-12) == pytest.approx(
        expected, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# The measures: registration, settings, determinism, the untouched model, arguments
# ---------------------------------------------------------------------------------------------
def test_registered():
    for name in NAMES:
        info = MEASURES[name]
        assert info.needs_data and not info.needs_init and not info.network_free
        assert info.description and info.reference
    assert "Hutchinson" in MEASURES["hessian-trace"].reference
    assert "power iteration" in MEASURES["hessian-top"].reference
    with pytest.raises(ValueError, match="needs data="):
        compute_measures(MLP(), measures=NAMES)


def test_measures_use_the_settings_and_leave_the_model_alone(problem):
    model, x, y, _ = problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = MeasureSettings(max_images=None, hessian_images=8, hutchinson_probes=6, power_iterations=30,
                               power_tolerance=1e-6, seed=5)
    values = compute_measures(model, data=(x, y), measures=NAMES, settings=settings)
    # the first hessian_images images, the settings' seed, probes and iterations
    assert values["hessian-trace"] == pytest.approx(cv.hessian_trace(model, x[:8], y[:8], probes=6, seed=5), rel=1e-12)
    assert values["hessian-top"] == pytest.approx(
        cv.hessian_top_eigenvalue(model, x[:8], y[:8], iterations=30, tol=1e-6, seed=5), rel=1e-12)
    assert values["hessian-top"] == pytest.approx(torch.linalg.eigvalsh(exact_hessian(model, x[:8], y[:8]))[-1].item(),
                                                  rel=1e-3)
    assert compute_measures(model, data=(x, y), measures=NAMES, settings=settings) == values  # deterministic
    other = compute_measures(model, data=(x, y), measures=NAMES, settings=MeasureSettings(
        max_images=None, hessian_images=8, hutchinson_probes=6, seed=6))
    assert other["hessian-trace"] != values["hessian-trace"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert not model.training


def _frozen():
    m = MLP().double()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: cv.hvp_fn("model", x, y), "model"),
    (lambda m, x, y: cv.hvp_fn(m, x, y[:5]), "images and labels"),
    (lambda m, x, y: cv.hvp_fn(m, x[:0], y[:0]), "images"),
    (lambda m, x, y: cv.hvp_fn(m, x.numpy(), y), "images"),
    (lambda m, x, y: cv.hvp_fn(m, x, y.tolist()), "labels"),
    (lambda m, x, y: cv.hvp_fn(m, x, y, batch_size=0), "batch_size"),
    (lambda m, x, y: cv.hvp_fn(m, x, y, batch_size=True), "batch_size"),
    (lambda m, x, y: cv.hvp_fn(_frozen(), x, y), "trainable"),
    (lambda m, x, y: cv.hvp_fn(m, x, y)(torch.zeros(5, dtype=F64)), "v must"),
    (lambda m, x, y: cv.hvp_fn(m, x, y)(torch.zeros(0, 31, dtype=F64)), "v must"),
    (lambda m, x, y: cv.hessian_trace(m, x, y, probes=0), "probes"),
    (lambda m, x, y: cv.hessian_trace(m, x, y, probe_batch=0), "probe_batch"),
    (lambda m, x, y: cv.hessian_trace(m, x, y, seed=1.5), "seed"),
    (lambda m, x, y: cv.hessian_top_eigenvalue(m, x, y, iterations=0), "iterations"),
    (lambda m, x, y: cv.hessian_top_eigenvalue(m, x, y, tol=-1.0), "tol"),
    (lambda m, x, y: cv.hessian_top_eigenvalue(m, x, y, tol=float("nan")), "tol"),
    (lambda m, x, y: cv.hessian_top_eigenvalue(m, x, y, seed=None), "seed"),
])
def test_bad_arguments(problem, call, match):
    model, x, y, _ = problem
    with pytest.raises(ValueError, match=match):
        call(model, x, y)


# ---------------------------------------------------------------------------------------------
# CRATE end to end (tied U in crate-t / crate-c, a learned output projection in crate)
# ---------------------------------------------------------------------------------------------
def _fd_hvp(model, x, y, v, eps=1e-5):
    """Central difference of the reverse-mode gradient along ``v`` (fp64; the model is not touched)."""
    named = dict(model.named_parameters())
    sizes = [p.numel() for p in named.values()]

    def grad_at(t):
        params = {n: (p.detach() + t * c.view(p.shape)).requires_grad_() for (n, p), c in zip(named.items(), v.split(sizes))}
        loss = F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(params.values()))])

    return (grad_at(eps) - grad_at(-eps)) / (2 * eps)


@pytest.mark.parametrize("variant", ["crate-t", "crate-c", "crate"])
def test_crate_end_to_end(digits, variant):
    torch.manual_seed(0)
    model = srrlab.create_model(f"{variant}-digits", depth=1, dim=16, heads=2).eval()
    x, y = digits.train.images[:40], digits.train.labels[:40]
    before = copy.deepcopy(model.state_dict())
    settings = MeasureSettings(max_images=None, hessian_images=32, hutchinson_probes=4, power_iterations=5)
    values = compute_measures(model, data=(x, y), measures=NAMES, settings=settings)
    assert all(math.isfinite(v) for v in values.values()), values
    assert values["hessian-top"] > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # The products on the real network (tied U acting as several operators) against a finite difference.
    m64 = copy.deepcopy(model).double()
    x64, y8 = x[:8].double(), y[:8]
    hvp = cv.hvp_fn(m64, x64, y8, batch_size=3)
    assert hvp.dim == sum(p.numel() for p in model.parameters())
    v = torch.randn(hvp.dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    hv = hvp(v)
    torch.testing.assert_close(hv, _fd_hvp(m64, x64, y8, v), rtol=1e-6, atol=1e-6 * hv.abs().max().item())


def test_crate_protocol_network(digits):
    model = srrlab.create_model("crate-t-digits", depth=1, dim=16, heads=2).eval()
    settings = MeasureSettings(max_images=None, hessian_images=16, hutchinson_probes=2, power_iterations=3,
                               network="protocol")
    values = compute_measures(model, data=(digits.train.images[:16], digits.train.labels[:16]), measures=NAMES,
                              settings=settings)
    assert all(math.isfinite(v) for v in values.values()), values


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_crate_hvp_on_cuda_matches_cpu(digits):
    model = srrlab.create_model("crate-t-digits", depth=1, dim=16, heads=2).eval().double()
    x, y = digits.train.images[:16].double(), digits.train.labels[:16]
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=F64)
    cpu = cv.hvp_fn(model, x, y)(v)
    gpu = cv.hvp_fn(copy.deepcopy(model).cuda(), x.cuda(), y.cuda())(v.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-9, atol=1e-11)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_products_equal_forward_over_reverse_on_crate(digits, dtype):
    """The reverse-over-reverse products (retained gradient graph, CRATE's CPU attention kernel under a
    double backward) against forward-over-reverse written here: torch.func.jvp of torch.func.grad, which
    runs the attention's plain path."""
    torch.manual_seed(1)
    model = srrlab.create_model("crate-digits", depth=2, dim=16, heads=2).eval().to(dtype)
    x, y = digits.train.images[:24].to(dtype), digits.train.labels[:24]
    params = {n: p.detach() for n, p in model.named_parameters()}
    sizes = [p.numel() for p in params.values()]

    def loss(p):
        return F.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    hvp = cv.hvp_fn(model, x, y, batch_size=10)  # three chunks, each with its own graph
    g = torch.Generator().manual_seed(2)
    for _ in range(3):  # the retained graphs serve every product
        v = torch.randn(hvp.dim, generator=g, dtype=dtype)
        tangent = {n: c.view(p.shape) for (n, p), c in zip(params.items(), v.split(sizes))}
        ref = torch.func.jvp(torch.func.grad(loss), (params,), (tangent,))[1]
        ref = torch.cat([ref[n].reshape(-1) for n in params])
        tol = 1e-10 if dtype == F64 else 2e-4
        torch.testing.assert_close(hvp(v), ref, rtol=tol, atol=tol * ref.abs().max().item())
