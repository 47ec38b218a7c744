"""Complexity measures (docs/theory.md §5–§6): a registry of ``measure(ctx) -> float``, larger = more complex.

Each measure is keyed to its paper and equation (``MEASURES[name].reference``); shared quantities
(weight matrices, their norms, logits, margins) are computed once per model by
:class:`MeasureContext`. See ``docs/measures.md``.
"""
# Registration order is the row order of the correlation table: SRR, whole-vector, norm-based, flatness,
# then the rivals after 2020 (docs/measures.md): adaptive sharpness, curvature, representation, spectrum.
from . import basic  # noqa: F401  (srr, params, l2, l2-dist)
from . import norms  # noqa: F401  (norm, spectral, margin, path-norm)
from . import flatness  # noqa: F401  (PAC-Bayes, sharpness)
from . import adaptive  # noqa: F401  (adaptive sharpness, worst and average case)
from . import curvature  # noqa: F401  (Hessian trace and top eigenvalue)
from . import representation  # noqa: F401  (Davies-Bouldin, mixup and augmentation margins)
from . import spectrum  # noqa: F401  (WeightWatcher alpha and alpha-hat)
from .compute import compute_measures, measure_run, measure_runs
from .context import MeasureContext, MeasureSettings, WeightMatrix, weight_matrices
from .registry import MEASURES, MeasureInfo, get_measure, measure_names, register

__all__ = [
    "MEASURES", "MeasureContext", "MeasureInfo", "MeasureSettings", "WeightMatrix", "compute_measures",
    "get_measure", "measure_names", "measure_run", "measure_runs", "register", "weight_matrices",
]
