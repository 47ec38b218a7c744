"""How well does a complexity measure rank generalisation? The statistics of docs/theory.md §6.

Input everywhere is a tidy table (:class:`pandas.DataFrame`) with one row per trained model and
columns prefixed ``hp.`` (hyperparameters), ``measure.`` (complexity measures, larger = more
complex) and ``gen.`` (generalisation quantities such as ``gen.gap_ce``). Every function accepts
column names with or without their prefix (``measure="srr"`` or ``"measure.srr"``,
``axes=["lr", "hp.batch_size"]``); unknown names raise one :class:`ValueError` that lists the
available columns. Rows with NaN in the measure or the gap are dropped and counted
(``n_dropped`` in every result), never silently.

Statistics (definitions, conventions and a worked example in ``docs/correlation.md``):

- :func:`kendall_tau`: τ-a of docs/theory.md §6, ``τ = 1/(n(n−1)) Σ_{i≠j} sign(x_i−x_j) sign(y_i−y_j)``, ties
  count 0 (Jiang et al. 2020, Kendall's rank-correlation coefficient).
- :func:`granulated_kendall`: Jiang et al.'s granulated coefficient, per-axis ``ψ_i`` (τ inside the
  groups where only axis i varies, averaged over groups) and ``Ψ = mean_i ψ_i``.
- :func:`conditional_mutual_information`: Jiang et al.'s conditional-independence score, the
  normalised ``I(V_μ; V_g | U_S) / H(V_g | U_S)`` over pairs of models, minimised over conditioning
  sets ``|S| ≤ 2``.
- :func:`robust_sign_error`: Dziugaite et al. 2020, the sign-error over coupled pairs of runs that
  differ in exactly one hyperparameter; mean, 90th percentile and max over environments.
- :func:`kendall_test`: τ-a with a two-sided permutation p-value (exact enumeration when n! fits in
  the requested permutations, Monte Carlo otherwise) and a percentile bootstrap interval over models.
- :func:`compare_measures`: a paired bootstrap of τ_a − τ_b for two measures against the same gap.
- :func:`correlation_table`: all of the above, one row per measure (the layout of Jiang et al.'s
  Table 1), with τ's p-value and interval and Ψ's joint-permutation p-value.

References: Y. Jiang, B. Neyshabur, H. Mobahi, D. Krishnan, S. Bengio, "Fantastic Generalization
Measures and Where to Find Them", ICLR 2020 (arXiv:1912.02178); G. K. Dziugaite, A. Drouin, B. Neal,
N. Rajkumar, E. Caballero, L. Wang, I. Mitliagkas, D. M. Roy, "In Search of Robust Measures of
Generalization", NeurIPS 2020 (arXiv:2010.11924).

Modules: ``rank`` (τ, Ψ, CMI), ``coupled`` (sign-error), ``uncertainty`` (p-values, intervals, the paired
comparison), ``table`` (the correlation table).
"""
from __future__ import annotations

from ._columns import GEN_PREFIX, HP_PREFIX, MEASURE_PREFIX, NON_AXIS_COLUMNS, default_axes
from .coupled import RobustSignErrorResult, hoeffding_weight, robust_sign_error
from .rank import CMIResult, GranulatedResult, conditional_mutual_information, granulated_kendall, kendall_tau
from .table import correlation_table
from .uncertainty import KendallTest, PairedComparison, compare_measures, kendall_test

__all__ = [
    "HP_PREFIX",
    "MEASURE_PREFIX",
    "GEN_PREFIX",
    "NON_AXIS_COLUMNS",
    "GranulatedResult",
    "CMIResult",
    "RobustSignErrorResult",
    "KendallTest",
    "PairedComparison",
    "kendall_tau",
    "kendall_test",
    "granulated_kendall",
    "conditional_mutual_information",
    "robust_sign_error",
    "correlation_table",
    "compare_measures",
    "default_axes",
    "hoeffding_weight",
]
