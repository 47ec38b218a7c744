"""Coding rates and the sparse rate reduction measure (spec §2, §3, §5).

Conventions (spec §1): the spec writes the tokens of one image as the columns of
``Z ∈ R^{d×N}``; code works on row-form batches ``Z`` of shape ``(..., N, d)`` (N tokens of
dimension d, any number of leading dims). Subspaces are ``U`` of shape ``(K, d, p)`` with
``U[k] = U_k``; the model's tied qkv weight is ``Uᵀ`` stacked, shape ``(K·p, d)``. In row form the
projected block ``A_k = U_kᵀZ`` of the spec is ``Z @ U_k`` (shape ``(N, p)``).

Every rate is computed on the *smaller* side of its Gram matrix (Sylvester's identity,
``logdet(I_N + s XᵀX) = logdet(I_m + s X Xᵀ)``) and factorised with one batched Cholesky
(``logdet = 2 Σ log diag L``) over all images (and heads), see :func:`logdet_identity_plus` for
the fallback when roundoff breaks positive definiteness. All functions are differentiable with
autograd, except the count ``‖Z‖₀`` (:func:`l0`), which has no gradient (spec §7). The rates
(:func:`coding_rate`, :func:`compression_rate`) have a closed-form backward,
``∂/∂X ½ logdet(I + s·X Xᵀ) = s·(I + s·X Xᵀ)⁻¹X`` (spec §3), from the forward's Cholesky factor
(:class:`_HalfLogdetGram`; once differentiable); :func:`logdet_identity_plus` uses plain autograd.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..models.crate import compression_rate_gradient

__all__ = [
    "default_eps",
    "rate_eps",
    "RATE_CONVENTIONS",
    "UNIT_EPS",
    "logdet_identity_plus",
    "coding_rate",
    "compression_rate",
    "l0",
    "srr_terms",
    "srr",
    "compression_rate_grad",
]


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------
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
        raise ValueError(f"eps must be a positive finite number (the quantisation ε of spec §2), got {eps!r}")
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


# --------------------------------------------------------------------------------------
# logdet(I + s·G) by Cholesky, with the fallback
# --------------------------------------------------------------------------------------
def _eye(m: int, like: Tensor) -> Tensor:
    return torch.eye(m, dtype=like.dtype, device=like.device)


def _beyond_precision(M: Tensor) -> Tensor | None:
    """Entries of ``M = I + s·G`` whose identity term is below the factorisation's roundoff.

    Cholesky's backward error is about ``m·u·max_i M_ii`` (``u`` the unit roundoff); once that
    reaches 1 the eigenvalues near 1 (the null space of ``G``) are not resolved in this dtype and
    a "successful" factorisation can be far off. ``None`` for float64 (nothing better to fall
    back to).
    """
    if M.dtype == torch.float64:
        return None
    u = torch.finfo(M.dtype).eps / 2
    return M.diagonal(dim1=-2, dim2=-1).amax(-1) * (M.shape[-1] * u) >= 1.0


def _logdet_info(M: Tensor) -> tuple[Tensor, Tensor]:
    """``(2 Σ log diag L, info)`` of one batched ``torch.linalg.cholesky_ex(M)``."""
    L, info = torch.linalg.cholesky_ex(M)
    return 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1), info


def _chol_logdet(M: Tensor) -> tuple[Tensor, Tensor]:
    """``logdet M`` by one batched Cholesky; returns ``(logdet, failed)``.

    ``failed`` marks the entries whose factorisation broke down (``info > 0``), gave a
    non-finite value or lies beyond the working precision (:func:`_beyond_precision`); their
    logdet is set to 0 here and must be replaced by the caller. When gradients are needed and
    something failed, the good entries are re-factorised with the failed ones replaced by the
    identity, so that no garbage factor takes part in the backward pass.
    """
    ld, info = _logdet_info(M)
    failed = (info != 0) | ~torch.isfinite(ld)
    coarse = _beyond_precision(M)
    if coarse is not None:
        failed = failed | coarse
    if not bool(failed.any()):
        return ld, failed
    if torch.is_grad_enabled() and M.requires_grad:
        clean = torch.where(failed[..., None, None], _eye(M.shape[-1], M), M)
        ld = _logdet_info(clean)[0]
    return torch.where(failed, torch.zeros_like(ld), ld), failed


def _eig_logdet(M: Tensor) -> Tensor:
    """Last resort for symmetric ``M = I + s·G`` (``G`` PSD): ``Σ log max(λ_i, 1)``.

    1 is the exact lower bound of the eigenvalues of ``I + s·G``; clamping removes the negative
    eigenvalues that roundoff may have introduced. ``eigvalsh`` reads the lower triangle, as
    the Cholesky factorisation does.
    """
    try:
        ev = torch.linalg.eigvalsh(M)
    except RuntimeError:  # no convergence (pathological input): singular values of M instead
        try:
            ev = torch.linalg.svdvals(M)
        except RuntimeError:
            return torch.full(M.shape[:-2], float("nan"), dtype=M.dtype, device=M.device)
    return ev.clamp_min(1.0).log().sum(-1)


def _logdet_spd(M: Tensor, recompute: Callable[[Tensor], Tensor]) -> Tensor:
    """``logdet M`` for a batch ``M = I + s·G`` with the documented fallback.

    ``recompute(idx)`` must return ``I + s·G`` in float64 for the entries
    ``M.reshape(-1, m, m)[idx]`` (``idx``: flat indices; shape ``(n_failed, m, m)``), recomputed
    from the original factors where possible (e.g. from ``Z``, not from a float32 Gram that
    already carries the roundoff).
    """
    ld, failed = _chol_logdet(M)
    if not bool(failed.any()):
        return ld
    (idx,) = failed.reshape(-1).nonzero(as_tuple=True)
    M64 = recompute(idx)
    finite = torch.isfinite(M64).flatten(-2).all(-1)
    M64 = torch.where(finite[..., None, None], M64, _eye(M64.shape[-1], M64))
    ld64, failed64 = _chol_logdet(M64)
    if bool(failed64.any()):
        bad = failed64.nonzero(as_tuple=True)
        ld64 = ld64.index_put(bad, _eig_logdet(M64[bad]))
    ld64 = torch.where(finite, ld64, torch.full_like(ld64, float("nan")))
    return ld.reshape(-1).index_put((idx,), ld64.to(ld.dtype)).reshape(ld.shape)


def logdet_identity_plus(gram: Tensor, scale: float | Tensor) -> Tensor:
    """``logdet(I + scale·gram)`` for a batch ``(..., m, m)`` of symmetric PSD Gram matrices (spec §2).

    Computed by one batched Cholesky factorisation, ``logdet = 2 Σ log diag L``
    (``torch.linalg.cholesky_ex``; only the lower triangle is read). ``scale`` is a number or a
    tensor broadcastable to ``gram.shape[:-2]`` (one scale per matrix). Returns shape
    ``gram.shape[:-2]``, differentiable.

    Fallback, when roundoff breaks positive definiteness (``info > 0``), the result is not
    finite, or (below float64) the matrix is beyond the working precision (``m·u·max_i M_ii >= 1``
    for ``M = I + s·G`` and unit roundoff ``u``: the identity term is then below the
    factorisation's roundoff, and even a "successful" Cholesky can be far off): just those
    entries are recomputed in float64; if that factorisation fails too, ``torch.linalg.eigvalsh``
    is used with the eigenvalues clamped at ``>= 1`` (the exact lower bound of the spectrum of
    ``I + s·G`` for PSD ``G``). Never raises for finite input; an entry whose (float64) matrix is
    not finite gives ``nan``. Here the float64 recomputation can only start from ``gram`` itself;
    :func:`coding_rate` and :func:`compression_rate` rebuild the failed Grams from ``Z`` (and
    ``U``) in float64. Differentiable with plain autograd through the factorisation (also in
    ``scale`` when it is a tensor); the rates instead use a closed-form backward with the same
    fallback (:class:`_HalfLogdetGram`).
    """
    if not isinstance(gram, Tensor) or gram.dim() < 2 or gram.shape[-1] != gram.shape[-2]:
        shape = tuple(gram.shape) if isinstance(gram, Tensor) else type(gram).__name__
        raise ValueError(f"gram must be a batch of square matrices of shape (..., m, m), got {shape}")
    gram = gram.to(_compute_dtype(gram, None))
    batch = gram.shape[:-2]
    s = torch.as_tensor(scale, dtype=gram.dtype, device=gram.device)
    try:
        s = s.expand(batch) if s.dim() else s
    except RuntimeError:
        raise ValueError(
            f"scale must be a number or a tensor broadcastable to gram.shape[:-2] = {tuple(batch)}, "
            f"got shape {tuple(s.shape)}"
        ) from None
    if bool((s < 0).any()) or not bool(torch.isfinite(s).all()):
        raise ValueError(f"scale must be finite and >= 0, got {scale!r}")
    m = gram.shape[-1]
    eye = _eye(m, gram)
    M = eye + (s[..., None, None] if s.dim() else s) * gram

    def recompute(idx):
        g = gram.reshape(-1, m, m)[idx].double()
        s64 = (s.reshape(-1)[idx][:, None, None] if s.dim() else s).double()
        return torch.eye(m, dtype=torch.float64, device=g.device) + s64 * g

    return _logdet_spd(M, recompute)


# --------------------------------------------------------------------------------------
# ½ logdet(I + s·Gram(X)) with a closed-form backward
# --------------------------------------------------------------------------------------
def _identity_plus_gram(X: Tensor, scale: float, side: str) -> Tensor:
    """``I + scale·X Xᵀ`` (``side="rows"``) or ``I + scale·XᵀX`` (``side="cols"``) for ``X (B, n, m)``,
    one fused batched matmul."""
    if side == "rows":
        return torch.baddbmm(_eye(X.shape[-2], X), X, X.mT, alpha=scale)
    return torch.baddbmm(_eye(X.shape[-1], X), X.mT, X, alpha=scale)


def _gram_systems(X: Tensor, scale: float, rows: bool) -> Tensor:
    """``I + scale·X Xᵀ`` (``rows``, n×n) or ``I + scale·XᵀX`` (m×m) for ``X (B, n, m)`` or ``(K, B, n, m)``.

    3-D ``X``: one fused ``baddbmm``. 4-D ``X`` is meant for the head blocks of one stacked
    projection, a strided ``(K, B, N, p)`` view whose leading dims do not merge without a copy:
    one fused ``baddbmm`` per leading index, written straight into one buffer (``out=``, so this
    is for use without autograd only).
    """
    side = "rows" if rows else "cols"
    if X.dim() == 3:
        return _identity_plus_gram(X, scale, side)
    m = X.shape[-2] if rows else X.shape[-1]
    M = torch.empty(*X.shape[:-2], m, m, dtype=X.dtype, device=X.device)
    eye = _eye(m, X)
    for i in range(X.shape[0]):
        x = X[i]
        torch.baddbmm(eye, *((x, x.mT) if rows else (x.mT, x)), alpha=scale, out=M[i])
    return M


class _Fallback(NamedTuple):
    """What the backward pass needs of the entries that took the float64 fallback."""

    idx: Tensor  # flat indices (into X.reshape(-1, n, m)) of the entries that took the fallback
    x64: Tensor  # their X, recomputed in float64 by the caller, (n_f, n, m)
    chol64: Tensor  # float64 Cholesky factors of I + s·Gram(x64) (identity where that failed)
    eig: Tensor  # bool (n_f,): the float64 Cholesky failed too (eigenvalue route)
    finite: Tensor  # bool (n_f,): the float64 system is finite (else the value is nan)


def _half_logdet_gram_impl(
    X: Tensor, scale: float, rows: bool, recompute: Callable[[Tensor], Tensor], keep: bool
) -> tuple[Tensor, Tensor | None, _Fallback | None]:
    """``½ logdet(I + s·Gram(X))`` by one batched Cholesky, with the fallback of :func:`logdet_identity_plus`.

    Returns ``(value, L, fallback)``; ``value`` has shape ``X.shape[:-2]``. With ``keep`` also
    the Cholesky factors ``L`` of all entries (identity for the entries that failed) and the
    float64 data of the failed ones (:class:`_Fallback`, ``None`` if nothing failed), for the
    backward pass; without ``keep`` both are ``None`` and nothing beyond the value is built.
    ``recompute(idx)`` returns the float64 ``X`` of the flat entries ``idx``, shape ``(n_f, n, m)``.
    """
    M = _gram_systems(X, scale, rows)
    L, info = torch.linalg.cholesky_ex(M)
    half = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # ½ logdet M = Σ log diag L
    failed = (info != 0) | ~torch.isfinite(half)
    coarse = _beyond_precision(M)
    if coarse is not None:
        failed |= coarse
    if not bool(failed.any()):
        return half, (L if keep else None), None
    # The failed entries, from X recomputed in float64 (from the original factors).
    (idx,) = failed.reshape(-1).nonzero(as_tuple=True)
    x64 = recompute(idx)
    M64 = _identity_plus_gram(x64, scale, "rows" if rows else "cols")
    finite = torch.isfinite(M64).flatten(-2).all(-1)
    eye64 = _eye(M64.shape[-1], M64)
    M64 = torch.where(finite[..., None, None], M64, eye64)
    L64, info64 = torch.linalg.cholesky_ex(M64)
    half64 = L64.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    eig = (info64 != 0) | ~torch.isfinite(half64)
    if bool(eig.any()):
        bad = eig.nonzero(as_tuple=True)
        half64 = half64.index_put(bad, 0.5 * _eig_logdet(M64[bad]))
    half64 = torch.where(finite, half64, torch.full_like(half64, float("nan")))
    half = half.reshape(-1).index_put((idx,), half64.to(half.dtype)).reshape(half.shape)
    if not keep:
        return half, None, None
    L = torch.where(failed[..., None, None], _eye(L.shape[-1], L), L)
    L64 = torch.where(eig[..., None, None], eye64, L64)
    x64 = torch.where(finite[..., None, None], x64, torch.zeros_like(x64))
    return half, L, _Fallback(idx, x64, L64, eig, finite)


def _fallback_solve(fb: _Fallback, scale: float, rows: bool) -> Tensor:
    """``M⁻¹X`` (``rows``) or ``X M⁻¹`` in float64 for the fallback entries, ``M = I + s·Gram(X)``.

    Entries whose float64 Cholesky succeeded reuse that factor (one batched
    ``torch.cholesky_solve``: the same solve as a ``torch.linalg.solve`` on the recomputed float64
    ``M``, without factorising it again). Entries that took the eigenvalue route are not
    numerically positive definite even in float64: there the eigenvalues of ``M`` below
    ``τ = max(1, m·u·λ_max)`` (``u`` the float64 unit roundoff) are roundoff, not data, and a
    plain solve would amplify the roundoff in ``X``'s components along their eigenvectors by up
    to ``1/λ``, i.e. far beyond the true gradient. They use ``V diag(w) Vᵀ`` from
    ``torch.linalg.eigh`` with ``w_i = 1/λ_i`` for ``λ_i > τ`` and 0 below: the derivative of
    the clamped value ``Σ log max(λ_i, 1)`` the forward pass returned, restricted to the
    eigenvalues float64 resolves (the unresolved ones belong to the numerical null space of
    ``Gram(X)``, which ``X`` does not reach beyond roundoff). Non-finite entries give ``nan``.
    """
    x = fb.x64
    sol = torch.cholesky_solve(x, fb.chol64) if rows else torch.cholesky_solve(x.mT, fb.chol64).mT
    if bool(fb.eig.any()):
        bad = fb.eig.nonzero(as_tuple=True)
        xb = x[bad]
        try:
            ev, V = torch.linalg.eigh(_identity_plus_gram(xb, scale, "rows" if rows else "cols"))
            u = torch.finfo(ev.dtype).eps / 2
            tau = (ev.amax(-1, keepdim=True) * (ev.shape[-1] * u)).clamp_min(1.0)
            w = torch.where(ev > tau, 1.0 / ev, torch.zeros_like(ev))
            inv = (V * w[..., None, :]) @ V.mT
            solb = inv @ xb if rows else xb @ inv
        except RuntimeError:  # no convergence (pathological input)
            solb = torch.full_like(xb, float("nan"))
        sol = sol.index_put(bad, solb)
    return torch.where(fb.finite[..., None, None], sol, torch.full_like(sol, float("nan")))


class _HalfLogdetGram(torch.autograd.Function):
    """``½ logdet(I + s·X Xᵀ)`` (``rows``) or ``½ logdet(I + s·XᵀX)`` per entry of ``X (B, n, m)``
    or ``(K, B, n, m)``, with the closed-form gradient (spec §2, §3).

    Forward: :func:`_half_logdet_gram_impl` (one batched Cholesky, float64/eigenvalue fallback
    for the failed entries), saving the Cholesky factor. Backward, for ``M = I + s·X Xᵀ``:
    ``∂/∂X ½ logdet M = s·M⁻¹X``; for ``M = I + s·XᵀX``: ``s·X M⁻¹`` (the push-through form of
    spec §3 when ``X = A_k``): ``M⁻¹`` from the saved factor (one batched
    ``torch.cholesky_inverse``) and one batched GEMM, instead of differentiating through the
    factorisation. Entries that took the fallback get ``s·M⁻¹X`` in float64 from
    :func:`_fallback_solve` (rounded to ``X``'s dtype). ``s`` is a Python float and gets no
    gradient. Once differentiable: under ``create_graph=True`` the returned gradient raises if
    differentiated again (:class:`_NoDoubleBackward`; like ``once_differentiable``, but also when
    only the saved ``X`` requires grad). No forward-mode AD.
    """

    @staticmethod
    def forward(ctx, X: Tensor, scale: float, rows: bool, recompute: Callable[[Tensor], Tensor]) -> Tensor:
        half, L, fb = _half_logdet_gram_impl(X, scale, rows, recompute, keep=True)
        ctx.save_for_backward(X, L)
        ctx.scale, ctx.rows, ctx.fallback = scale, rows, fb
        return half

    @staticmethod
    def backward(ctx, grad: Tensor):
        X, L = ctx.saved_tensors
        s, rows, fb = ctx.scale, ctx.rows, ctx.fallback
        with torch.no_grad():
            # s·g·M⁻¹ from the saved factor (LAPACK potri), then one batched GEMM: M⁻¹X or X M⁻¹.
            # For these small batched systems this is several times faster than cholesky_solve
            # with X as right-hand side (a per-matrix LAPACK potrs loop), at the same accuracy
            # order (forward error ~ u·cond(M), and ‖M⁻¹‖ <= 1).
            Minv = torch.cholesky_inverse(L).mul_((grad * s)[..., None, None])
            if X.dim() == 3:
                gX = torch.bmm(Minv, X) if rows else torch.bmm(X, Minv)
            else:  # strided (K, B, N, p) head blocks: one GEMM per head, written in X's own layout
                gX = torch.empty_like(X)  # same strides as X, so the view backward needs no copy
                for i in range(X.shape[0]):
                    gX[i] = torch.bmm(Minv[i], X[i]) if rows else torch.bmm(X[i], Minv[i])
            if fb is not None:
                n, m = X.shape[-2:]
                g64 = _fallback_solve(fb, s, rows) * (s * grad.reshape(-1)[fb.idx].double())[:, None, None]
                gX = gX.reshape(-1, n, m).index_put((fb.idx,), g64.to(gX.dtype)).reshape(X.shape)
        if torch.is_grad_enabled():
            # create_graph=True: the result must not pass for a differentiable one. Unlike
            # torch.autograd.function.once_differentiable, also when only the saved X (not the
            # upstream gradient) requires grad, where that would silently drop the second-order term.
            gX = _NoDoubleBackward.apply(gX.detach().requires_grad_())
        return gX, None, None, None


class _NoDoubleBackward(torch.autograd.Function):
    """Identity whose backward raises: marks the closed-form gradient of the rates as once differentiable."""

    @staticmethod
    def forward(ctx, g: Tensor) -> Tensor:
        return g.clone()

    @staticmethod
    def backward(ctx, _):
        raise RuntimeError(
            "the coding rates' closed-form backward (srrlab.rate.core._HalfLogdetGram) is once "
            "differentiable: higher-order gradients through coding_rate/compression_rate are not supported"
        )


def _half_logdet_gram(
    X: Tensor, scale: float, rows: bool, recompute: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """``½ logdet(I + s·X Xᵀ)`` (``rows``) or ``½ logdet(I + s·XᵀX)``, shape ``X.shape[:-2]``.

    Through :class:`_HalfLogdetGram` (closed-form backward) when a gradient is needed, else the
    plain forward without saving anything. ``recompute(idx)`` gives the float64 ``X`` of the
    flat entries ``idx`` for the fallback (default: ``X`` itself cast to float64; callers pass
    one that rebuilds it from the original factors).
    """
    if recompute is None:
        n, m = X.shape[-2:]

        def recompute(idx):
            return X.detach().reshape(-1, n, m)[idx].double()

    if torch.is_grad_enabled() and X.requires_grad:
        return _HalfLogdetGram.apply(X, scale, rows, recompute)
    return _half_logdet_gram_impl(X, scale, rows, recompute, keep=False)[0]


# --------------------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------------------
def default_eps(num_tokens: int, dim_head: int) -> float:
    """The CRATE convention γ = 1 (spec §2): ``ε² = p/N``, i.e. returns ``sqrt(dim_head / num_tokens)``."""
    for name, v in (("num_tokens", num_tokens), ("dim_head", dim_head)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return math.sqrt(dim_head / num_tokens)


def _unit_tokens(x: Tensor) -> Tensor:
    """Every token (last dim) scaled to unit Euclidean norm; an all-zero token stays zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _coding_rate(Z: Tensor, eps: float, dtype, side: str | None = None, unit: bool = False) -> Tensor:
    """:func:`coding_rate`; ``side`` forces the Gram (``"N"``: N×N ``Z Zᵀ``, ``"d"``: d×d ``ZᵀZ``)."""
    _check_z(Z)
    eps = _check_eps(eps)
    Z = Z.to(_compute_dtype(Z, dtype))
    if unit:
        Z = _unit_tokens(Z)
    *lead, n, d = Z.shape
    scale = d / (n * eps * eps)
    if side is None:
        side = "N" if n <= d else "d"
    rows = {"N": True, "d": False}[side]
    # The failed entries are recomputed from Z in float64 (the default recompute).
    return _half_logdet_gram(Z.reshape(-1, n, d), scale, rows).reshape(lead)


def coding_rate(Z: Tensor, eps: float, *, dtype: torch.dtype | None = None, unit: bool = False) -> Tensor:
    """Coding rate [HZX-§3] (spec §2): ``R(Z) = ½ logdet(I_N + (d/(N ε²)) ZᵀZ)`` in column form.

    ``Z`` is a row-form batch ``(..., N, d)``; returns shape ``Z.shape[:-2]``. Computed on the
    smaller Gram side (Sylvester's identity): the N×N Gram ``Z Zᵀ`` (row form) when ``N <= d``,
    else the d×d Gram ``Zᵀ Z``; one batched Cholesky (:func:`logdet_identity_plus`'s fallback,
    the failed entries rebuilt from ``Z`` in float64). ``dtype=None`` computes in ``Z``'s dtype,
    ``dtype=torch.float64`` in fp64 (and returns fp64).

    Gradient in closed form, ``∇_Z R = s·M⁻¹Z`` with ``M = I_N + s·Z Zᵀ`` (row form) or
    ``s·Z M⁻¹`` with ``M = I_d + s·ZᵀZ``, ``s = d/(N ε²)``: ``M⁻¹`` from the forward's Cholesky
    factor and one batched GEMM (fallback entries in float64), see :class:`_HalfLogdetGram`;
    once differentiable.

    ``unit=True`` scales every token to unit norm first (the official CRATE analysis convention,
    docs/rates.md "Rate conventions"; an all-zero token stays zero).
    """
    return _coding_rate(Z, eps, dtype, unit=unit)


def _compression_rate(Z: Tensor, U: Tensor, eps: float, dtype, side: str | None = None,
                      unit: bool = False) -> Tensor:
    """:func:`compression_rate`; ``side`` forces the head Grams (``"p"``: p×p, ``"N"``: N×N)."""
    _check_z(Z)
    K, p = _check_u(U, Z)
    eps = _check_eps(eps)
    cdt = _compute_dtype(Z, dtype)
    Z, U = Z.to(cdt), U.to(cdt)
    *lead, n, d = Z.shape
    gamma = p / (n * eps * eps)
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
    """Compression term (spec §2): ``R^c(Z; U) = Σ_k ½ logdet(I_N + γ (U_kᵀZ)ᵀ(U_kᵀZ))``, ``γ = p/(N ε²)``.

    ``Z`` is ``(..., N, d)``; ``U`` is ``(K, d, p)`` (one layer's subspaces, shared by all leading
    indices) or ``(..., K, d, p)`` broadcastable to ``Z``'s leading dims. ``A_k`` in row form is
    ``Z @ U_k`` (``(N, p)``); all projections come from one matmul with the stacked ``Uᵀ``. Each
    head's rate is computed on the smaller side, the p×p Gram ``A_kᵀA_k`` when ``p <= N``, else
    the N×N Gram, with one batched Cholesky over images and heads (fallback entries rebuilt from
    ``Z`` and ``U`` in float64). Returns ``Z.shape[:-2]``.

    Gradient in closed form per head, ``∂/∂A_k = γ·A_k M_k⁻¹`` (``M_k = I_p + γ A_kᵀA_k``; the
    push-through form of spec §3) or ``γ·M_k⁻¹A_k`` (``M_k = I_N + γ A_k A_kᵀ``), with ``M_k⁻¹``
    from the forward's Cholesky factors (:class:`_HalfLogdetGram`); it reaches ``Z`` and ``U``
    through the ordinary autograd of the projection GEMM. Once differentiable.

    ``unit=True`` scales every projected token (each row of each ``A_k``) to unit norm first, the
    official CRATE analysis convention (docs/rates.md "Rate conventions").
    """
    return _compression_rate(Z, U, eps, dtype, unit=unit)


def l0(Z: Tensor, tol: float = 0.0, normalize: bool = False) -> Tensor:
    """Sparsity ``‖Z‖₀`` (spec §2, [HZX-11]): entries with ``|z| > tol`` over the last two dims.

    Returns a float tensor of shape ``Z.shape[:-2]`` (``Z``'s dtype if floating). The literal count is
    the default, as the paper writes it; ``normalize=True`` gives the fraction of non-zeros per token
    averaged over tokens, ``count / (N·d)``. A count has no gradient (spec §7).
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


#: Rate conventions of the SRR measure (docs/rates.md "Rate conventions"): how tokens are scaled
#: before the rates and the default ε. ``"gamma1"``: raw tokens, ε² = p/N (γ = 1, the CRATE
#: models' convention); ``"unit"``: every token (per head for R^c) scaled to unit norm, ε² = 0.01
#: (the official CRATE analysis tool's convention).
RATE_CONVENTIONS = ("gamma1", "unit")
#: ε of the ``"unit"`` convention (ε² = 0.01).
UNIT_EPS = 0.1


def rate_eps(rate: str, num_tokens: int, dim_head: int, eps: float | None = None) -> float:
    """The ε a rate convention uses: ``eps`` when given, else ``sqrt(p/N)`` (``"gamma1"``) or
    :data:`UNIT_EPS` (``"unit"``)."""
    if rate not in RATE_CONVENTIONS:
        raise ValueError(f"rate must be one of {', '.join(map(repr, RATE_CONVENTIONS))}, got {rate!r}")
    if eps is not None:
        return _check_eps(eps)
    return default_eps(num_tokens, dim_head) if rate == "gamma1" else UNIT_EPS


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
    """The terms of the sparse rate reduction measure [HZX-11] (spec §5) of one layer.

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
    """The sparse rate reduction measure ``μ = λ‖Z‖₀ + R^c(Z; U) − R(Z)`` [HZX-11] (spec §5):
    ``srr_terms(...)["mu"]``, shape ``Z.shape[:-2]``."""
    return srr_terms(Z, U, eps, lam, tol=tol, normalize=normalize, dtype=dtype, rate=rate)["mu"]


def compression_rate_grad(Z: Tensor, U: Tensor, eps: float, *, dtype: torch.dtype | None = None) -> Tensor:
    """Closed-form gradient ``∇_Z R^c`` (spec §3) in push-through form, row form, shape of ``Z``:
    ``γ Σ_k U_k (I_p + γ A_k A_kᵀ)^{-1} A_k``, ``A_k = U_kᵀZ``, ``γ = p/(N ε²)``.

    Delegates to :func:`srrlab.models.crate.compression_rate_gradient` (the ``crate-g`` update)
    with ``wq = Uᵀ`` stacked to ``(K·p, d)``; this wrapper only adds arbitrary leading dims and
    ``dtype``. ``U`` is ``(K, d, p)`` or ``(..., K, d, p)`` (per-index subspaces are handled one
    index at a time). The underlying Cholesky has no fallback: it raises if ``I + γ A Aᵀ`` is not
    numerically positive definite (use ``dtype=torch.float64`` for extreme inputs).
    """
    _check_z(Z)
    K, p = _check_u(U, Z)
    eps = _check_eps(eps)
    cdt = _compute_dtype(Z, dtype)
    Z, U = Z.to(cdt), U.to(cdt)
    *lead, n, d = Z.shape
    gamma = p / (n * eps * eps)
    z = Z.reshape(-1, n, d)
    if U.dim() == 3:
        out = compression_rate_gradient(z, U.mT.reshape(K * p, d), K, gamma)
    else:
        us = U.expand(*lead, K, d, p).reshape(-1, K, d, p)
        out = torch.cat(
            [compression_rate_gradient(z[i : i + 1], us[i].mT.reshape(K * p, d), K, gamma) for i in range(z.shape[0])]
        )
    return out.reshape(Z.shape)
