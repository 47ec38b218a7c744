"""CRATE models: one implementation parameterised by a table of variants (docs/theory.md §3)."""
from .crate import (
    CRATE,
    LAYERNORM_PROTOCOLS,
    VARIANTS,
    CompressionStep,
    CRATEConfig,
    ISTAStep,
    LayerStates,
    LayerwiseOutput,
    OutputOperator,
    Variant,
    layernorm_protocol,
)
from .official import load_official_crate, read_state_dict
from .registry import SIZES, count_parameters, create_model, list_models, model_config, parse_model_name
from ..rate import compression_rate_gradient  # the crate-g update; after .crate, which srrlab.rate imports

__all__ = [
    "CRATE", "CRATEConfig", "LAYERNORM_PROTOCOLS", "CompressionStep", "ISTAStep", "LayerStates", "LayerwiseOutput",
    "OutputOperator", "SIZES", "VARIANTS", "Variant", "compression_rate_gradient", "count_parameters", "layernorm_protocol", "create_model",
    "list_models", "load_official_crate", "model_config", "parse_model_name", "read_state_dict",
]
