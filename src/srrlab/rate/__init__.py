"""Coding rates and the sparse rate reduction measure (docs/theory.md §2, §3, §5): see :mod:`srrlab.rate.core`."""
from .core import (
    coding_rate,
    compression_rate,
    compression_rate_grad,
    compression_rate_gradient,
    RATE_CONVENTIONS,
    UNIT_EPS,
    default_eps,
    rate_eps,
    rate_gamma,
    l0,
    logdet_identity_plus,
    srr,
    srr_terms,
)

__all__ = [
    "coding_rate",
    "compression_rate",
    "compression_rate_grad",
    "compression_rate_gradient",
    "RATE_CONVENTIONS",
    "UNIT_EPS",
    "default_eps",
    "rate_eps",
    "rate_gamma",
    "l0",
    "logdet_identity_plus",
    "srr",
    "srr_terms",
]

from .protocol import DEFAULT_PROTOCOL, SPARSITY_FORMS, SRRProtocol  # noqa: E402
from .layerwise import BOTH_RATES_COLUMNS, LAYERWISE_COLUMNS, SRRMeasurement, measure_srr  # noqa: E402

__all__ += ["BOTH_RATES_COLUMNS", "DEFAULT_PROTOCOL", "LAYERWISE_COLUMNS", "SPARSITY_FORMS", "SRRMeasurement",
            "SRRProtocol", "measure_srr"]
