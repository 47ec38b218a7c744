"""Argument checks and the compute dtype of :mod:`srrlab.rate` (private)."""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor


def _check_z(Z: Tensor, name: str = "Z") -> None:
    if not isinstance(Z, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (..., N, d), got {type(Z).__name__}")
    if Z.dim() < 2:
        raise ValueError(
            f"{name} must have shape (..., N, d) (at least 2 dims: N tokens of dimension d), "
            f"got shape {tuple(Z.shape)}"
        )
    if Z.shape[-2] < 1 or Z.shape[-1] < 1:
        raise ValueError(
            f"{name} must have at least one token and one feature, shape (..., N >= 1, d >= 1), "
            f"got shape {tuple(Z.shape)}"
        )


def _check_u(U: Tensor, Z: Tensor) -> tuple[int, int]:
    """Validate ``U`` against ``Z``; return ``(K, p)``."""
    d = Z.shape[-1]
    expected = f"(K, d, p) or (..., K, d, p) with d = Z.shape[-1] = {d}"
    if not isinstance(U, Tensor):
        raise ValueError(f"U must be a torch.Tensor of shape {expected}, got {type(U).__name__}")
    if U.dim() < 3 or U.shape[-2] != d or U.shape[-3] < 1 or U.shape[-1] < 1:
        raise ValueError(f"U must have shape {expected}, got {tuple(U.shape)}")
    lead_z, lead_u = tuple(Z.shape[:-2]), tuple(U.shape[:-3])
    try:
        ok = torch.broadcast_shapes(lead_z, lead_u) == torch.Size(lead_z)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"U's leading dims {lead_u} (U has shape {tuple(U.shape)}) must broadcast to Z's leading "
            f"dims {lead_z} (Z has shape {tuple(Z.shape)}); use U of shape (K, d, p) to share one "
            f"layer's subspaces across all of Z"
        )
    return U.shape[-3], U.shape[-1]


def _check_eps(eps) -> float:
    if isinstance(eps, Tensor) and eps.numel() == 1:
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(
            f"eps must be a positive finite number (the quantisation ε of docs/theory.md §2), got {eps!r}"
        )
    return float(eps)


def _check_lam(lam) -> float:
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0 (the sparsity weight λ of [HZX-11]), got {lam!r}")
    return float(lam)


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"tol must be a number >= 0 (entries with |z| > tol count as non-zero), got {tol!r}")
    return float(tol)


def _compute_dtype(t: Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
        # Cholesky needs at least single precision.
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be None or a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}")
    return dtype
