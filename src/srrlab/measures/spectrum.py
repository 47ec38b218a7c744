"""Heavy-tailed weight spectra: the WeightWatcher exponents α and α̂ (Martin & Mahoney 2021).

Martin & Mahoney, "Predicting trends in the quality of state-of-the-art neural networks without
access to training or testing data", Nature Communications 12, 4122 (2021); the WeightWatcher tool.

For every weight matrix ``W`` of :func:`~srrlab.measures.context.weight_matrices` (``ctx.matrices``:
every ``nn.Linear`` weight and every ISTA dictionary ``D``, a tied tensor once), of size N × M, the
empirical spectral density of the correlation matrix ``X = WᵀW`` is the distribution of its
eigenvalues ``λ = σ²``, the squared singular values of ``W`` (``torch.linalg.svdvals`` in float64;
the ``min(N, M)`` of them — the other ``|N − M|`` eigenvalues of ``X`` or ``WWᵀ`` are exactly 0 and no
part of the tail). A power law ``p(λ) ∝ λ^(−α)`` on ``[λ_min, λ_max]`` is fitted to the tail with the
``powerlaw`` package (Alstott et al. 2014; :func:`fit_alpha`)::

    powerlaw.Fit(evals, xmax=max(evals), parameter_ranges={"alpha": [1, None]}, verbose=False).power_law.alpha

the lower end ``λ_min`` (xmin) chosen by the library as the one minimising the Kolmogorov–Smirnov
distance (Clauset et al. 2009), α by maximum likelihood. ``parameter_ranges``: the range α > 1
without upper bound that powerlaw 1.x (on which WeightWatcher was built) used; powerlaw 2.0's
default range ``[0, 3]`` would cap every layer at α ≈ 3 (well-trained layers have α ≈ 2–6, random
ones more) and let the xmin search settle on the bottom edge of a random (Marchenko–Pastur) bulk
with α < 1 instead of its upper tail. The library's own printing is off and its warnings (and
numpy's floating-point warnings) are silenced locally, during the fit only.

Martin & Mahoney's weighted exponent is ``α̂ = α · log10(λ_max)``, the one they propose for
comparing models (it also grows with the scale of the weights). Matrices with fewer than
``settings.spectrum_min_evals`` eigenvalues (default 50, WeightWatcher's minimum) are left out.

* ``ww-alpha``: the mean α over the kept matrices;
* ``ww-alpha-hat``: the mean α̂ over the kept matrices.

Orientation: Martin & Mahoney find smaller α (heavier tails) for better-trained layers and
better models, so a larger α is read as **more complex** here (a larger predicted gap), and the
same for α̂. Both depend only on the weights: they are ``network_free`` (the LayerNorm-free copy
evaluated under ``network="protocol"`` has the same matrices) and need no data. When no matrix is
large enough the measures are nan with a warning naming the sizes seen. A matrix whose spectrum
the library cannot fit (e.g. fewer than two distinct eigenvalues) is left out with a warning.
The per-matrix fits are computed once per context and shared by both measures (``ctx.cache``).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .context import MeasureContext, WeightMatrix
from .registry import register

__all__ = ["LayerAlpha", "fit_alpha", "eigenvalues", "layer_alphas"]

_MM = ("Martin & Mahoney 2021, 'Predicting trends in the quality of state-of-the-art neural networks without "
       "access to training or testing data', Nat. Commun. 12, 4122 (WeightWatcher)")

#: The range of α given to ``powerlaw`` (see the module docs): α > 1, no upper bound.
ALPHA_RANGE = {"alpha": [1, None]}


class LayerAlpha(NamedTuple):
    """The power-law fit of one weight matrix's eigenvalues ``λ = σ²``."""

    name: str
    alpha: float
    lambda_max: float
    n_evals: int

    @property
    def alpha_hat(self) -> float:
        """Martin & Mahoney's weighted exponent ``α · log10(λ_max)``."""
        return self.alpha * math.log10(self.lambda_max)


def eigenvalues(weight: torch.Tensor) -> np.ndarray:
    """The ``min(N, M)`` eigenvalues ``σ²`` of ``WᵀW`` (or ``WWᵀ``) of a matrix ``W``, in float64."""
    return (torch.linalg.svdvals(weight.detach().double()) ** 2).cpu().numpy()


def fit_alpha(evals) -> float:
    """The power-law exponent α of the tail of ``evals`` fitted by ``powerlaw`` (see the module docs).

    Non-positive values are dropped first. ``nan`` when the library cannot fit (e.g. fewer than two
    distinct values). Prints nothing and leaks no warnings.
    """
    import powerlaw  # imported on first use: a slow import that only these measures need

    x = np.asarray(evals, dtype=np.float64).reshape(-1)
    x = x[x > 0]
    if len(np.unique(x)) < 2:
        return float("nan")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            fit = powerlaw.Fit(x, xmax=float(x.max()), parameter_ranges=ALPHA_RANGE, verbose=False)
            alpha = float(fit.power_law.alpha)
        except (ValueError, ZeroDivisionError, IndexError):
            return float("nan")
    return alpha


def layer_alphas(matrices: Sequence[WeightMatrix | tuple], min_evals: int) -> list[LayerAlpha]:
    """One :class:`LayerAlpha` per matrix with at least ``min_evals`` eigenvalues, in order.

    ``matrices``: :class:`~srrlab.measures.context.WeightMatrix` records (or ``(name, weight)``
    pairs); ``n_evals = min(N, M)``; the fit is :func:`fit_alpha` of :func:`eigenvalues`. Smaller
    matrices are skipped (not listed).
    """
    out = []
    for m in matrices:
        name, weight = m[0], m[1]
        if min(weight.shape[-2:]) < min_evals:
            continue
        evals = eigenvalues(weight)
        out.append(LayerAlpha(name, fit_alpha(evals), float(evals.max()), len(evals)))
    return out


def _records(ctx: MeasureContext) -> list[LayerAlpha]:
    key = ("spectrum", "layer_alphas", ctx.settings.spectrum_min_evals)
    if key not in ctx.cache:
        ctx.cache[key] = layer_alphas(ctx.matrices, ctx.settings.spectrum_min_evals)
    return ctx.cache[key]


def _mean(ctx: MeasureContext, measure: str, value) -> float:
    records = _records(ctx)
    min_evals = ctx.settings.spectrum_min_evals
    if not records:
        sizes = ", ".join(f"{m.name} {tuple(m.weight.shape)[0]}×{tuple(m.weight.shape)[1]}" for m in ctx.matrices)
        largest = max((min(m.weight.shape) for m in ctx.matrices), default=0)
        warnings.warn(
            f"{measure} is nan: no weight matrix has at least spectrum_min_evals = {min_evals} eigenvalues "
            f"(min(N, M) of an N×M matrix; the largest here has {largest}); matrices seen: {sizes or 'none'}. "
            f"Lower the threshold, e.g. MeasureSettings(spectrum_min_evals={max(largest, 2)}), to fit them "
            f"(power-law fits of few eigenvalues are noisy)", stacklevel=3)
        return float("nan")
    good = [r for r in records if math.isfinite(r.alpha)]
    if len(good) < len(records):
        bad = ", ".join(r.name for r in records if not math.isfinite(r.alpha))
        warnings.warn(f"{measure}: the power-law fit failed for {bad} (too few distinct eigenvalues?); "
                      f"left out of the mean", stacklevel=3)
    if not good:
        return float("nan")
    return float(np.mean([value(r) for r in good]))


@register("ww-alpha", reference=f"{_MM}: mean power-law exponent α of the layers' eigenvalue tails",
          network_free=True)
def ww_alpha(ctx: MeasureContext) -> float:
    """Mean WeightWatcher α: power-law exponent of the tail of each weight matrix's eigenvalues σ²."""
    return _mean(ctx, "ww-alpha", lambda r: r.alpha)


@register("ww-alpha-hat", reference=f"{_MM}: mean weighted exponent α̂ = α·log10(λ_max)",
          network_free=True)
def ww_alpha_hat(ctx: MeasureContext) -> float:
    """Mean WeightWatcher α̂ = α·log10(λ_max) over the weight matrices (Martin & Mahoney's quality metric)."""
    return _mean(ctx, "ww-alpha-hat", lambda r: r.alpha_hat)
