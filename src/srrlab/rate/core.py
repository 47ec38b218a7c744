"""Coding rates and the sparse rate reduction measure (docs/theory.md §2, §3, §5): the public formulas.

Conventions (docs/theory.md §1): docs/theory.md writes the tokens of one image as the columns of
``Z ∈ R^{d×N}``; code works on row-form batches ``Z`` of shape ``(..., N, d)`` (N tokens of
dimension d, any number of leading dims). Subspaces are ``U`` of shape ``(K, d, p)`` with
``U[k] = U_k``; the model's tied qkv weight is ``Uᵀ`` stacked, shape ``(K·p, d)``. In row form the
projected block ``A_k = U_kᵀZ`` of docs/theory.md is ``Z @ U_k`` (shape ``(N, p)``).

Every rate is ``½ logdet(I + s·Gram)`` on the *smaller* side of its Gram matrix (Sylvester's
identity), one batched Cholesky over all images (and heads), with a closed-form backward; the
factorisation, its fallback when roundoff breaks positive definiteness, and the backward live in
:mod:`srrlab.rate._logdet` (:func:`logdet_identity_plus` is the plain-autograd entry point). All
functions are differentiable with autograd, except the count ``‖Z‖₀`` (:func:`l0`), which has no
gradient (docs/theory.md §7).
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from ._checks import _check_eps, _check_lam, _check_tol, _check_u, _check_z, _compute_dtype
from ._logdet import _half_logdet_gram, logdet_identity_plus
from ..names import RATE_CONVENTIONS

__all__ = [
    "default_eps",
    "rate_eps",
    "rate_gamma",
    "RATE_CONVENTIONS",
    "UNIT_EPS",
    "logdet_identity_plus",
    "coding_rate",
    "compression_rate",
    "l0",
    "srr_terms",
    "srr",
    "compression_rate_grad",
    "compression_rate_gradient",
]


# --------------------------------------------------------------------------------------
# Conventions: ε and γ
# --------------------------------------------------------------------------------------
# RATE_CONVENTIONS ("gamma1", "unit"; docs/rates.md "Rate conventions") is owned by srrlab.names,
# where the command line reads it without importing torch.
#: ε of the ``"unit"`` convention (ε² = 0.01).
UNIT_EPS = 0.1


def default_eps(num_tokens: int, dim_head: int) -> float:
    """The CRATE convention γ = 1 (docs/theory.md §2): ``ε² = p/N``, i.e. ``sqrt(dim_head / num_tokens)``."""
    for name, v in (("num_tokens", num_tokens), ("dim_head", dim_head)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return math.sqrt(dim_head / num_tokens)


def rate_eps(rate: str, num_tokens: int, dim_head: int, eps: float | None = None) -> float:
    """The ε a rate convention uses: ``eps`` when given, else ``sqrt(p/N)`` (``"gamma1"``) or
    :data:`UNIT_EPS` (``"unit"``)."""
    if rate not in RATE_CONVENTIONS:
        raise ValueError(f"rate must be one of {', '.join(map(repr, RATE_CONVENTIONS))}, got {rate!r}")
    if eps is not None:
        return _check_eps(eps)
    return default_eps(num_tokens, dim_head) if rate == "gamma1" else UNIT_EPS


def rate_gamma(dim: int, num_tokens: int, eps: float | None) -> float:
    """``γ = p/(N ε²)`` (docs/theory.md §2), with ``p = dim``; with ``dim = d`` the coding rate's ``d/(N ε²)``.

    ``eps`` is the ε in use (:func:`rate_eps` gives a rate convention's: ``sqrt(p/N)`` for
    ``"gamma1"``, :data:`UNIT_EPS` for ``"unit"``); ``eps=None`` is the CRATE models' convention,
    exactly ``γ = 1``. Plain arithmetic, no checks: callers validate ``eps``.
    """
    if eps is None:
        return 1.0
    return dim / (num_tokens * eps * eps)


# --------------------------------------------------------------------------------------
# R, R^c, ‖Z‖₀ and μ
# --------------------------------------------------------------------------------------
def _autocast_on(t: Tensor) -> bool:
    """Whether autocast (amp) is active for ``t``'s device: its GEMMs would run in bf16/fp16 and hand the
    Cholesky factorisation a low-precision matrix (on CUDA, one it cannot factorise at all)."""
    if not isinstance(t, Tensor):
        return False
    try:
        return torch.is_autocast_enabled(t.device.type)
    except (TypeError, RuntimeError):  # torch < 2.4 takes no device type; an unusual device has no autocast
        return torch.is_autocast_cpu_enabled() if t.device.type == "cpu" else torch.is_autocast_enabled()


def _full_precision(t: Tensor):
    """Autocast off for ``t``'s device: the rates are computed in their compute dtype (at least fp32)
    even inside an amp region (the SRR regulariser under ``--amp``, ``crate-g`` under autocast)."""
    return torch.autocast(t.device.type, enabled=False)


def _unit_tokens(x: Tensor) -> Tensor:
    """Every token (last dim) scaled to unit Euclidean norm; an all-zero token stays zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _coding_rate(Z: Tensor, eps: float, dtype, side: str | None = None, unit: bool = False) -> Tensor:
    """:func:`coding_rate`; ``side`` forces the Gram (``"N"``: N×N ``Z Zᵀ``, ``"d"``: d×d ``ZᵀZ``)."""
    if _autocast_on(Z):
        with _full_precision(Z):
            return _coding_rate(Z, eps, dtype, side, unit)
    _check_z(Z)
    eps = _check_eps(eps)
    Z = Z.to(_compute_dtype(Z, dtype))
    if unit:
        Z = _unit_tokens(Z)
    *lead, n, d = Z.shape
    scale = rate_gamma(d, n, eps)
    if side is None:
        side = "N" if n <= d else "d"
    rows = {"N": True, "d": False}[side]
    # The failed entries are recomputed from Z in float64 (the default recompute).
    return _half_logdet_gram(Z.reshape(-1, n, d), scale, rows).reshape(lead)


def coding_rate(Z: Tensor, eps: float, *, dtype: torch.dtype | None = None, unit: bool = False) -> Tensor:
    """Coding rate [HZX-§3] (docs/theory.md §2): ``R(Z) = ½ logdet(I_N + (d/(N ε²)) ZᵀZ)`` in column form.

    ``Z`` is a row-form batch ``(..., N, d)``; returns shape ``Z.shape[:-2]``. Computed on the
    smaller Gram side (Sylvester's identity): the N×N Gram ``Z Zᵀ`` (row form) when ``N <= d``,
    else the d×d Gram ``Zᵀ Z``; one batched Cholesky (:func:`logdet_identity_plus`'s fallback,
    the failed entries rebuilt from ``Z`` in float64). ``dtype=None`` computes in ``Z``'s dtype,
    ``dtype=torch.float64`` in fp64 (and returns fp64).

    Gradient in closed form, ``∇_Z R = s·M⁻¹Z`` with ``M = I_N + s·Z Zᵀ`` (row form) or
    ``s·Z M⁻¹`` with ``M = I_d + s·ZᵀZ``, ``s = d/(N ε²)``: ``M⁻¹`` from the forward's Cholesky
    factor and one batched GEMM (fallback entries in float64), see
    :class:`~srrlab.rate._logdet._HalfLogdetGram`; once differentiable.

    ``unit=True`` scales every token to unit norm first (the official CRATE analysis convention,
    docs/rates.md "Rate conventions"; an all-zero token stays zero).
    """
    return _coding_rate(Z, eps, dtype, unit=unit)


def _compression_rate(Z: Tensor, U: Tensor, eps: float, dtype, side: str | None = None,
                      unit: bool = False) -> Tensor:
    """:func:`compression_rate`; ``side`` forces the head Grams (``"p"``: p×p, ``"N"``: N×N)."""
    if _autocast_on(Z):
        with _full_precision(Z):
            return _compression_rate(Z, U, eps, dtype, side, unit)
    _check_z(Z)
    K, p = _check_u(U, Z)
    eps = _check_eps(eps)
    cdt = _compute_dtype(Z, dtype)
    Z, U = Z.to(cdt), U.to(cdt)
    *lead, n, d = Z.shape
    gamma = rate_gamma(p, n, eps)
    if side is None:
        side = "p" if p <= n else "N"
    # A_k = z @ U_k is (N, p) in row form: the p×p Gram A_kᵀA_k is its "cols" side, the N×N
    # Gram A_k A_kᵀ its "rows" side.
    rows = {"p": False, "N": True}[side]
    z = Z.reshape(-1, n, d)
    B = z.shape[0]
    if U.dim() == 3:
        # One GEMM with the stacked subspaces, (B·N, d) @ (d, K·p); the head blocks A_k are read
        # in place as a strided (K, B, N, p) view (no transposed copy). Head-major entries.
        a = (z.reshape(-1, d) @ U.permute(1, 0, 2).reshape(d, K * p)).view(B, n, K, p).permute(2, 0, 1, 3)
        if unit:
            a = _unit_tokens(a)

        def recompute(idx):
            # Rebuild the failed (head, image) blocks from Z and U in float64.
            x = z[idx % B].detach().double() @ U[idx // B].detach().double()  # (n_failed, N, p)
            return _unit_tokens(x) if unit else x

        return _half_logdet_gram(a, gamma, rows, recompute).sum(0).reshape(lead)
    # Per-index subspaces: broadcast matmul, (B, K, N, p) = z U_k.
    U = U.expand(*lead, K, d, p).reshape(-1, K, d, p)
    a = torch.matmul(z.unsqueeze(-3), U).reshape(-1, n, p)
    if unit:
        a = _unit_tokens(a)

    def recompute(idx):
        b, k = idx // K, idx % K
        x = z[b].detach().double() @ U[b, k].detach().double()
        return _unit_tokens(x) if unit else x

    return _half_logdet_gram(a, gamma, rows, recompute).view(B, K).sum(-1).reshape(lead)


def compression_rate(Z: Tensor, U: Tensor, eps: float, *, dtype: torch.dtype | None = None,
                     unit: bool = False) -> Tensor:
    """Compression term (docs/theory.md §2): ``R^c(Z; U) = Σ_k ½ logdet(I_N + γ (U_kᵀZ)ᵀ(U_kᵀZ))``,
    ``γ = p/(N ε²)``.

    ``Z`` is ``(..., N, d)``; ``U`` is ``(K, d, p)`` (one layer's subspaces, shared by all leading
    indices) or ``(..., K, d, p)`` broadcastable to ``Z``'s leading dims. ``A_k`` in row form is
    ``Z @ U_k`` (``(N, p)``); all projections come from one matmul with the stacked ``Uᵀ``. Each
    head's rate is computed on the smaller side, the p×p Gram ``A_kᵀA_k`` when ``p <= N``, else
    the N×N Gram, with one batched Cholesky over images and heads (fallback entries rebuilt from
    ``Z`` and ``U`` in float64). Returns ``Z.shape[:-2]``.

    Gradient in closed form per head, ``∂/∂A_k = γ·A_k M_k⁻¹`` (``M_k = I_p + γ A_kᵀA_k``; the
    push-through form of docs/theory.md §3) or ``γ·M_k⁻¹A_k`` (``M_k = I_N + γ A_k A_kᵀ``), with
    ``M_k⁻¹`` from the forward's Cholesky factors (:class:`~srrlab.rate._logdet._HalfLogdetGram`);
    it reaches ``Z`` and ``U`` through the ordinary autograd of the projection GEMM. Once
    differentiable.

    ``unit=True`` scales every projected token (each row of each ``A_k``) to unit norm first, the
    official CRATE analysis convention (docs/rates.md "Rate conventions").
    """
    return _compression_rate(Z, U, eps, dtype, unit=unit)


def l0(Z: Tensor, tol: float = 0.0, normalize: bool = False) -> Tensor:
    """Sparsity ``‖Z‖₀`` (docs/theory.md §2, [HZX-11]): entries with ``|z| > tol`` over the last two dims.

    Returns a float tensor of shape ``Z.shape[:-2]`` (``Z``'s dtype if floating). The literal count is
    the default, as the paper writes it; ``normalize=True`` gives the fraction of non-zeros per token
    averaged over tokens, ``count / (N·d)``. A count has no gradient (docs/theory.md §7).
    """
    _check_z(Z)
    tol = _check_tol(tol)
    out_dtype = Z.dtype if Z.is_floating_point() else torch.get_default_dtype()
    z = Z.detach().to(out_dtype)
    # 1.0 where |z| > tol, else 0.0 (nan never counts); summing floats is much faster than
    # summing bools, and exact while the count stays below 2^24 (fp32) / 2^53 (fp64).
    flags = z.abs().gt_(tol)
    small = z.dtype in (torch.float32, torch.float64) and z.shape[-2] * z.shape[-1] < 2**24
    count = flags.sum(dim=(-2, -1), dtype=None if small else torch.float64).to(out_dtype)
    if normalize:
        count = count / (Z.shape[-2] * Z.shape[-1])
    return count


def srr_terms(
    Z: Tensor,
    U: Tensor,
    eps: float | None = None,
    lam: float = 0.1,
    *,
    tol: float = 0.0,
    normalize: bool = False,
    dtype: torch.dtype | None = None,
    rate: str = "gamma1",
) -> dict[str, Tensor | float]:
    """The terms of the sparse rate reduction measure [HZX-11] (docs/theory.md §5) of one layer.

    ``μ = λ‖Z‖₀ + R^c(Z; U) − R(Z)`` with ``Z`` the layer's output ``(..., N, d)`` and ``U`` its
    subspaces (``(K, d, p)`` or ``(..., K, d, p)``). Returns ``{"R", "Rc", "l0", "mu"}``, each of
    shape ``Z.shape[:-2]`` (every term computed once), and ``"eps"``: the float ε used. ``rate``
    names the rate convention (:data:`RATE_CONVENTIONS`): ``"gamma1"`` (default; ``eps=None`` is
    γ = 1, ``ε = sqrt(p/N)``) or ``"unit"`` (tokens scaled to unit norm, ``eps=None`` is ε = 0.1).
    ``tol`` and ``normalize`` are passed to :func:`l0` (``normalize=True``: the fraction of non-zero
    entries instead of their count); ``‖Z‖₀`` contributes no gradient to ``mu``.
    """
    _check_z(Z)
    K, p = _check_u(U, Z)
    n = Z.shape[-2]
    eps = rate_eps(rate, n, p, eps)
    lam = _check_lam(lam)
    unit = rate == "unit"
    R = _coding_rate(Z, eps, dtype, unit=unit)
    Rc = _compression_rate(Z, U, eps, dtype, unit=unit)
    count = l0(Z, tol=tol, normalize=normalize).to(R.dtype)
    return {"R": R, "Rc": Rc, "l0": count, "mu": lam * count + Rc - R, "eps": eps}


def srr(
    Z: Tensor,
    U: Tensor,
    eps: float | None = None,
    lam: float = 0.1,
    *,
    tol: float = 0.0,
    normalize: bool = False,
    dtype: torch.dtype | None = None,
    rate: str = "gamma1",
) -> Tensor:
    """The sparse rate reduction measure ``μ = λ‖Z‖₀ + R^c(Z; U) − R(Z)`` [HZX-11] (docs/theory.md §5):
    ``srr_terms(...)["mu"]``, shape ``Z.shape[:-2]``."""
    return srr_terms(Z, U, eps, lam, tol=tol, normalize=normalize, dtype=dtype, rate=rate)["mu"]


# --------------------------------------------------------------------------------------
# The exact gradient of R^c
# --------------------------------------------------------------------------------------
def compression_rate_gradient(z: torch.Tensor, wq: torch.Tensor, heads: int, gamma: float | torch.Tensor) -> torch.Tensor:
    """Exact gradient of ``R^c(Z; U) = Σ_k ½ logdet(I + γ A_kᵀA_k)``, ``A_k = U_kᵀZ``, per image.

    Push-through form (docs/theory.md §3): ``∇_Z R^c = γ Σ_k U_k (I_p + γ A_k A_kᵀ)^{-1} A_k``, a ``p×p``
    Cholesky solve per image and head. Row form: ``z`` is ``(B, N, d)``, ``wq = Uᵀ`` is ``(K·p, d)``.
    Returns ``(B, N, d)``. The ``crate-g`` update of :mod:`srrlab.models.crate`. Under autocast (amp) it
    is computed with autocast off in ``z``'s dtype, at least fp32 (CUDA has no bf16 Cholesky).
    """
    if _autocast_on(z):
        with _full_precision(z):
            cdt = _compute_dtype(z, None)
            return compression_rate_gradient(z.to(cdt), wq.to(cdt), heads, gamma)
    b, n, _ = z.shape
    p = wq.shape[0] // heads
    a = (z @ wq.t()).view(b, n, heads, p).transpose(1, 2)  # (B, K, N, p): row form of A_kᵀ
    gram = a.transpose(-1, -2) @ a  # (B, K, p, p) = A_k A_kᵀ
    eye = torch.eye(p, dtype=z.dtype, device=z.device)
    chol = torch.linalg.cholesky(eye + gamma * gram)
    # (A_row M^{-1}) = (M^{-1} A_rowᵀ)ᵀ since M is symmetric.
    solved = torch.cholesky_solve(a.transpose(-1, -2), chol).transpose(-1, -2)  # (B, K, N, p)
    stacked = solved.transpose(1, 2).reshape(b, n, heads * p)
    return gamma * (stacked @ wq)


def compression_rate_grad(Z: Tensor, U: Tensor, eps: float, *, dtype: torch.dtype | None = None) -> Tensor:
    """Closed-form gradient ``∇_Z R^c`` (docs/theory.md §3) in push-through form, row form, shape of ``Z``:
    ``γ Σ_k U_k (I_p + γ A_k A_kᵀ)^{-1} A_k``, ``A_k = U_kᵀZ``, ``γ = p/(N ε²)``.

    Delegates to :func:`compression_rate_gradient` (the ``crate-g`` update) with ``wq = Uᵀ``
    stacked to ``(K·p, d)``; this wrapper only adds arbitrary leading dims and ``dtype``. ``U`` is
    ``(K, d, p)`` or ``(..., K, d, p)`` (per-index subspaces are handled one index at a time). The
    underlying Cholesky has no fallback: it raises if ``I + γ A Aᵀ`` is not numerically positive
    definite (use ``dtype=torch.float64`` for extreme inputs).
    """
    _check_z(Z)
    K, p = _check_u(U, Z)
    eps = _check_eps(eps)
    cdt = _compute_dtype(Z, dtype)
    Z, U = Z.to(cdt), U.to(cdt)
    *lead, n, d = Z.shape
    gamma = rate_gamma(p, n, eps)
    z = Z.reshape(-1, n, d)
    if U.dim() == 3:
        out = compression_rate_gradient(z, U.mT.reshape(K * p, d), K, gamma)
    else:
        us = U.expand(*lead, K, d, p).reshape(-1, K, d, p)
        out = torch.cat(
            [compression_rate_gradient(z[i : i + 1], us[i].mT.reshape(K * p, d), K, gamma) for i in range(z.shape[0])]
        )
    return out.reshape(Z.shape)
