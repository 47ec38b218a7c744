"""``½ logdet(I + s·G)`` by one batched Cholesky, with the fallback chain (private; see :mod:`srrlab.rate.core`).

The fallback, written once (:func:`_half_logdet`) and used by :func:`logdet_identity_plus` and
by the rates (:func:`_half_logdet_gram`): an entry of the batch falls back when roundoff breaks
positive definiteness (``info > 0``), the result is not finite, or (below float64) the matrix is
beyond the working precision (:func:`_beyond_precision`). Just those entries are rebuilt in
float64 by the caller (from the original factors where possible, e.g. from ``Z``, not from a
float32 Gram that already carries the roundoff) and factorised again; if that fails too,
``Σ log max(λ_i, 1)`` from ``torch.linalg.eigvalsh`` (:func:`_eig_logdet`). Never raises for
finite input; an entry whose float64 matrix is not finite gives ``nan``.

The rates compute on the smaller side of their Gram (Sylvester's identity,
``logdet(I_N + s XᵀX) = logdet(I_m + s X Xᵀ)``) and differentiate in closed form,
``∂/∂X ½ logdet(I + s·X Xᵀ) = s·(I + s·X Xᵀ)⁻¹X`` (docs/theory.md §3), from the forward's
Cholesky factor (:class:`_HalfLogdetGram`, once differentiable); :func:`logdet_identity_plus`
uses plain autograd through the factorisation.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ._checks import _compute_dtype


# --------------------------------------------------------------------------------------
# The fallback chain
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


def _cholesky(M: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(½ logdet M = Σ log diag L, L, failed)`` of one batched ``torch.linalg.cholesky_ex(M)``.

    ``failed`` marks the entries whose factorisation broke down (``info > 0``), gave a
    non-finite value or lies beyond the working precision (:func:`_beyond_precision`); their
    value must be replaced by the caller. When ``M`` needs a gradient and something failed, the
    value is taken from a re-factorisation with the failed entries replaced by the identity, so
    that no garbage factor takes part in the backward pass (``L`` stays the first factor).
    """
    L, info = torch.linalg.cholesky_ex(M)
    half = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    failed = (info != 0) | ~torch.isfinite(half)
    coarse = _beyond_precision(M)
    if coarse is not None:
        failed = failed | coarse
    if torch.is_grad_enabled() and M.requires_grad and bool(failed.any()):
        clean = torch.where(failed[..., None, None], _eye(M.shape[-1], M), M)
        half = torch.linalg.cholesky_ex(clean)[0].diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return half, L, failed


class _Float64(NamedTuple):
    """The entries of a batch that took the float64 fallback of :func:`_half_logdet`."""

    idx: Tensor  # flat indices (into M.reshape(-1, m, m)) of the entries that failed in M's dtype
    L64: Tensor  # float64 Cholesky factors of their rebuilt M (garbage where eig)
    eig: Tensor  # bool (n_f,): the float64 Cholesky failed too (eigenvalue route)
    finite: Tensor  # bool (n_f,): the rebuilt float64 M is finite (else the value is nan)


def _half_logdet(M: Tensor, rebuild64: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor, Tensor, _Float64 | None]:
    """``½ logdet M`` for a batch ``M = I + s·G`` (``G`` PSD), with the fallback chain.

    Returns ``(value, L, failed, float64)``: the value (shape ``M.shape[:-2]``), the Cholesky
    factors of ``M`` and the entries that failed in ``M``'s dtype (:func:`_cholesky`), and the
    float64 data of those (``None`` if nothing failed). ``rebuild64(idx)`` must return ``I + s·G``
    in float64 for the flat entries ``idx`` (shape ``(n_f, m, m)``).
    """
    half, L, failed = _cholesky(M)
    if not bool(failed.any()):
        return half, L, failed, None
    (idx,) = failed.reshape(-1).nonzero(as_tuple=True)
    M64 = rebuild64(idx)
    finite = torch.isfinite(M64).flatten(-2).all(-1)
    M64 = torch.where(finite[..., None, None], M64, _eye(M64.shape[-1], M64))
    half64, L64, eig = _cholesky(M64)
    if bool(eig.any()):
        bad = eig.nonzero(as_tuple=True)
        half64 = half64.index_put(bad, 0.5 * _eig_logdet(M64[bad]))
    half64 = torch.where(finite, half64, torch.full_like(half64, float("nan")))
    half = half.reshape(-1).index_put((idx,), half64.to(half.dtype)).reshape(half.shape)
    return half, L, failed, _Float64(idx, L64, eig, finite)


def logdet_identity_plus(gram: Tensor, scale: float | Tensor) -> Tensor:
    """``logdet(I + scale·gram)`` for a batch ``(..., m, m)`` of symmetric PSD Gram matrices (docs/theory.md §2).

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
    :func:`~srrlab.rate.coding_rate` and :func:`~srrlab.rate.compression_rate` rebuild the failed
    Grams from ``Z`` (and ``U``) in float64. Differentiable with plain autograd through the
    factorisation (also in ``scale`` when it is a tensor); the rates instead use a closed-form
    backward with the same fallback (:class:`_HalfLogdetGram`).
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

    def rebuild64(idx):
        g = gram.reshape(-1, m, m)[idx].double()
        s64 = (s.reshape(-1)[idx][:, None, None] if s.dim() else s).double()
        return torch.eye(m, dtype=torch.float64, device=g.device) + s64 * g

    return 2.0 * _half_logdet(M, rebuild64)[0]


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
    """``½ logdet(I + s·Gram(X))`` by one batched Cholesky, with the fallback of :func:`_half_logdet`.

    Returns ``(value, L, fallback)``; ``value`` has shape ``X.shape[:-2]``. With ``keep`` also
    the Cholesky factors ``L`` of all entries (identity for the entries that failed) and the
    float64 data of the failed ones (:class:`_Fallback`, ``None`` if nothing failed), for the
    backward pass; without ``keep`` both are ``None`` and nothing beyond the value is built.
    ``recompute(idx)`` returns the float64 ``X`` of the flat entries ``idx``, shape ``(n_f, n, m)``.
    """
    side = "rows" if rows else "cols"
    x64 = None

    def rebuild64(idx):
        # The failed entries, from X recomputed in float64 (from the original factors).
        nonlocal x64
        x64 = recompute(idx)
        return _identity_plus_gram(x64, scale, side)

    half, L, failed, f64 = _half_logdet(_gram_systems(X, scale, rows), rebuild64)
    if f64 is None:
        return half, (L if keep else None), None
    if not keep:
        return half, None, None
    L = torch.where(failed[..., None, None], _eye(L.shape[-1], L), L)
    L64 = torch.where(f64.eig[..., None, None], _eye(f64.L64.shape[-1], f64.L64), f64.L64)
    x64 = torch.where(f64.finite[..., None, None], x64, torch.zeros_like(x64))
    return half, L, _Fallback(f64.idx, x64, L64, f64.eig, f64.finite)


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
    or ``(K, B, n, m)``, with the closed-form gradient (docs/theory.md §2, §3).

    Forward: :func:`_half_logdet_gram_impl` (one batched Cholesky, float64/eigenvalue fallback
    for the failed entries), saving the Cholesky factor. Backward, for ``M = I + s·X Xᵀ``:
    ``∂/∂X ½ logdet M = s·M⁻¹X``; for ``M = I + s·XᵀX``: ``s·X M⁻¹`` (the push-through form of
    docs/theory.md §3 when ``X = A_k``): ``M⁻¹`` from the saved factor (one batched
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
            "the coding rates' closed-form backward (srrlab.rate._logdet._HalfLogdetGram) is once "
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
