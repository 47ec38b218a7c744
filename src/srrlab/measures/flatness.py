"""PAC-Bayes and sharpness (flatness) measures, Jiang et al. 2020, App. C (docs/theory.md §6).

Every measure here perturbs **all trainable parameters** ``w`` (the vector of ``parameters()``
with ``requires_grad``: a tied tensor once; buffers such as ``crate-fix``'s fixed output operator
are not parameters and are never perturbed) and finds the largest perturbation scale at which the
training accuracy on the context's fixed training subset drops by ``target_deviation``:

* PAC-Bayes: ``w + u``, ``u ~ N(0, σ² I)`` — **σ is the standard deviation**: ``u = σ · z`` with
  ``z ~ N(0, I)`` (the public code of Dziugaite et al. 2020 passes σ² as the standard deviation);
  the expected accuracy is a Monte-Carlo mean over ``mc_samples`` draws.
* magnitude-aware PAC-Bayes: per-parameter standard deviation ``σ'|w_i| + ε`` (ε = ``magnitude_eps``).
* sharpness: the worst case over the box ``|u_i| ≤ α`` (magnitude-aware: ``|u_i| ≤ α'(|w_i| + ε)``,
  ε scaled by α' so that the box shrinks to a point as α' → 0), found by projected
  (sign-)gradient ascent on the training cross-entropy.

The scale is found by bisection (geometric midpoints when ``sigma_min > 0``) and cached on the
context, so the ``-init``, ``-orig`` and ``-flatness`` measures of one kind share one search
(:func:`perturbation_scale`). The trained model is never modified: perturbations are applied to a
deep copy. All randomness is drawn from generators seeded by ``settings.seed``, with common random
numbers across the search (draw ``k`` uses the same ``z`` at every σ), so the estimated accuracy is
a deterministic function of the scale. See ``docs/measures.md``.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .context import MeasureContext
from .registry import register

__all__ = [
    "KINDS", "ScaleSearch", "AscentResult", "perturbation_scale", "gaussian_noise", "expected_accuracy",
    "worst_case_accuracy", "bisect_scale",
]

#: The four perturbation searches: kind -> (sharpness?, magnitude-aware?).
KINDS: dict[str, tuple[bool, bool]] = {
    "pacbayes": (False, False),
    "pacbayes-mag": (False, True),
    "sharpness": (True, False),
    "sharpness-mag": (True, True),
}
_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}
_JIANG = "Jiang et al. 2020, 'Fantastic Generalization Measures', App. C"


@dataclass(frozen=True)
class ScaleSearch:
    """The result of one σ (PAC-Bayes) or α (sharpness) search.

    ``scale`` is the σ or α found; ``drop`` the estimated accuracy drop there (unperturbed minus
    mean perturbed accuracy for PAC-Bayes, minus worst-case accuracy for sharpness); ``history``
    the ``(scale, drop)`` pairs in evaluation order; ``converged`` whether ``|drop − target| ≤
    search_tolerance`` was reached within ``search_iterations`` evaluations.
    """

    kind: str
    scale: float
    drop: float
    accuracy: float
    target: float
    converged: bool
    history: tuple[tuple[float, float], ...]

    @property
    def iterations(self) -> int:
        return len(self.history)


@dataclass(frozen=True)
class AscentResult:
    """Worst case found by projected gradient ascent in a box: its training ``accuracy``, the
    perturbation ``u`` that gave it and the box ``radius`` (one tensor per trainable parameter)."""

    accuracy: float
    perturbation: list[torch.Tensor]
    radius: list[torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Randomness and the perturbed copy
# ---------------------------------------------------------------------------------------------
def _generator(seed: int, kind: str, index: int) -> torch.Generator:
    """A CPU generator for draw/restart ``index`` of search ``kind``, derived from ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + _KIND_INDEX[kind] * 100_003 + index) % (2**63 - 1))


def gaussian_noise(weights: list[torch.Tensor], sigma: float, generator: torch.Generator,
                   magnitude_eps: float | None = None) -> list[torch.Tensor]:
    """One draw of the PAC-Bayes perturbation ``u`` for ``weights``.

    ``σ`` is the **standard deviation**: ``u = σ · z``, ``z ~ N(0, I)``; magnitude-aware
    (``magnitude_eps`` given): ``u_i = (σ|w_i| + ε) · z_i``.
    """
    out = []
    for w in weights:
        z = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        std = sigma if magnitude_eps is None else sigma * w.abs() + magnitude_eps
        out.append(std * z)
    return out


class _Perturbed:
    """A deep copy of the context's model whose trainable parameters are set to ``w + u``."""

    def __init__(self, ctx: MeasureContext):
        self.model = copy.deepcopy(ctx.model).eval()
        self.params = ctx.parameters(self.model)
        self.weights = [p.detach().clone() for p in ctx.parameters()]
        if [p.shape for p in self.params] != [w.shape for w in self.weights]:
            raise RuntimeError("the copied model's trainable parameters do not match the original's")

    @torch.no_grad()
    def set(self, perturbation: list[torch.Tensor] | None) -> nn.Module:
        for p, w, u in zip(self.params, self.weights, perturbation or [None] * len(self.params)):
            p.copy_(w if u is None else w + u)
        return self.model


def _perturbed(ctx: MeasureContext) -> _Perturbed:
    key = ("flatness", "perturbed-copy")
    if key not in ctx.cache:
        ctx.cache[key] = _Perturbed(ctx)
    return ctx.cache[key]


# ---------------------------------------------------------------------------------------------
# The two accuracy estimates
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def expected_accuracy(ctx: MeasureContext, sigma: float, magnitude: bool = False, *,
                      samples: int | None = None, kind: str | None = None, first_draw: int = 0) -> float:
    """Monte-Carlo mean training accuracy (on ``ctx.images``, eval mode) of ``w + u``, ``u`` from
    :func:`gaussian_noise` with standard deviation ``σ`` (magnitude-aware: ``σ|w_i| + ε``).

    ``samples`` draws (default ``settings.mc_samples``), numbered from ``first_draw``; draw ``k``
    of ``kind`` always uses the same ``z``, whatever σ (common random numbers).
    """
    s = ctx.settings
    kind = kind or ("pacbayes-mag" if magnitude else "pacbayes")
    work = _perturbed(ctx)
    eps = s.magnitude_eps if magnitude else None
    draws = range(first_draw, first_draw + (samples or s.mc_samples))
    if s.batch_draws and len(draws) > 1:
        noises = [gaussian_noise(work.weights, sigma, _generator(s.seed, kind, k), eps) for k in draws]
        return sum(_batched_accuracies(ctx, work, noises)) / len(noises)
    accs = []
    for k in draws:
        noise = gaussian_noise(work.weights, sigma, _generator(s.seed, kind, k), eps)
        accs.append(ctx.accuracy_of(work.set(noise)))
    work.set(None)
    return sum(accs) / len(accs)


@torch.no_grad()
def _batched_accuracies(ctx: MeasureContext, work: _Perturbed, noises: list[list[torch.Tensor]]) -> list[float]:
    """The training accuracy of ``w + u`` for every draw ``u`` of ``noises``, all draws in one
    ``torch.func.vmap`` forward per image batch (``settings.batch_draws``): the same numbers as one
    forward per draw up to floating-point reassociation (an argmax tie may fall the other way)."""
    from torch.func import functional_call, vmap

    model = work.set(None)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    fixed = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    fixed.update(dict(model.named_buffers()))
    stacked = {n: torch.stack([w + u[i] for u in noises]) for i, (n, w) in enumerate(zip(names, work.weights))}
    forward = vmap(lambda p, x: functional_call(model, {**p, **fixed}, (x,)), in_dims=(0, None))
    bs = ctx.settings.batch_size
    correct = sum((forward(stacked, ctx.images[i:i + bs]).argmax(-1) == ctx.labels[i:i + bs]).double().sum(1)
                  for i in range(0, len(ctx.images), bs))
    return (correct / len(ctx.images)).tolist()


def _ascent_batches(ctx: MeasureContext, generator: torch.Generator) -> list[torch.Tensor]:
    n, b = len(ctx.images), ctx.settings.ascent_batch_size
    perm = torch.randperm(n, generator=generator).to(ctx.device)
    return list(perm.split(b)) if b < n else [perm]


def worst_case_accuracy(ctx: MeasureContext, alpha: float, magnitude: bool = False, *,
                        kind: str | None = None, stop_below: float | None = None) -> AscentResult:
    """Worst training accuracy of ``w + u`` over the box ``|u_i| ≤ r_i`` found by projected ascent.

    ``r_i = α`` (magnitude-aware: ``α(|w_i| + ε)``). Each of ``ascent_restarts`` restarts starts at
    a uniform point of the box and takes ``ascent_steps`` signed-gradient steps
    ``u ← clip(u + η r ⊙ sign(∇_u CE), −r, r)``, ``η = 2.5 / ascent_steps``, on minibatches of
    ``ascent_batch_size`` training images (a fixed seeded order); the accuracy of each restart's
    final point is measured on all of ``ctx.images`` and the worst one is kept. ``stop_below``: skip
    the remaining restarts once an accuracy below it is found (the search only needs to know that).
    """
    s = ctx.settings
    kind = kind or ("sharpness-mag" if magnitude else "sharpness")
    work = _perturbed(ctx)
    radius = [torch.full_like(w, alpha) if not magnitude else alpha * (w.abs() + s.magnitude_eps)
              for w in work.weights]
    step = 2.5 / s.ascent_steps
    best: AscentResult | None = None
    for restart in range(s.ascent_restarts):
        gen = _generator(s.seed, kind, restart)
        u = [(2 * torch.rand(r.shape, generator=gen, dtype=r.dtype).to(r.device) - 1) * r for r in radius]
        batches = _ascent_batches(ctx, gen)
        for t in range(s.ascent_steps):
            idx = batches[t % len(batches)]
            model = work.set(u)
            with torch.enable_grad():
                loss = F.cross_entropy(model(ctx.images[idx]), ctx.labels[idx])
                grads = torch.autograd.grad(loss, work.params, allow_unused=True)
            with torch.no_grad():
                u = [x if g is None else torch.maximum(torch.minimum(x + step * r * g.sign(), r), -r)
                     for x, g, r in zip(u, grads, radius)]
        acc = ctx.accuracy_of(work.set(u))
        if best is None or acc < best.accuracy:
            best = AscentResult(acc, u, radius)
        if stop_below is not None and acc < stop_below:
            break
    work.set(None)
    return best


# ---------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------
def bisect_scale(drop_at: Callable[[float], float], *, target: float, tolerance: float, lo: float, hi: float,
                 iterations: int) -> tuple[float, float, bool, list[tuple[float, float]]]:
    """Bisection for the scale at which ``drop_at(scale)`` (increasing in the scale) equals ``target``.

    Midpoints are geometric (``√(lo·hi)``) while ``lo > 0`` and arithmetic otherwise; stops as soon
    as ``|drop − target| ≤ tolerance`` or after ``iterations`` evaluations. Returns ``(scale, drop,
    converged, history)``; without convergence the evaluated scale whose drop is closest to the
    target.
    """
    history: list[tuple[float, float]] = []
    for _ in range(iterations):
        mid = math.sqrt(lo * hi) if lo > 0 else 0.5 * (lo + hi)
        drop = drop_at(mid)
        history.append((mid, drop))
        if abs(drop - target) <= tolerance:
            return mid, drop, True, history
        if drop > target:
            hi = mid
        else:
            lo = mid
    scale, drop = min(history, key=lambda h: abs(h[1] - target))
    return scale, drop, False, history


def _search(ctx: MeasureContext, kind: str) -> ScaleSearch:
    s = ctx.settings
    sharp, magnitude = KINDS[kind]
    base = ctx.accuracy
    if sharp:
        def drop_at(scale: float) -> float:
            # More restarts can only lower the worst case: once the drop exceeds the target by more
            # than the tolerance the bisection step is decided, so the remaining restarts are skipped.
            stop = base - s.target_deviation - s.search_tolerance
            return base - worst_case_accuracy(ctx, scale, magnitude, kind=kind, stop_below=stop).accuracy
    else:
        def drop_at(scale: float) -> float:
            return base - expected_accuracy(ctx, scale, magnitude, kind=kind)
    scale, drop, converged, history = bisect_scale(
        drop_at, target=s.target_deviation, tolerance=s.search_tolerance, lo=s.sigma_min, hi=s.sigma_max,
        iterations=s.search_iterations)
    if not converged:
        warnings.warn(
            f"{kind} search did not reach an accuracy drop of {s.target_deviation} ± {s.search_tolerance} in "
            f"{s.search_iterations} steps within [{s.sigma_min}, {s.sigma_max}] (training accuracy {base:.3f}); "
            f"using scale {scale:.4g} with drop {drop:.3f}", RuntimeWarning, stacklevel=3)
    return ScaleSearch(kind, scale, drop, base, s.target_deviation, converged, tuple(history))


def perturbation_scale(ctx: MeasureContext, kind: str) -> ScaleSearch:
    """The σ (``pacbayes``, ``pacbayes-mag``) or α (``sharpness``, ``sharpness-mag``) of ``ctx``'s
    model, searched once per context and cached in ``ctx.cache``."""
    if kind not in KINDS:
        raise ValueError(f"unknown perturbation kind {kind!r}; valid: {', '.join(KINDS)}")
    key = ("flatness", kind)
    if key not in ctx.cache:
        ctx.cache[key] = _search(ctx, kind)
    return ctx.cache[key]


# ---------------------------------------------------------------------------------------------
# The bound terms
# ---------------------------------------------------------------------------------------------
def _sq_norm(ctx: MeasureContext, reference: str) -> float:
    w = ctx.parameter_vector
    if reference == "init":
        w = w - ctx.init_parameter_vector
    return float(w.pow(2).sum())


def _mag_kl_term(ctx: MeasureContext, sigma: float, reference: str) -> float:
    """``¼ Σ_i log((ε² + (σ'² + 1)‖v‖²/ω) / (ε² + σ'² v_i²))``, ``v = w − w⁰`` (init) or ``w`` (orig)."""
    v = ctx.parameter_vector
    if reference == "init":
        v = v - ctx.init_parameter_vector
    eps2, s2, omega = ctx.settings.magnitude_eps ** 2, sigma ** 2, v.numel()
    num = eps2 + (s2 + 1.0) * v.pow(2).sum() / omega
    return float(0.25 * torch.log(num / (eps2 + s2 * v.pow(2))).sum())


def _pacbayes_bound(ctx: MeasureContext, reference: str) -> float:
    sigma = perturbation_scale(ctx, "pacbayes").scale
    return _sq_norm(ctx, reference) / (4 * sigma**2) + math.log(ctx.num_train / sigma) + 10


def _sharpness_bound(ctx: MeasureContext, reference: str) -> float:
    alpha = perturbation_scale(ctx, "sharpness").scale
    omega = ctx.parameter_vector.numel()
    return _sq_norm(ctx, reference) * math.log(2 * omega) / (4 * alpha**2) + math.log(ctx.num_train / alpha) + 10


def _pacbayes_mag_bound(ctx: MeasureContext, reference: str) -> float:
    sigma = perturbation_scale(ctx, "pacbayes-mag").scale
    return _mag_kl_term(ctx, sigma, reference) + math.log(ctx.num_train / sigma) + 10


# ---------------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------------
@register("pacbayes-init", reference=f"{_JIANG}, eq. (48) (PAC-Bayes, prior at w⁰)", needs_data=True, needs_init=True)
def pacbayes_init(ctx: MeasureContext) -> float:
    """‖w − w⁰‖²/(4σ²) + log(m/σ) + 10, σ the std of the Gaussian weight noise that costs 0.1 training accuracy."""
    ctx.require_init("pacbayes-init")
    return _pacbayes_bound(ctx, "init")


@register("pacbayes-orig", reference=f"{_JIANG}, eq. (49) (PAC-Bayes, prior at 0)", needs_data=True)
def pacbayes_orig(ctx: MeasureContext) -> float:
    """‖w‖²/(4σ²) + log(m/σ) + 10, σ as for pacbayes-init."""
    return _pacbayes_bound(ctx, "orig")


@register("pacbayes-flatness", reference=f"{_JIANG}, eq. (53) (1/σ²)", needs_data=True)
def pacbayes_flatness(ctx: MeasureContext) -> float:
    """1/σ², σ the std of the Gaussian weight noise that costs 0.1 training accuracy."""
    return 1.0 / perturbation_scale(ctx, "pacbayes").scale ** 2


@register("pacbayes-mag-init", reference=f"{_JIANG}, eq. (56) (magnitude-aware PAC-Bayes, prior at w⁰)",
          needs_data=True, needs_init=True)
def pacbayes_mag_init(ctx: MeasureContext) -> float:
    """¼ Σᵢ log((ε² + (σ'²+1)‖w−w⁰‖²/ω)/(ε² + σ'²(wᵢ−w⁰ᵢ)²)) + log(m/σ') + 10, noise std σ'|wᵢ| + ε."""
    ctx.require_init("pacbayes-mag-init")
    return _pacbayes_mag_bound(ctx, "init")


@register("pacbayes-mag-orig", reference=f"{_JIANG}, eq. (57) (magnitude-aware PAC-Bayes, prior at 0)",
          needs_data=True)
def pacbayes_mag_orig(ctx: MeasureContext) -> float:
    """¼ Σᵢ log((ε² + (σ'²+1)‖w‖²/ω)/(ε² + σ'²wᵢ²)) + log(m/σ') + 10, noise std σ'|wᵢ| + ε."""
    return _pacbayes_mag_bound(ctx, "orig")


@register("pacbayes-mag-flatness", reference=f"{_JIANG}, eq. (61) (1/σ'²)", needs_data=True)
def pacbayes_mag_flatness(ctx: MeasureContext) -> float:
    """1/σ'², σ' the relative noise scale (std σ'|wᵢ| + ε) that costs 0.1 training accuracy."""
    return 1.0 / perturbation_scale(ctx, "pacbayes-mag").scale ** 2


@register("sharpness-init", reference=f"{_JIANG}.3, sharpness-init (after Keskar et al. 2017; Neyshabur et al. 2017)",
          needs_data=True, needs_init=True)
def sharpness_init(ctx: MeasureContext) -> float:
    """‖w − w⁰‖² log(2ω)/(4α²) + log(m/α) + 10, α the box radius whose worst case costs 0.1 training accuracy."""
    ctx.require_init("sharpness-init")
    return _sharpness_bound(ctx, "init")


@register("sharpness-orig", reference=f"{_JIANG}.3, sharpness-orig (after Keskar et al. 2017; Neyshabur et al. 2017)",
          needs_data=True)
def sharpness_orig(ctx: MeasureContext) -> float:
    """‖w‖² log(2ω)/(4α²) + log(m/α) + 10, α as for sharpness-init."""
    return _sharpness_bound(ctx, "orig")


@register("sharpness-flatness", reference=f"{_JIANG}.3, sharpness flatness 1/α²", needs_data=True)
def sharpness_flatness(ctx: MeasureContext) -> float:
    """1/α², α the radius of the box |uᵢ| ≤ α whose worst case costs 0.1 training accuracy."""
    return 1.0 / perturbation_scale(ctx, "sharpness").scale ** 2


@register("sharpness-mag-flatness", reference=f"{_JIANG}.4, magnitude-aware sharpness flatness 1/α'²",
          needs_data=True)
def sharpness_mag_flatness(ctx: MeasureContext) -> float:
    """1/α'², α' the relative radius of the box |uᵢ| ≤ α'(|wᵢ| + ε) whose worst case costs 0.1 training accuracy."""
    return 1.0 / perturbation_scale(ctx, "sharpness-mag").scale ** 2
