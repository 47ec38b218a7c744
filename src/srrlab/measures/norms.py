"""Norm-, spectrum-, margin- and path-based measures (Jiang et al. 2020, App. C; Dziugaite et al. 2020).

All use the weight matrices ``W_1 … W_d`` of :func:`~srrlab.measures.context.weight_matrices`
(chosen by module type; the tied ``U`` counted once; biases, LayerNorm, embeddings and
``crate-fix``'s fixed buffer excluded) through the context's cached fp64 norms. Products of norms
are computed as sums of logarithms, so no measure overflows however deep or large the model.
The margin ``γ`` is :attr:`MeasureContext.margin` (10th percentile of the training margins).
The measures of the matrices alone, and path-norm, are ``network_free``: no LayerNorm is a weight
matrix, and path-norm removes every LayerNorm itself, so ``MeasureSettings.network`` leaves them unchanged;
the margin-based ones evaluate the chosen network's forward.

Path-norm convention (see :func:`path_norm_log` and ``docs/measures.md``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..models import CRATE
from ..models.crate import CompressionStep, CRATELayer, ISTAStep
from .context import MeasureContext
from .registry import register

__all__ = ["path_norm_log"]

_JIANG = "Jiang et al. 2020, App. C"


def _log_sq(norms: torch.Tensor) -> torch.Tensor:
    """``log ‖W_i‖²`` of every matrix, from the norms (fp64)."""
    return 2.0 * torch.log(norms)


def _log_sum_form(log_sq: torch.Tensor) -> float:
    """``log(d · (Π_i ‖W_i‖²)^{1/d}) = log d + mean_i log ‖W_i‖²``."""
    return math.log(len(log_sq)) + log_sq.mean().item()


# -- norms and distances ------------------------------------------------------------------
@register("param-norm", reference=f"{_JIANG}, eq. (42)", network_free=True)
def param_norm(ctx: MeasureContext) -> float:
    """Σ_i ‖W_i‖_F²: squared Frobenius norms of the weight matrices, summed."""
    return (ctx.frobenius_norms ** 2).sum().item()


@register("fro-dist", reference=f"{_JIANG}, eq. (40)", needs_init=True, network_free=True)
def fro_dist(ctx: MeasureContext) -> float:
    """Σ_i ‖W_i − W_i⁰‖_F²: squared Frobenius distances from initialisation, summed."""
    return (ctx.distance_frobenius ** 2).sum().item()


@register("dist-spec-init", reference=f"{_JIANG}, eq. (41)", needs_init=True, network_free=True)
def dist_spec_init(ctx: MeasureContext) -> float:
    """Σ_i ‖W_i − W_i⁰‖₂²: squared spectral distances from initialisation, summed."""
    return (ctx.distance_spectral ** 2).sum().item()


# -- products and sums of norms (log domain) --------------------------------------------------
@register("log-prod-of-spec", reference=f"{_JIANG}, eq. (32)", network_free=True)
def log_prod_of_spec(ctx: MeasureContext) -> float:
    """log Π_i ‖W_i‖₂² (a sum of logs)."""
    return _log_sq(ctx.spectral_norms).sum().item()


@register("log-sum-of-spec", reference=f"{_JIANG}, eq. (35)", network_free=True)
def log_sum_of_spec(ctx: MeasureContext) -> float:
    """log(d · (Π_i ‖W_i‖₂²)^{1/d}), d = number of matrices: the product with the layers rebalanced."""
    return _log_sum_form(_log_sq(ctx.spectral_norms))


@register("log-prod-of-fro", reference=f"{_JIANG}, eq. (37)", network_free=True)
def log_prod_of_fro(ctx: MeasureContext) -> float:
    """log Π_i ‖W_i‖_F² (a sum of logs)."""
    return _log_sq(ctx.frobenius_norms).sum().item()


@register("log-sum-of-fro", reference=f"{_JIANG}, eq. (39)", network_free=True)
def log_sum_of_fro(ctx: MeasureContext) -> float:
    """log(d · (Π_i ‖W_i‖_F²)^{1/d}), d = number of matrices."""
    return _log_sum_form(_log_sq(ctx.frobenius_norms))


def _log_spec_bound(ctx: MeasureContext, numerators: Callable[[], torch.Tensor]) -> float:
    """``log(Π_i ‖W_i‖₂² / γ² · Σ_j n_j / ‖W_j‖₂²)`` with ``n = numerators()``; nan when γ ≤ 0 (``ctx.margin``)."""
    gamma = ctx.margin
    if not gamma > 0:
        return float("nan")
    log_spec_sq = _log_sq(ctx.spectral_norms)
    # Σ_j n_j/‖W_j‖₂² in the log domain too (a log-sum-exp), so huge or tiny norms stay finite.
    log_ratio_sum = torch.logsumexp(torch.log(numerators()) - log_spec_sq, dim=0)
    return (log_spec_sq.sum() - 2.0 * math.log(gamma) + log_ratio_sum).item()


@register("spec-init", reference=f"{_JIANG}, eq. (29) (spec-init-main: the main term of the spectral bound)",
          needs_data=True, needs_init=True)
def spec_init(ctx: MeasureContext) -> float:
    """log(Π_i ‖W_i‖₂² / γ² · Σ_j ‖W_j − W_j⁰‖_F² / ‖W_j‖₂²), γ the 10th-percentile margin; nan if γ ≤ 0.

    Jiang et al.'s main term of the spectral bound (Bartlett et al. 2017 / Neyshabur et al. 2018
    with the distance from initialisation); the full bound's additive log and constant terms are
    dropped, as in Dziugaite et al.'s public code.
    """
    return _log_spec_bound(ctx, lambda: ctx.distance_frobenius ** 2)


@register("spec-orig", reference=f"{_JIANG}, eq. (30) (spec-orig-main: the main term of the spectral bound)",
          needs_data=True)
def spec_orig(ctx: MeasureContext) -> float:
    """log(Π_i ‖W_i‖₂² / γ² · Σ_j ‖W_j‖_F² / ‖W_j‖₂²), γ the 10th-percentile margin; nan if γ ≤ 0."""
    return _log_spec_bound(ctx, lambda: ctx.frobenius_norms ** 2)


@register("fro-over-spec", reference=f"{_JIANG}, eq. (33)", network_free=True)
def fro_over_spec(ctx: MeasureContext) -> float:
    """Σ_i ‖W_i‖_F² / ‖W_i‖₂²: the summed stable ranks."""
    return ((ctx.frobenius_norms / ctx.spectral_norms) ** 2).sum().item()


# -- path-norm ------------------------------------------------------------------------------
def _sq(t: torch.Tensor) -> torch.Tensor:
    return t.detach().double() ** 2


def _no_norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A LayerNorm (or a disabled one) is the identity in the path network: removed with its affine parameters."""
    if not isinstance(module, (nn.LayerNorm, nn.Identity)):
        raise TypeError(f"path-norm: expected a LayerNorm or Identity, got {type(module).__name__}")
    return x


def _linear(module: nn.Module, x: torch.Tensor, bias_scale: float) -> torch.Tensor:
    """``x (W∘W)ᵀ + (b∘b)·bias_scale`` for an ``nn.Linear`` (weights and biases squared)."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"path-norm: expected nn.Linear, got {type(module).__name__}")
    out = x @ _sq(module.weight).t()
    if module.bias is not None:
        out = out + _sq(module.bias) * bias_scale
    return out


def _compression(step: CompressionStep, z: torch.Tensor, bias_scale: float) -> torch.Tensor:
    """The compression step with squared weights, uniform attention and its fixed factor at absolute value."""
    if not isinstance(step, CompressionStep):
        raise TypeError(f"path-norm: expected a CompressionStep, got {type(step).__name__}")
    op = step.operator
    u2 = _sq(step.qkv.weight)  # (K·p, d): (Uᵀ)∘(Uᵀ)
    # Uniform attention: every head's output at every token is the token mean of its values.
    s = (z @ u2.t()).mean(dim=1, keepdim=True).expand(-1, z.shape[1], -1)
    # The output operator S @ O + b: a trained O (and b) squared, a fixed one at absolute value.
    matrix, bias = op.matrix(step), op.bias(step)
    if matrix is None:  # the identity
        update = s
    else:
        update = s @ (_sq(matrix) if op.trains_weight else matrix.detach().double().abs())
    if bias is not None:
        update = update + _sq(bias) * bias_scale
    factor = abs(step.variant.sign * step.alpha) * step.gamma(z.shape[1]) ** 2
    return factor * update


def _ista(step: ISTAStep, y: torch.Tensor, bias_scale: float) -> torch.Tensor:
    """``ReLU(Y + β (Y + Y D²ᵀ) D² + βλ)``: the ISTA step with D squared and its fixed signs dropped."""
    if not isinstance(step, ISTAStep):
        raise TypeError(f"path-norm: expected an ISTAStep, got {type(step).__name__}")
    d2 = _sq(step.weight)
    beta = abs(step.step)
    return F.relu(y + beta * ((y + y @ d2.t()) @ d2) + abs(step.step * step.lambd) * bias_scale)


class _Scaled:
    """A non-negative activation ``exp(log_scale) · value``, rescaled so that max(value) ≤ 1.

    Every map of the path network is affine, ``z ↦ z A + b``; in scaled form the bias enters as
    ``b · exp(−log_scale)`` (``bias_scale``), so depth or large weights never overflow.
    """

    def __init__(self, value: torch.Tensor, log_scale: float = 0.0):
        self.value, self.log_scale = value, log_scale
        self.renormalise()

    @property
    def bias_scale(self) -> float:
        return math.exp(-self.log_scale)

    def renormalise(self) -> None:
        top = self.value.max().item()
        if top > 1.0 and math.isfinite(top):
            self.value = self.value / top
            self.log_scale += math.log(top)


def path_norm_log(model: CRATE) -> float:
    """log of the path-norm of a CRATE model under this project's convention (see module docs).

    The path network is a copy of the model's forward, built module by module (by type), in which

    * every trainable parameter that enters it is squared: ``nn.Linear`` weights and biases, the
      tied ``U`` (at each of its uses: as value map and, in ``crate-c/-n/-t``, output operator),
      ``D`` (as ``D`` and ``Dᵀ``), the CLS token and the positional embedding (added to the
      activations, i.e. biases);
    * every LayerNorm is the identity (removed together with its affine parameters), as in the
      LayerNorm-free forward of docs/theory.md §5;
    * the softmax attention of every head is uniform attention, ``(1/N) 11ᵀ`` over the N tokens:
      the softmax with all scores equal. (Of the fixed, permutation-equivariant, row-stochastic
      token mixers ``a I + (1−a)/N 11ᵀ``, the identity a = 1 would cut every path from the
      patches to the CLS token; the true softmax on the squared network is no sum over paths.)
    * fixed (untrained) coefficients enter at their absolute value: the update factor
      ``|s α γ²|`` (so ``crate-n``'s sign is dropped), the ISTA step ``β``, the threshold ``βλ``
      and the ``−1`` of the ISTA residual, ``crate-fix``'s fixed operator ``|O|``, the mean pool.
    * ReLU is kept; dropout is off.

    The input is the all-ones image and the value is the sum of the logits (Jiang et al. 2020,
    eq. (44): ``Σ_i f_{w²}(1)[i]``, no root, no log). Everything in the path network is
    non-negative, so ReLU passes everything and the value is exactly the sum over all paths from
    an input pixel or a bias to a logit of the product of the squared trainable weights (and
    absolute fixed coefficients) along the path; it grows with every |weight|. On a plain ReLU
    network (non-negative fixed operators, no LayerNorm) it is Jiang's ``f_{w²}(1)``.
    Computed in fp64 with a running log scale, so this log never overflows.

    Raises ValueError for ``crate-g``, whose compression step (a matrix inverse) has no paths.
    """
    if not isinstance(model, CRATE):
        raise TypeError(f"path-norm is defined for CRATE models, got {type(model).__name__}")
    cfg = model.config
    if not cfg.spec.operator.attention:
        raise ValueError(f"path-norm is not defined for {cfg.variant}: its compression step "
                         f"(a matrix inverse) is not a composition of linear maps, ReLU and attention")
    ones = torch.ones(1, cfg.channels, cfg.image_size, cfg.image_size, dtype=torch.float64,
                      device=next(model.parameters()).device)
    with torch.no_grad():
        x = _no_norm(model.patch_norm_in, model.patchify(ones))
        z = _Scaled(_no_norm(model.patch_norm_out, _linear(model.patch_proj, x, 1.0)))
        cls = _sq(model.cls_token).expand(z.value.shape[0], -1, -1) * z.bias_scale
        z.value = torch.cat((cls, z.value), dim=1) + _sq(model.pos_embedding) * z.bias_scale
        z.renormalise()
        for layer in model.layers:
            if not isinstance(layer, CRATELayer):
                raise TypeError(f"path-norm: expected a CRATELayer, got {type(layer).__name__}")
            y = z.value + _compression(layer.attn, _no_norm(layer.norm1, z.value), z.bias_scale)
            z.value = _ista(layer.ista, _no_norm(layer.norm2, y), z.bias_scale)
            z.renormalise()
        pooled = z.value[:, 0] if cfg.pool == "cls" else z.value.mean(dim=1)
        logits = _linear(model.head, _no_norm(model.head_norm, pooled), z.bias_scale)
        total = logits.sum().item()
    return z.log_scale + math.log(total) if total > 0 else float("-inf")


@register("path-norm", reference=f"{_JIANG}, eq. (44); convention for LayerNorm/attention: docs/measures.md",
          network_free=True)  # every LayerNorm is the identity in the path network, whatever the setting
def path_norm(ctx: MeasureContext) -> float:
    """Σ_i f_{w²}(1)[i]: sum of the logits of the squared network on an all-ones image (convention below).

    See :func:`path_norm_log` for the convention. ``crate-g`` (no attention, hence no paths) gives
    nan with a warning. The value is ``exp`` of the log computed without overflow; it is ``inf``
    only beyond the float range (≈1.8e308).
    """
    try:
        log_value = path_norm_log(ctx.model)
    except ValueError as err:
        warnings.warn(f"path-norm is nan: {err}", stacklevel=2)
        return float("nan")
    try:
        return math.exp(log_value)
    except OverflowError:
        return float("inf")


# -- margin -------------------------------------------------------------------------------------
@register("inverse-margin", reference=f"{_JIANG}, eq. (22)", needs_data=True)
def inverse_margin(ctx: MeasureContext) -> float:
    """1/γ², γ the 10th-percentile margin on the training subset; nan (with a warning) when γ ≤ 0."""
    gamma = ctx.margin
    return 1.0 / gamma ** 2 if gamma > 0 else float("nan")
