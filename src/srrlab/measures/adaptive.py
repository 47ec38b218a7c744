"""Adaptive sharpness, Andriushchenko, Croce, Müller, Hein & Flammarion 2023, "A modern look at the
relationship between sharpness and generalization" (ICML), with the adaptive (elementwise, |w|-scaled)
neighbourhood of ASAM (Kwon et al. 2021).

Loss. For a batch ``B`` of training images with labels,

    L_B(w) = (1/|B|) Σ_{(x, y) ∈ B} CE(g_w(x), y),    g_w(x) = f_w(x) / ‖f_w(x)‖₂  (normalize_logits)
                                                     g_w(x) = f_w(x)               (otherwise),

``f_w(x)`` the network's logits; the per-sample logit normalisation is the paper's, and removes the
scale of the logits (multiplying the last layer by ``c > 0`` leaves ``L_B`` unchanged).

Data: the first ``n = min(adaptive_images, len(images))`` training images, split into consecutive
batches ``B_1, …, B_K`` of ``adaptive_batch_size`` images (the paper's m-sharpness with m = 128; the
last batch may be smaller). Each measure is the plain mean ``(1/K) Σ_k S(B_k)`` of a per-batch value.

``w`` is the vector of every trainable parameter (a tied tensor once); ``|w|`` acts elementwise, and
coordinates with ``w_i = 0`` cannot move.

* Worst-case adaptive ℓ∞ sharpness (``asharp-max-linf``, ρ = ``adaptive_rho_linf``)::

      S_∞(B) = max_{|δ_i| ≤ ρ |w_i|}  L_B(w + δ) − L_B(w)

* Worst-case adaptive ℓ2 sharpness (``asharp-max-l2``, ρ = ``adaptive_rho_l2``)::

      S_2(B) = max_{‖δ ⊘ |w|‖₂ ≤ ρ}  L_B(w + δ) − L_B(w)        (δ_i = 0 where w_i = 0)

* Average-case adaptive sharpness (``asharp-avg-l2``, ρ = ``adaptive_rho_average``)::

      S_avg(B) = E_{z ~ N(0, I)}[ L_B(w + ρ |w| ⊙ z) ] − L_B(w)
               ≈ (1/N) Σ_{k=1}^{N} L_B(w + ρ |w| ⊙ z_k) − L_B(w),   N = adaptive_samples,

  with the same draws ``z_1, …, z_N`` for every batch (common random numbers from ``seed``).

Maximisation. In the scaled variable ``v`` (``δ = |w| ⊙ v``) the feasible set is the plain ball
``‖v‖_p ≤ ρ``, so the projection ``P`` is exact: a clamp to ``[−ρ, ρ]`` (ℓ∞) or a rescaling onto the
sphere (ℓ2). The gradient in ``v`` is ``g̃ = |w| ⊙ ∇_w L_B(w + |w| ⊙ v)``, and the ascent direction is
``d = sign(g̃)`` (ℓ∞) or ``g̃ / ‖g̃‖₂`` (ℓ2). Following Auto-PGD (Croce & Hein 2020) as the paper does,
each start takes ``adaptive_steps`` steps

    z^{k+1} = P(v^k + η d(v^k)),
    v^{k+1} = P(v^k + α (z^{k+1} − v^k) + (1 − α)(v^k − v^{k−1}))        (α = 0.75; v^1 = z^1),

starting with ``η = 2ρ``. At the Auto-PGD checkpoints (fractions 0, 0.22, then increments shrinking by
0.03 down to 0.06, of the step budget) ``η`` is halved and the iterate reset to the best point found
(momentum cleared) when, since the previous checkpoint, fewer than 75% of the steps raised the loss, or
when the step size was not halved at the previous checkpoint and the best loss has not improved. The
best loss over every evaluated (feasible) point is kept. ``adaptive_restarts`` starts: the first at
``v = 0`` (the paper's default), the others at uniform random points of the ball; the per-batch value
is the largest loss rise found over all starts, ≥ 0 because ``v = 0`` is evaluated.

The model is never modified: the perturbed weights are passed by :func:`torch.func.functional_call`
(the model is put in eval mode for the computation and its mode restored). Everything is computed in
the parameters' dtype. All randomness comes from CPU :class:`torch.Generator` s seeded by ``seed``
(draws moved to the model's device), so every value is a deterministic function of the model, the data
and the settings.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .context import MeasureContext
from .registry import register

__all__ = [
    "NORMS", "AdaptiveAscent", "sharpness_loss", "batch_sharpness", "adaptive_sharpness", "average_sharpness",
]

#: The norms of the worst-case neighbourhood.
NORMS = ("linf", "l2")
_STREAMS = {"linf": 0, "l2": 1, "average": 2}
_MOMENTUM = 0.75  # Auto-PGD's α: weight of the new step (1 − α on the previous displacement)
_SUCCESS = 0.75  # Auto-PGD's ρ: fraction of loss-raising steps below which the step size is halved
_ANDRIUSHCHENKO = ("Andriushchenko, Croce, Müller, Hein & Flammarion 2023, 'A modern look at the relationship "
                   "between sharpness and generalization', Sec. 2")


@dataclass(frozen=True)
class AdaptiveAscent:
    """The worst case found on one batch: the loss ``base_loss = L_B(w)``, the largest perturbed loss
    ``loss = L_B(w + δ)`` found, their difference ``rise`` (≥ 0), and the perturbation ``delta`` that gave
    it (parameter name → tensor, ``δ = |w| ⊙ v``) with its scaled form ``scaled`` (``v``)."""

    rise: float
    loss: float
    base_loss: float
    delta: dict[str, torch.Tensor]
    scaled: dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------
# Validation and plumbing
# ---------------------------------------------------------------------------------------------
def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def _check_rho(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"rho must be a positive finite number, got {value!r}")
    return float(value)


def _check_common(model, images, labels, normalize_logits, seed) -> None:
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch module, got {type(model).__name__}")
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"images and labels must be tensors, got {type(images).__name__} and {type(labels).__name__}")
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"images and labels must be non-empty and of equal length, got {len(images)} and {len(labels)}")
    if not isinstance(normalize_logits, bool):
        raise ValueError(f"normalize_logits must be a bool, got {normalize_logits!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable parameters (a tied tensor once, under its first name), detached."""
    out = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not out:
        raise ValueError("model has no trainable parameters to perturb")
    return out


def _generator(seed: int, stream: str, index: int) -> torch.Generator:
    """A CPU generator for draw/start ``index`` of ``stream`` (``linf``, ``l2``, ``average``), from ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + _STREAMS[stream] * 100_019 + index) % (2**63 - 1))


class _EvalMode:
    """Puts ``model`` in eval mode for the computation and restores its modes afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.modes = [m.training for m in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for m, mode in zip(self.model.modules(), self.modes):
            m.training = mode


def sharpness_loss(logits: torch.Tensor, labels: torch.Tensor, normalize_logits: bool = True) -> torch.Tensor:
    """The mean cross-entropy of ``logits`` (divided per sample by their ℓ2 norm when ``normalize_logits``)."""
    if normalize_logits:
        logits = F.normalize(logits, dim=-1)
    return F.cross_entropy(logits, labels)


def _loss_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             normalize_logits: bool) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    device = next(model.parameters()).device  # images given on another device (the CPU) are moved once
    images, labels = images.to(device), labels.to(device)

    def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
        return sharpness_loss(functional_call(model, params, (images,)), labels, normalize_logits)
    return loss


def _batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int):
    return list(zip(images.split(batch_size), labels.split(batch_size)))


# ---------------------------------------------------------------------------------------------
# Worst case
# ---------------------------------------------------------------------------------------------
def _checkpoints(steps: int) -> set[int]:
    """Auto-PGD's checkpoints ⌈p_j · steps⌉: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)."""
    p, out = [0.0, 0.22], set()
    while p[-1] <= 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    for q in p[1:]:
        k = math.ceil(q * steps)
        if 0 < k <= steps:
            out.add(k)
    return out


def _project(v: list[torch.Tensor], norm: str, rho: float) -> list[torch.Tensor]:
    if norm == "linf":
        return [x.clamp(-rho, rho) for x in v]
    length = torch.sqrt(sum(x.pow(2).sum() for x in v))
    scale = torch.clamp(rho / length.clamp_min(torch.finfo(length.dtype).tiny), max=1.0)
    return [x * scale for x in v]


def _direction(g: list[torch.Tensor], norm: str) -> list[torch.Tensor]:
    if norm == "linf":
        return [x.sign() for x in g]
    length = torch.sqrt(sum(x.pow(2).sum() for x in g))
    if not length > 0:
        return [torch.zeros_like(x) for x in g]
    return [x / length for x in g]


def _random_start(weights: list[torch.Tensor], norm: str, rho: float, generator: torch.Generator) -> list[torch.Tensor]:
    """A uniform random point of the ball ‖v‖_p ≤ ρ over the coordinates that can move (w_i ≠ 0)."""
    masks = [w != 0 for w in weights]
    if norm == "linf":
        return [((2 * torch.rand(w.shape, generator=generator, dtype=w.dtype) - 1) * rho).to(w.device) * m
                for w, m in zip(weights, masks)]
    z = [torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device) * m for w, m in zip(weights, masks)]
    dim = int(sum(m.sum() for m in masks))
    length = torch.sqrt(sum(x.pow(2).sum() for x in z))
    if dim == 0 or not length > 0:
        return [torch.zeros_like(w) for w in weights]
    radius = rho * torch.rand((), generator=generator, dtype=torch.float64).item() ** (1.0 / dim)
    return [x * (radius / length) for x in z]


def _ascent(loss_fn, names: list[str], weights: list[torch.Tensor], scale: list[torch.Tensor], v0: list[torch.Tensor],
            norm: str, rho: float, steps: int) -> tuple[float, float, list[torch.Tensor]]:
    """One Auto-PGD run from ``v0``: the loss at ``v0``, the largest loss found and the ``v`` that gave it."""

    def evaluate(v: list[torch.Tensor], with_grad: bool):
        if not with_grad:
            with torch.no_grad():
                return float(loss_fn({n: w + s * x for n, w, s, x in zip(names, weights, scale, v)})), None
        leaves = [x.detach().requires_grad_(True) for x in v]
        with torch.enable_grad():
            loss = loss_fn({n: w + s * x for n, w, s, x in zip(names, weights, scale, leaves)})
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return float(loss.detach()), [torch.zeros_like(x) if g is None else g.detach() for x, g in zip(v, grads)]

    checkpoints = _checkpoints(steps)
    v = v0
    loss, grad = evaluate(v, True)
    start_loss = best_loss = loss
    best_v, best_grad = v, grad
    v_prev = v
    eta = 2 * rho
    successes, last_checkpoint, best_at_checkpoint, halved_last = 0, 0, best_loss, False
    for k in range(steps):
        d = _direction(grad, norm)
        z = _project([x + eta * dx for x, dx in zip(v, d)], norm, rho)
        if v_prev is v:  # the first step, and the first after a reset to the best point
            v_new = z
        else:
            v_new = _project([x + _MOMENTUM * (zx - x) + (1 - _MOMENTUM) * (x - xp) for x, zx, xp in zip(v, z, v_prev)],
                             norm, rho)
        v_prev, v = v, v_new
        new_loss, grad = evaluate(v, with_grad=k < steps - 1)
        successes += new_loss > loss
        loss = new_loss
        if loss > best_loss:
            best_loss, best_v, best_grad = loss, v, grad
        if k + 1 in checkpoints and k < steps - 1:
            halve = successes < _SUCCESS * (k + 1 - last_checkpoint) or (not halved_last and best_loss <= best_at_checkpoint)
            if halve:
                eta /= 2
                v = v_prev = best_v
                loss, grad = best_loss, best_grad
            successes, last_checkpoint, best_at_checkpoint, halved_last = 0, k + 1, best_loss, halve
    return start_loss, best_loss, best_v


def batch_sharpness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, norm: str, rho: float,
                    steps: int = 20, restarts: int = 1, normalize_logits: bool = True, seed: int = 0,
                    batch_index: int = 0) -> AdaptiveAscent:
    """The worst-case adaptive sharpness of one batch ``(images, labels)`` (module docstring): the largest
    ``L_B(w + δ) − L_B(w)`` found over ``|δ_i| ≤ ρ|w_i|`` (``norm="linf"``) or ``‖δ ⊘ |w|‖₂ ≤ ρ``
    (``norm="l2"``) by ``restarts`` Auto-PGD runs of ``steps`` steps. ``batch_index`` selects the random
    starts' stream (batch ``k`` of :func:`adaptive_sharpness`)."""
    _check_common(model, images, labels, normalize_logits, seed)
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(map(repr, NORMS))}, got {norm!r}")
    rho = _check_rho(rho)
    _check_int("steps", steps)
    _check_int("restarts", restarts)
    _check_int("batch_index", batch_index, minimum=0)
    with _EvalMode(model):
        named = _weights(model)
        names, weights = list(named), list(named.values())
        scale = [w.abs() for w in weights]
        loss_fn = _loss_fn(model, images, labels, normalize_logits)
        base, best_loss, best_v = math.nan, -math.inf, None
        for r in range(restarts):
            if r == 0:  # at w: its first loss is L_B(w), and the best is ≥ it
                v0 = [torch.zeros_like(w) for w in weights]
            else:
                v0 = _random_start(weights, norm, rho, _generator(seed, norm, batch_index * 1_009 + r))
            start, loss, v = _ascent(loss_fn, names, weights, scale, v0, norm, rho, steps)
            if r == 0:
                base = start
            if loss > best_loss:
                best_loss, best_v = loss, v
    return AdaptiveAscent(best_loss - base, best_loss, base,
                          {n: s * x for n, s, x in zip(names, scale, best_v)}, dict(zip(names, best_v)))


def adaptive_sharpness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, norm: str, rho: float,
                       steps: int = 20, restarts: int = 1, batch_size: int = 128, normalize_logits: bool = True,
                       seed: int = 0) -> float:
    """Worst-case adaptive sharpness (module docstring): the mean over consecutive batches of
    ``batch_size`` of ``images`` of :func:`batch_sharpness` (the loss rise, ≥ 0)."""
    _check_common(model, images, labels, normalize_logits, seed)
    _check_int("batch_size", batch_size)
    rises = [batch_sharpness(model, x, y, norm=norm, rho=rho, steps=steps, restarts=restarts,
                             normalize_logits=normalize_logits, seed=seed, batch_index=k).rise
             for k, (x, y) in enumerate(_batches(images, labels, batch_size))]
    return sum(rises) / len(rises)


# ---------------------------------------------------------------------------------------------
# Average case
# ---------------------------------------------------------------------------------------------
def _gaussian(weights: list[torch.Tensor], generator: torch.Generator) -> list[torch.Tensor]:
    return [torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device) for w in weights]


@torch.no_grad()
def average_sharpness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, rho: float,
                      samples: int = 20, batch_size: int = 128, normalize_logits: bool = True, seed: int = 0) -> float:
    """Average-case adaptive sharpness (module docstring): the mean over consecutive batches of
    ``batch_size`` of ``(1/N) Σ_k L_B(w + ρ|w| ⊙ z_k) − L_B(w)``, ``N = samples`` Gaussian draws, draw
    ``k`` the same for every batch and every call with this ``seed``."""
    _check_common(model, images, labels, normalize_logits, seed)
    rho = _check_rho(rho)
    _check_int("samples", samples)
    _check_int("batch_size", batch_size)
    batches = _batches(images, labels, batch_size)
    with _EvalMode(model):
        named = _weights(model)
        names, weights = list(named), list(named.values())
        losses = [_loss_fn(model, x, y, normalize_logits) for x, y in batches]
        base = [float(f(named)) for f in losses]
        perturbed = [0.0] * len(batches)
        for k in range(samples):
            z = _gaussian(weights, _generator(seed, "average", k))
            params = {n: w + rho * w.abs() * zk for n, w, zk in zip(names, weights, z)}
            for b, f in enumerate(losses):
                perturbed[b] += float(f(params))
    return sum(p / samples - l0 for p, l0 in zip(perturbed, base)) / len(batches)


# ---------------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------------
def _data(ctx: MeasureContext) -> tuple[torch.Tensor, torch.Tensor]:
    n = min(ctx.settings.adaptive_images, len(ctx.images))
    return ctx.images[:n], ctx.labels[:n]


def _worst(ctx: MeasureContext, norm: str, rho: float) -> float:
    s = ctx.settings
    return adaptive_sharpness(ctx.model, *_data(ctx), norm=norm, rho=rho, steps=s.adaptive_steps,
                              restarts=s.adaptive_restarts, batch_size=s.adaptive_batch_size,
                              normalize_logits=s.normalize_logits, seed=s.seed)


@register("asharp-max-linf", reference=f"{_ANDRIUSHCHENKO}, worst-case adaptive m-sharpness, ℓ∞ "
          "(adaptive neighbourhood of Kwon et al. 2021, ASAM)", needs_data=True)
def asharp_max_linf(ctx: MeasureContext) -> float:
    """Worst-case adaptive ℓ∞ sharpness: mean over batches of max_{|δᵢ| ≤ ρ|wᵢ|} L_B(w+δ) − L_B(w), ρ = adaptive_rho_linf."""
    return _worst(ctx, "linf", ctx.settings.adaptive_rho_linf)


@register("asharp-max-l2", reference=f"{_ANDRIUSHCHENKO}, worst-case adaptive m-sharpness, ℓ2 "
          "(adaptive neighbourhood of Kwon et al. 2021, ASAM)", needs_data=True)
def asharp_max_l2(ctx: MeasureContext) -> float:
    """Worst-case adaptive ℓ2 sharpness: mean over batches of max_{‖δ ⊘ |w|‖₂ ≤ ρ} L_B(w+δ) − L_B(w), ρ = adaptive_rho_l2."""
    return _worst(ctx, "l2", ctx.settings.adaptive_rho_l2)


@register("asharp-avg-l2", reference=f"{_ANDRIUSHCHENKO}, average-case adaptive m-sharpness "
          "(Gaussian δ with std ρ|w|)", needs_data=True)
def asharp_avg_l2(ctx: MeasureContext) -> float:
    """Average-case adaptive sharpness: mean over batches of E_z L_B(w + ρ|w|⊙z) − L_B(w), z ~ N(0, I), ρ = adaptive_rho_average."""
    s = ctx.settings
    return average_sharpness(ctx.model, *_data(ctx), rho=s.adaptive_rho_average, samples=s.adaptive_samples,
                             batch_size=s.adaptive_batch_size, normalize_logits=s.normalize_logits, seed=s.seed)
