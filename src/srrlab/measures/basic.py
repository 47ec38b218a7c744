"""SRR, its parts and conventions, and the whole-parameter-vector measures."""
from __future__ import annotations

from .context import MeasureContext
from .registry import register


# The SRR measure and its parts [HZX-11]: all read the context's one SRR pass (MeasureContext.srr).
def _layer_mean(values) -> float:
    return float(values.mean())


def _sparsity(ctx: MeasureContext, form: str):
    t = ctx.srr.table
    return ctx.settings.srr_lam * (t["l0"] if form == "count" else t["fraction"])


@register("srr", reference="Hu, Zou & Xu 2024, eq. (11) [HZX-11]; protocol: docs/measures.md", needs_data=True,
          network_free=True)
def srr(ctx: MeasureContext) -> float:
    """μ_SRR: mean over layers of λ‖Z^ℓ‖₀ + R^c(Z^ℓ;U^ℓ) − R(Z^ℓ) on training images, under the settings' protocol.

    Uses the first ``settings.srr_images`` of the context's fixed training subset and the protocol
    of ``settings`` (LayerNorm removal, sparsity form, rate convention), exactly as
    :func:`srrlab.measure_srr`.
    """
    return ctx.srr.value


@register("srr-rate", reference="[HZX-11], its rate term R^c − R", needs_data=True, network_free=True)
def srr_rate(ctx: MeasureContext) -> float:
    """The rate part of μ_SRR: mean over layers of R^c(Z^ℓ;U^ℓ) − R(Z^ℓ) (protocol's rate convention)."""
    t = ctx.srr.table
    return _layer_mean(t["Rc"] - t["R"])


@register("srr-sparsity", reference="[HZX-11], its sparsity term λ‖Z‖₀", needs_data=True, network_free=True)
def srr_sparsity(ctx: MeasureContext) -> float:
    """The sparsity part of μ_SRR: mean over layers of λ‖Z^ℓ‖₀ (protocol's sparsity form)."""
    return _layer_mean(_sparsity(ctx, ctx.settings.sparsity))


@register("srr-fraction", reference="[HZX-11] with ‖Z‖₀ as a fraction (official CRATE analysis code)",
          needs_data=True, network_free=True)
def srr_fraction(ctx: MeasureContext) -> float:
    """μ_SRR with the fraction of non-zero entries in place of their count (other choices as the protocol)."""
    t = ctx.srr.table
    return _layer_mean(_sparsity(ctx, "fraction") + t["Rc"] - t["R"])


@register("srr-unit", reference="[HZX-11] with unit-norm tokens, ε² = 0.01 (official CRATE analysis tool)",
          needs_data=True, network_free=True)
def srr_unit(ctx: MeasureContext) -> float:
    """μ_SRR with the rates in the "unit" convention (unit-norm tokens, ε² = 0.01; other choices as the protocol)."""
    t = ctx.srr.table
    return _layer_mean(_sparsity(ctx, ctx.settings.sparsity) + t["Rc_unit"] - t["R_unit"])


@register("params", reference="Jiang et al. 2020, App. C.1 (VC-dimension based: number of parameters)")
def params(ctx: MeasureContext) -> float:
    """Number of trainable parameters (a tied tensor counted once)."""
    return float(ctx.parameter_vector.numel())


@register("l2", reference="Dziugaite et al. 2020 / Jiang et al. 2020, App. C: ‖w‖₂ of the whole parameter vector")
def l2(ctx: MeasureContext) -> float:
    """Euclidean norm of the whole trainable parameter vector (biases, LayerNorm and embeddings included)."""
    return ctx.parameter_vector.norm().item()


@register("l2-dist", reference="Dziugaite et al. 2020 / Jiang et al. 2020, App. C: ‖w − w⁰‖₂", needs_init=True)
def l2_dist(ctx: MeasureContext) -> float:
    """Euclidean distance of the whole trainable parameter vector from its initial value."""
    return (ctx.parameter_vector - ctx.init_parameter_vector).norm().item()
