"""Model names ``<variant>-<size>`` and :func:`create_model`."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..names import SIZES  # model sizes (dim / depth / heads, image defaults): owned there, for the command line
from .crate import CRATE, VARIANTS, CRATEConfig

__all__ = ["SIZES", "create_model", "model_config", "list_models", "parse_model_name"]

_FIELDS = {f.name for f in dataclasses.fields(CRATEConfig)}


def parse_model_name(name: str) -> tuple[str, str]:
    """Split ``"crate-c-tiny"`` into ``("crate-c", "tiny")``; clear error on a bad name."""
    variant, sep, size = name.rpartition("-")
    if not sep or variant not in VARIANTS or size not in SIZES:
        bad = []
        if not sep or variant not in VARIANTS:
            bad.append(f"variant {variant or name!r} is not one of {', '.join(VARIANTS)}")
        if size not in SIZES:
            bad.append(f"size {size!r} is not one of {', '.join(SIZES)}")
        raise ValueError(
            f"unknown model {name!r}: {'; '.join(bad)}. Names are <variant>-<size>, e.g. 'crate-t-tiny'; see `srrlab models`"
        )
    return variant, size


def model_config(name: str, **overrides: Any) -> CRATEConfig:
    """The :class:`CRATEConfig` of model ``name`` with any field overridden by keyword."""
    variant, size = parse_model_name(name)
    unknown = sorted(set(overrides) - _FIELDS)
    if unknown:
        raise TypeError(
            f"unknown model option(s) {', '.join(unknown)}; valid options: {', '.join(sorted(_FIELDS - {'variant'}))}"
        )
    if "variant" in overrides and overrides["variant"] != variant:
        raise TypeError(f"variant={overrides['variant']!r} contradicts the model name {name!r}")
    kwargs = {**SIZES[size], **overrides, "variant": variant}
    if "dim_head" not in overrides:
        kwargs["dim_head"] = None  # re-derive p = dim // heads after overrides of dim or heads
    return CRATEConfig(**kwargs)


def create_model(name: str, **overrides: Any) -> CRATE:
    """Build a model by name, e.g. ``create_model("crate-t-tiny", num_classes=100)``.

    Names are ``<variant>-<size>``; variants are the keys of :data:`~srrlab.models.VARIANTS`,
    sizes the keys of :data:`SIZES`. Any :class:`CRATEConfig` field can be overridden.
    """
    return CRATE(model_config(name, **overrides))


def list_models() -> list[dict[str, Any]]:
    """One row per ``<variant>-<size>``: name, variant, size, dims and trainable parameter count.

    Counts are computed analytically from the configuration (no model is built).
    """
    rows = []
    for size in SIZES:
        for variant in VARIANTS:
            cfg = model_config(f"{variant}-{size}")
            rows.append(
                dict(
                    name=f"{variant}-{size}", variant=variant, size=size, image_size=cfg.image_size,
                    patch_size=cfg.patch_size, channels=cfg.channels, dim=cfg.dim, depth=cfg.depth,
                    heads=cfg.heads, dim_head=cfg.dim_head, tokens=cfg.num_tokens,
                    parameters=count_parameters(cfg),
                )
            )
    return rows


def count_parameters(cfg: CRATEConfig) -> int:
    """Trainable parameters of a model with configuration ``cfg``, counted analytically."""
    d, kp, pd = cfg.dim, cfg.inner_dim, cfg.patch_dim
    embed = 2 * pd + pd * d + d + 2 * d + d + cfg.num_tokens * d  # LN, Linear, LN, cls, pos
    per_layer = (2 * d if cfg.prenorm else 0) * 2 + kp * d + d * d  # 2 LNs, U, D
    per_layer += cfg.spec.operator.num_parameters(cfg)  # e.g. crate's learned output projection
    head = 2 * d + d * cfg.num_classes + cfg.num_classes
    return embed + cfg.depth * per_layer + head
