"""Value tests of srrlab.rate against closed forms and references written here from the spec
(SRR.md §2, §3, §5).

References are written in the spec's *column form* (``X = Zᵀ ∈ R^{d×N}`` per image, tokens are
columns) with explicit loops over images and heads, the N×N Gram and ``torch.logdet`` in fp64;
none of the implementation's helpers is used to build a reference.
"""
from __future__ import annotations

import math

import pytest
import torch

from srrlab.rate import (
    coding_rate,
    compression_rate,
    compression_rate_grad,
    default_eps,
    l0,
    logdet_identity_plus,
    srr,
    srr_terms,
)
from srrlab.rate import _logdet, core

F64 = torch.float64


# --------------------------------------------------------------------------------------
# References (spec §2, column form, N×N Gram, fp64, loops)
# --------------------------------------------------------------------------------------
def ref_R(z: torch.Tensor, eps: float) -> torch.Tensor:
    """R(Z) = ½ logdet(I_N + (d/(N ε²)) XᵀX) for one image, X = zᵀ (d×N)."""
    x = z.to(F64).T
    d, n = x.shape
    return 0.5 * torch.logdet(torch.eye(n, dtype=F64) + d / (n * eps**2) * (x.T @ x))


def ref_Rc(z: torch.Tensor, u: torch.Tensor, eps: float) -> torch.Tensor:
    """R^c(Z; U) = Σ_k ½ logdet(I_N + γ (U_kᵀX)ᵀ(U_kᵀX)), γ = p/(N ε²), for one image."""
    x = z.to(F64).T
    d, n = x.shape
    k_heads, _, p = u.shape
    total = torch.zeros((), dtype=F64)
    for k in range(k_heads):
        a = u[k].to(F64).T @ x  # U_kᵀ X, (p, N)
        total = total + 0.5 * torch.logdet(torch.eye(n, dtype=F64) + p / (n * eps**2) * (a.T @ a))
    return total


def over_leading(fn, Z: torch.Tensor, *args) -> torch.Tensor:
    """Apply a one-image reference to every leading index of Z (..., N, d)."""
    lead = Z.shape[:-2]
    flat = Z.reshape(-1, *Z.shape[-2:])
    return torch.stack([fn(flat[i], *args) for i in range(flat.shape[0])]).reshape(lead)


def over_leading_u(fn, Z: torch.Tensor, U: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-index U: U of shape (..., K, d, p) broadcast against Z's leading dims."""
    lead = Z.shape[:-2]
    Ub = U.expand(*lead, *U.shape[-3:]).reshape(-1, *U.shape[-3:])
    flat = Z.reshape(-1, *Z.shape[-2:])
    return torch.stack([fn(flat[i], Ub[i], eps) for i in range(flat.shape[0])]).reshape(lead)


def orthonormal(n: int, m: int, seed: int) -> torch.Tensor:
    """n×m with orthonormal columns (n >= m) or rows (n < m)."""
    g = torch.Generator().manual_seed(seed)
    big, small = max(n, m), min(n, m)
    q, _ = torch.linalg.qr(torch.randn(big, small, generator=g, dtype=F64))
    return q if n >= m else q.T


def subspaces_of(o: torch.Tensor, heads: int) -> torch.Tensor:
    """Split the columns of a d×d matrix into K blocks: U (K, d, p) with U[k] = o[:, k·p:(k+1)·p]."""
    d = o.shape[0]
    p = d // heads
    return o.reshape(d, heads, p).permute(1, 0, 2).contiguous()


def rand(*shape, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# --------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d", [(6, 10), (10, 6), (8, 8)])
@pytest.mark.parametrize("c", [0.3, 2.0])
def test_coding_rate_orthonormal_closed_form(n, d, c):
    # Z = c·Q with orthonormal columns/rows: all min(N, d) singular values are c.
    eps = 0.7
    Z = c * orthonormal(n, d, seed=n + d)
    expected = 0.5 * min(n, d) * math.log1p(d / (n * eps**2) * c**2)
    assert coding_rate(Z, eps).item() == pytest.approx(expected, rel=1e-12)


def test_coding_rate_scaled_identity():
    n = d = 7
    eps, c = 0.5, 1.7
    Z = c * torch.eye(n, dtype=F64)
    assert coding_rate(Z, eps).item() == pytest.approx(0.5 * n * math.log1p(d * c**2 / (n * eps**2)), rel=1e-12)


@pytest.mark.parametrize("n", [5, 20])  # N < p and N > p
def test_compression_rate_inside_one_subspace(n):
    # U = blocks of an orthonormal d×d matrix; Z = B U_jᵀ lies in subspace j, so A_k = Z U_k = B δ_jk:
    # only head j contributes, with ½ Σ_i log(1 + γ σ_i(B)²).
    d, heads, eps, c = 16, 4, 0.6, 1.3
    p = d // heads
    U = subspaces_of(orthonormal(d, d, seed=1), heads)
    j = 2
    B = c * orthonormal(n, p, seed=3)  # σ_i(B) = c, min(N, p) of them
    Z = B @ U[j].T
    gamma = p / (n * eps**2)
    expected = 0.5 * min(n, p) * math.log1p(gamma * c**2)
    assert compression_rate(Z, U, eps).item() == pytest.approx(expected, rel=1e-12)
    # and R of the same Z: Z Zᵀ = B Bᵀ
    assert coding_rate(Z, eps).item() == pytest.approx(0.5 * min(n, p) * math.log1p(d / (n * eps**2) * c**2), rel=1e-12)
    # per-head check: with only head j's subspace, same value; without it, zero.
    assert compression_rate(Z, U[j : j + 1], eps).item() == pytest.approx(expected, rel=1e-12)
    others = torch.cat([U[:j], U[j + 1 :]])
    assert abs(compression_rate(Z, others, eps).item()) < 1e-12


def test_zero_and_rank_deficient_inputs_exact():
    n, d, heads, eps = 12, 8, 2, 0.9
    U = subspaces_of(orthonormal(d, d, seed=4), heads)
    Z0 = torch.zeros(3, n, d, dtype=F64)
    assert torch.equal(coding_rate(Z0, eps), torch.zeros(3, dtype=F64))
    assert torch.equal(compression_rate(Z0, U, eps), torch.zeros(3, dtype=F64))
    for dt in (torch.float32, F64):  # exact zeros in any dtype
        assert torch.equal(coding_rate(Z0.to(dt), eps), torch.zeros(3, dtype=dt))
    # rank r: Z = P diag(s) Qᵀ with orthonormal P (N×r), Q (d×r)
    r = 3
    s = torch.tensor([3.0, 1.0, 0.25], dtype=F64)
    Z = orthonormal(n, r, seed=5) @ torch.diag(s) @ orthonormal(d, r, seed=6).T
    expected = 0.5 * torch.log1p(d / (n * eps**2) * s**2).sum()
    assert coding_rate(Z, eps).item() == pytest.approx(expected.item(), rel=1e-12)
    assert coding_rate(Z.float(), eps).item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------------------
# Against the naive reference; both Gram sides
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 7, 30])  # N < p < d, p < N < d, N > d
def test_against_naive_reference_leading_dims(n):
    d, heads, eps = 12, 3, 0.8
    Z = rand(2, 3, n, d, seed=n)
    U = rand(heads, d, d // heads, seed=100 + n)
    R = coding_rate(Z, eps)
    Rc = compression_rate(Z, U, eps)
    assert R.shape == Rc.shape == (2, 3)
    torch.testing.assert_close(R, over_leading(ref_R, Z, eps), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(Rc, over_leading(ref_Rc, Z, U, eps), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("u_lead", [(2, 3), (2, 1), (3,)])
def test_per_index_subspaces(u_lead):
    n, d, heads, eps = 9, 8, 2, 1.1
    Z = rand(2, 3, n, d, seed=7)
    U = rand(*u_lead, heads, d, 4, seed=8)
    Rc = compression_rate(Z, U, eps)
    assert Rc.shape == (2, 3)
    torch.testing.assert_close(Rc, over_leading_u(ref_Rc, Z, U, eps), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("n,d", [(5, 11), (11, 5)])
def test_both_gram_sides_agree(n, d):
    eps = 0.4
    Z = rand(4, n, d, seed=n * d)
    U = rand(2, d, 3, seed=1)
    ref = over_leading(ref_R, Z, eps)
    for side in ("N", "d"):  # force the N×N and the d×d Gram
        torch.testing.assert_close(core._coding_rate(Z, eps, None, side=side), ref, rtol=1e-10, atol=1e-12)
    ref_c = over_leading(ref_Rc, Z, U, eps)
    Ub = rand(4, 2, d, 3, seed=2)  # per-index subspaces take another code path
    ref_cb = over_leading_u(ref_Rc, Z, Ub, eps)
    for side in ("p", "N"):  # force the p×p and the N×N head Grams
        torch.testing.assert_close(core._compression_rate(Z, U, eps, None, side=side), ref_c, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(core._compression_rate(Z, Ub, eps, None, side=side), ref_cb, rtol=1e-10, atol=1e-12)


def test_fp32_matches_fp64_and_dtype_option():
    n, d, heads, eps = 20, 16, 4, 0.8
    Z = rand(3, n, d, seed=11, dtype=torch.float32)
    U = rand(heads, d, 4, seed=12, dtype=torch.float32)
    r32, r64 = coding_rate(Z, eps), coding_rate(Z, eps, dtype=F64)
    c32, c64 = compression_rate(Z, U, eps), compression_rate(Z, U, eps, dtype=F64)
    assert r32.dtype == c32.dtype == torch.float32 and r64.dtype == c64.dtype == F64
    torch.testing.assert_close(r32.double(), r64, rtol=1e-5, atol=0)
    torch.testing.assert_close(c32.double(), c64, rtol=1e-5, atol=0)
    t32, t64 = srr_terms(Z, U, dtype=None), srr_terms(Z, U, dtype=F64)
    for key in ("R", "Rc", "l0", "mu"):
        assert t64[key].dtype == F64
        torch.testing.assert_close(t32[key].double(), t64[key], rtol=1e-5, atol=0)
    # the fp64 option against the reference built from the same fp32 numbers
    torch.testing.assert_close(c64, over_leading(ref_Rc, Z, U, eps), rtol=1e-10, atol=0)


# --------------------------------------------------------------------------------------
# Roundoff, fallback and non-finite input
# --------------------------------------------------------------------------------------
def test_logdet_identity_plus_fallback_when_fp32_cholesky_fails():
    # Rank-one Gram with entries 1e8: I + s·G is positive definite, but in fp32 the "1" on the
    # diagonal is below the roundoff of 1e8, so the plain Cholesky breaks down.
    m, s = 5, 0.5
    gram = torch.full((m, m), 1e8, dtype=torch.float32)
    assert torch.linalg.cholesky_ex(torch.eye(m) + s * gram).info.item() > 0
    exact = math.log1p(s * m * 1e8)  # logdet(I + s v vᵀ) = log(1 + s‖v‖²)
    out = logdet_identity_plus(gram, s)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert out.item() == pytest.approx(exact, rel=1e-6)
    # batched, with one scale per matrix and a well-conditioned neighbour
    good = torch.eye(m) * 2.0
    out = logdet_identity_plus(torch.stack([good, gram]), torch.tensor([1.0, s]))
    assert out[0].item() == pytest.approx(m * math.log(3.0), rel=1e-6)
    assert out[1].item() == pytest.approx(exact, rel=1e-6)


def test_logdet_identity_plus_eigenvalue_last_resort():
    # Not PSD even in fp64: Cholesky fails in both dtypes; the documented last resort clamps
    # the eigenvalues of I + s·G at 1: eigenvalues 1 ± 1e10 -> log(1 + 1e10) + log(1).
    gram = torch.tensor([[0.0, 1e10], [1e10, 0.0]], dtype=F64)
    out = logdet_identity_plus(gram, 1.0)
    assert out.item() == pytest.approx(math.log1p(1e10), rel=1e-12)


def test_logdet_identity_plus_matches_logdet_and_is_differentiable():
    a = rand(3, 6, 4, seed=21)
    gram = (a @ a.mT).requires_grad_()
    out = logdet_identity_plus(gram, 0.7)
    torch.testing.assert_close(out, torch.logdet(torch.eye(6, dtype=F64) + 0.7 * gram), rtol=1e-12, atol=0)
    assert torch.autograd.gradcheck(lambda g: logdet_identity_plus(g @ g.mT, 0.7), (a.clone().requires_grad_(),))


def test_fallback_keeps_gradients_of_good_entries_clean():
    # One failing entry in the batch must not poison the gradient of the others (nor its own).
    m = 4
    ok = rand(m, m, seed=3, dtype=torch.float32)
    ok = ok @ ok.T
    bad = torch.full((m, m), 1e8)
    gram = torch.stack([ok, bad]).requires_grad_()
    logdet_identity_plus(gram, 0.5).sum().backward()
    assert torch.isfinite(gram.grad).all()
    alone = ok.clone().requires_grad_()
    logdet_identity_plus(alone, 0.5).backward()
    torch.testing.assert_close(gram.grad[0], alone.grad)


@pytest.mark.parametrize("rank", [None, 3])
def test_huge_scale_fp32_matches_fp64(rank):
    n, d, heads, eps = 10, 16, 4, 0.5
    if rank is None:
        Z = rand(4, n, d, seed=31)
    else:  # rank-deficient: the plain fp32 Cholesky breaks down
        Z = rand(4, n, rank, seed=31) @ rand(rank, d, seed=32)
    Z32 = (Z * 1e6).float()
    U = subspaces_of(orthonormal(d, d, seed=33), heads).float()
    if rank is not None:
        m = torch.eye(n) + d / (n * eps**2) * (Z32 @ Z32.mT)
        assert (torch.linalg.cholesky_ex(m).info > 0).any()
    for fn, args in ((coding_rate, ()), (compression_rate, (U,))):
        v32 = fn(Z32, *args, eps)
        v64 = fn(Z32, *args, eps, dtype=F64)
        assert v32.dtype == torch.float32 and torch.isfinite(v32).all()
        torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=0)
    # and near the exact value of the given fp32 input, from its singular values (Z32 is only
    # nearly rank r: rounding to fp32 adds small singular values, which contribute too). Any Gram
    # route, even in fp64, resolves eigenvalues near 1 only to about u·‖s·G‖ ≈ 1e-16·1e13 here.
    sv = torch.linalg.svdvals(Z32.double())
    exact = 0.5 * torch.log1p(d / (n * eps**2) * sv**2).sum(-1)
    torch.testing.assert_close(coding_rate(Z32, eps).double(), exact, rtol=2e-3, atol=0)


def test_non_finite_input_gives_nan_without_raising():
    n, d, heads, eps = 6, 8, 2, 0.5
    Z = rand(3, n, d, seed=41, dtype=torch.float32)
    Z[1, 0, 0] = float("nan")
    Z[2, 3, 5] = float("inf")
    U = rand(heads, d, 4, seed=42, dtype=torch.float32)
    R, Rc, mu = coding_rate(Z, eps), compression_rate(Z, U, eps), srr(Z, U, eps)
    for v in (R, Rc, mu):
        assert torch.isfinite(v[0]) and torch.isnan(v[1:]).all()
    assert R[0].item() == pytest.approx(ref_R(Z[0], eps).item(), rel=1e-5)
    gram = torch.stack([torch.eye(3), torch.full((3, 3), float("nan"))])
    out = logdet_identity_plus(gram, 1.0)
    assert out[0].item() == pytest.approx(3 * math.log(2.0), rel=1e-6) and torch.isnan(out[1])


def test_cholesky_thread_setting_is_restored():
    before = torch.get_num_threads()
    coding_rate(rand(4, 6, 8, seed=1, dtype=torch.float32), 1.0)
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [3, 7])  # N < p (N×N head Grams, N×N for R) and p < N < d
def test_gradcheck_rates(n):
    d, heads, eps = 6, 2, 0.9
    Z = rand(2, n, d, seed=n).requires_grad_()
    U = rand(heads, d, 3, seed=50 + n).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: coding_rate(z, eps), (Z,))
    assert torch.autograd.gradcheck(lambda z, u: compression_rate(z, u, eps), (Z, U))
    assert torch.autograd.gradcheck(lambda z, u: srr(z, u, eps, lam=0.1), (Z, U))
    Zt = rand(2, 9, 4, seed=9).requires_grad_()  # N > d: the d×d side for R
    assert torch.autograd.gradcheck(lambda z: coding_rate(z, eps), (Zt,))


@pytest.mark.parametrize("eps", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("n", [3, 11])  # N < p and N > p
def test_compression_rate_grad_equals_autograd(eps, n):
    d, heads = 8, 2
    Z = rand(2, 3, n, d, seed=int(eps * 10) + n).requires_grad_()
    U = rand(heads, d, 4, seed=n)
    (auto,) = torch.autograd.grad(compression_rate(Z, U, eps).sum(), Z)
    closed = compression_rate_grad(Z.detach(), U, eps)
    assert closed.shape == Z.shape
    torch.testing.assert_close(closed, auto, rtol=1e-10, atol=1e-12)
    # per-index subspaces
    Ub = rand(2, 1, heads, d, 4, seed=n + 1)
    (auto,) = torch.autograd.grad(compression_rate(Z, Ub, eps).sum(), Z)
    torch.testing.assert_close(compression_rate_grad(Z.detach(), Ub, eps), auto, rtol=1e-10, atol=1e-12)


def test_compression_rate_grad_dtype():
    Z = rand(2, 5, 8, seed=1, dtype=torch.float32)
    U = rand(2, 8, 4, seed=2, dtype=torch.float32)
    g64 = compression_rate_grad(Z, U, 0.7, dtype=F64)
    assert g64.dtype == F64 and compression_rate_grad(Z, U, 0.7).dtype == torch.float32
    torch.testing.assert_close(compression_rate_grad(Z, U, 0.7).double(), g64, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------
# ‖Z‖₀, μ and ε
# --------------------------------------------------------------------------------------
def test_l0_counts_with_tol_and_normalize():
    Z = torch.tensor([[[0.0, 0.5, -0.05], [0.0, 0.0, 2.0]], [[1.0, 1.0, 1.0], [0.0, -1.0, 0.0]]])
    torch.testing.assert_close(l0(Z), torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(l0(Z, tol=0.1), torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(l0(Z, normalize=True), torch.tensor([3 / 6, 4 / 6]))
    torch.testing.assert_close(l0(Z, tol=0.1, normalize=True), torch.tensor([2 / 6, 4 / 6]))
    assert l0(Z.double()).dtype == F64 and l0(Z.to(torch.int64)).dtype == torch.get_default_dtype()
    assert l0(torch.full((2, 2), float("nan"))).item() == 0.0  # nan is not counted


def test_srr_terms_values_and_default_eps():
    n, d, heads, lam = 9, 12, 3, 0.25
    p = d // heads
    Z = torch.relu(rand(2, n, d, seed=61))
    U = rand(heads, d, p, seed=62)
    terms = srr_terms(Z, U, lam=lam)
    eps = math.sqrt(p / n)
    assert terms["eps"] == pytest.approx(eps) == default_eps(n, p)
    assert isinstance(terms["eps"], float)
    # γ = p/(N ε²) = 1 under the default
    torch.testing.assert_close(terms["R"], over_leading(ref_R, Z, eps), rtol=1e-10, atol=0)
    torch.testing.assert_close(terms["Rc"], over_leading(ref_Rc, Z, U, eps), rtol=1e-10, atol=0)
    torch.testing.assert_close(terms["l0"], (Z != 0).sum((-2, -1)).double())
    torch.testing.assert_close(terms["mu"], lam * terms["l0"] + terms["Rc"] - terms["R"])
    torch.testing.assert_close(srr(Z, U, lam=lam), terms["mu"])
    # explicit eps and the normalised sparsity
    t2 = srr_terms(Z, U, 0.3, lam, tol=0.5, normalize=True)
    assert t2["eps"] == 0.3
    torch.testing.assert_close(t2["mu"], lam * l0(Z, 0.5, True) + compression_rate(Z, U, 0.3) - coding_rate(Z, 0.3))
    torch.testing.assert_close(srr(Z, U, 0.3, lam, tol=0.5, normalize=True), t2["mu"])


def test_default_eps():
    assert default_eps(65, 64) == pytest.approx(math.sqrt(64 / 65))
    for bad in ((0, 64), (65, 0), (6.5, 64)):
        with pytest.raises(ValueError, match="num_tokens|dim_head"):
            default_eps(*bad)


# --------------------------------------------------------------------------------------
# Errors at the API boundary
# --------------------------------------------------------------------------------------
def test_error_messages():
    Z = torch.zeros(2, 5, 64)
    with pytest.raises(ValueError, match=r"U must have shape \(K, d, p\).*d = Z.shape\[-1\] = 64, got \(6, 32, 8\)"):
        compression_rate(Z, torch.zeros(6, 32, 8), 1.0)
    with pytest.raises(ValueError, match=r"U must have shape.*got \(64, 8\)"):
        srr(Z, torch.zeros(64, 8))
    with pytest.raises(ValueError, match=r"U's leading dims \(3,\).*Z's leading dims \(2,\)"):
        compression_rate(Z, torch.zeros(3, 2, 64, 8), 1.0)
    with pytest.raises(ValueError, match=r"Z must have shape \(\.\.\., N, d\).*got shape \(64,\)"):
        coding_rate(torch.zeros(64), 1.0)
    with pytest.raises(ValueError, match="Z must"):
        l0(torch.zeros(3))
    for eps in (0.0, -1.0, float("nan"), None):
        with pytest.raises(ValueError, match="eps must be a positive"):
            coding_rate(Z, eps)
    with pytest.raises(ValueError, match="eps must be a positive"):
        srr_terms(Z, torch.zeros(8, 64, 8), eps=-0.5)
    with pytest.raises(ValueError, match="lam must be"):
        srr(Z, torch.zeros(8, 64, 8), lam=-0.1)
    with pytest.raises(ValueError, match="tol must be"):
        l0(Z, tol=-1.0)
    with pytest.raises(ValueError, match="dtype must be"):
        coding_rate(Z, 1.0, dtype=torch.int32)
    with pytest.raises(ValueError, match="gram must be"):
        logdet_identity_plus(torch.zeros(3, 4), 1.0)
    with pytest.raises(ValueError, match="U must have shape"):
        compression_rate_grad(Z, torch.zeros(6, 32, 8), 1.0)


def test_no_grad_and_inference_mode_match_grad_mode():
    # The values must not depend on the autograd mode (the fallback re-factorises only with grad).
    Z = rand(64, 40, 48, seed=71, dtype=torch.float32)
    U = rand(4, 48, 12, seed=72, dtype=torch.float32)
    grad = srr_terms(Z.requires_grad_(), U)
    with torch.no_grad():
        plain = srr_terms(Z, U)
    with torch.inference_mode():
        inference = srr_terms(Z.detach(), U)
    for key in ("R", "Rc", "mu"):
        torch.testing.assert_close(plain[key], grad[key].detach(), rtol=1e-6, atol=0)
        torch.testing.assert_close(inference[key], grad[key].detach(), rtol=1e-6, atol=0)
    idx = [0, 31, 63]
    torch.testing.assert_close(plain["R"][idx].double(), torch.stack([ref_R(Z[i].detach(), plain["eps"]) for i in idx]), rtol=1e-5, atol=0)
    torch.testing.assert_close(
        plain["Rc"][idx].double(), torch.stack([ref_Rc(Z[i].detach(), U, plain["eps"]) for i in idx]), rtol=1e-5, atol=0
    )

# --------------------------------------------------------------------------------------
# Closed-form backward of the rates (core._HalfLogdetGram): ∂/∂X ½ logdet(I + s·X Xᵀ) = s·M⁻¹X
# --------------------------------------------------------------------------------------
def naive_grads(Z: torch.Tensor, U: torch.Tensor, eps: float, w: torch.Tensor):
    """Plain-autograd gradients of Σ w·R and Σ w·R^c through the references (N×N, torch.logdet, fp64)."""
    z = Z.detach().to(F64).requires_grad_()
    u = U.detach().to(F64).requires_grad_()
    (gR,) = torch.autograd.grad((w * over_leading(ref_R, z, eps)).sum(), z)
    rc = over_leading(ref_Rc, z, u, eps) if U.dim() == 3 else over_leading_u(ref_Rc, z, u, eps)
    gRc_z, gRc_u = torch.autograd.grad((w * rc).sum(), (z, u))
    return gR, gRc_z, gRc_u


def impl_grads(Z: torch.Tensor, U: torch.Tensor, eps: float, w: torch.Tensor, side_r=None, side_c=None):
    z = Z.detach().clone().requires_grad_()
    u = U.detach().clone().requires_grad_()
    (gR,) = torch.autograd.grad((w * core._coding_rate(z, eps, None, side=side_r)).sum(), z)
    gRc_z, gRc_u = torch.autograd.grad((w * core._compression_rate(z, u, eps, None, side=side_c)).sum(), (z, u))
    return gR, gRc_z, gRc_u


def assert_grad_close(got: torch.Tensor, ref: torch.Tensor, rtol: float) -> None:
    """Elementwise, with an absolute floor of rtol·max|ref| (components near zero)."""
    torch.testing.assert_close(got.to(F64), ref, rtol=rtol, atol=rtol * ref.abs().max().item())


@pytest.mark.parametrize("n,d", [(4, 7), (9, 5)])  # N < d and N > d; every side is forced below
def test_gradcheck_rates_both_gram_sides(n, d):
    eps = 0.8
    Z = rand(2, n, d, seed=10 * n + d).requires_grad_()
    for side in ("N", "d"):  # the N×N and the d×d Gram, whichever is smaller
        assert torch.autograd.gradcheck(lambda z: core._coding_rate(z, eps, None, side=side), (Z,))
    U = rand(2, d, 3, seed=1).requires_grad_()  # shared subspaces (K, d, p)
    Ub = rand(2, 2, d, 3, seed=2).requires_grad_()  # per-index subspaces (B, K, d, p)
    for side in ("p", "N"):  # the p×p and the N×N head Grams
        for u in (U, Ub):
            assert torch.autograd.gradcheck(lambda z, u: core._compression_rate(z, u, eps, None, side=side), (Z, u))
    # leading dims, with per-index U broadcast over one of them
    Z4 = rand(2, 2, 3, d, seed=3).requires_grad_()
    U4 = rand(2, 1, 2, d, 2, seed=4).requires_grad_()
    for side in ("p", "N"):
        assert torch.autograd.gradcheck(lambda z, u: core._compression_rate(z, u, eps, None, side=side), (Z4, U4))
    assert torch.autograd.gradcheck(lambda z, u: srr(z, u, eps, lam=0.1), (Z4, U4))


@pytest.mark.parametrize("dtype,rtol", [(F64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("n", [3, 7, 30])  # N < p < d, p < N < d, N > d
@pytest.mark.parametrize("shared", [True, False])
def test_gradients_match_naive_reference(dtype, rtol, n, shared):
    d, heads, p, eps = 12, 3, 4, 0.8
    Z = rand(2, 3, n, d, seed=n)
    U = rand(heads, d, p, seed=100 + n) if shared else rand(2, 1, heads, d, p, seed=200 + n)
    w = rand(2, 3, seed=300 + n)  # a non-uniform upstream gradient
    ref = naive_grads(Z, U, eps, w)
    for side_r, side_c in (("N", "p"), ("d", "N"), (None, None)):
        got = impl_grads(Z.to(dtype), U.to(dtype), eps, w.to(dtype), side_r, side_c)
        for g, r in zip(got, ref):
            assert g.dtype == dtype and g.shape == r.shape
            assert_grad_close(g, r, rtol)


def test_gradient_of_fallback_entries_matches_float64_reference():
    # Entry 1 is scaled far beyond fp32 precision (m·u·max M_ii >= 1): its value and gradient
    # come from the float64 fallback; the other entries from the fp32 factorisation. Square
    # blocks (N = d = p), so that every Gram, on either side, has full rank and the float64
    # reference (and any float64 route) resolves all its eigenvalues: with a rank-deficient Gram
    # at this scale the gradient is ill-conditioned in float64 itself (error ~ u·λ_max).
    n = d = p = 8
    eps = 0.5
    Z = rand(3, n, d, seed=81)
    Z[1] *= 1e6
    Z32 = Z.float()
    U32 = rand(2, d, p, seed=82, dtype=torch.float32)
    s, gamma = d / (n * eps**2), p / (n * eps**2)
    assert _logdet._beyond_precision((torch.eye(n) + s * (Z32[1] @ Z32[1].T))[None]).item()
    a = Z32[1] @ U32[0]
    assert _logdet._beyond_precision((torch.eye(p) + gamma * (a.T @ a))[None]).item()
    w = torch.tensor([1.0, -0.7, 0.4])
    ref = naive_grads(Z32, U32, eps, w.double())
    for side_r, side_c in (("N", "p"), ("d", "N")):
        got = impl_grads(Z32, U32, eps, w, side_r, side_c)
        for g in got:
            assert g.dtype == torch.float32 and torch.isfinite(g).all()
        gR, gRc_z, gRc_u = got
        # Per entry (their gradients differ by orders of magnitude). The fallback entry is
        # computed in float64 and only rounded to fp32; the others carry the fp32 roundoff times
        # cond(M) (about 1e3 for these random 8×8 blocks).
        for i, tol in ((0, 1e-4), (1, 1e-6), (2, 1e-4)):
            assert_grad_close(gR[i], ref[0][i], tol)
            assert_grad_close(gRc_z[i], ref[1][i], tol)
        assert_grad_close(gRc_u, ref[2], 1e-4)


def test_gradient_of_eigenvalue_route_entries():
    # Exactly rank one with entries ±2^30: I + s·Gram is not numerically positive definite even in
    # float64 (the fp64 Cholesky fails), so the value takes the eigenvalue route. The exact gradient
    # is known in closed form: ∇_Z ½ log(1 + s‖Z‖²) = s·Z / (1 + s‖Z‖²).
    n, d, eps = 6, 8, 0.5
    g = torch.Generator().manual_seed(5)
    a = torch.randint(0, 2, (n,), generator=g).double() * 2 - 1
    b = torch.randint(0, 2, (d,), generator=g).double() * 2 - 1
    big = 2.0**30 * torch.outer(a, b)
    Z = torch.stack([rand(n, d, seed=6), big]).float()
    s = d / (n * eps**2)
    for side in ("N", "d"):
        gram = big @ big.T if side == "N" else big.T @ big
        assert torch.linalg.cholesky_ex(torch.eye(gram.shape[0], dtype=F64) + s * gram).info.item() > 0
        z = Z.clone().requires_grad_()
        core._coding_rate(z, eps, None, side=side).sum().backward()
        exact = s * big / (1 + s * (big**2).sum())
        torch.testing.assert_close(z.grad[1].double(), exact, rtol=1e-6, atol=0)
        alone = Z[:1].clone().requires_grad_()  # the neighbour's gradient is untouched
        core._coding_rate(alone, eps, None, side=side).sum().backward()
        torch.testing.assert_close(z.grad[0], alone.grad[0])
    # the compression rate, with coordinate subspaces (A_k = column blocks of Z, exact)
    heads, p = 2, 4
    U = subspaces_of(torch.eye(d, dtype=F64), heads).float()
    gamma = p / (n * eps**2)
    for side in ("p", "N"):
        z = Z.clone().requires_grad_()
        core._compression_rate(z, U, eps, None, side=side).sum().backward()
        blocks = big.reshape(n, heads, p)
        exact = (gamma * blocks / (1 + gamma * (blocks**2).sum((0, 2), keepdim=True))).reshape(n, d)
        torch.testing.assert_close(z.grad[1].double(), exact, rtol=1e-6, atol=0)


def test_srr_terms_mu_gradient_is_rc_minus_r():
    n, d, heads, eps = 9, 12, 3, 0.7
    Z = torch.relu(rand(2, 3, n, d, seed=91)).requires_grad_()
    U = rand(heads, d, 4, seed=92).requires_grad_()
    terms = srr_terms(Z, U, eps, lam=0.3)
    assert not terms["l0"].requires_grad  # ‖Z‖₀ has no gradient (spec §7)
    w = rand(2, 3, seed=93)
    gmu_z, gmu_u = torch.autograd.grad((w * terms["mu"]).sum(), (Z, U))
    gRc_z, gRc_u = torch.autograd.grad((w * compression_rate(Z, U, eps)).sum(), (Z, U))
    (gR_z,) = torch.autograd.grad((w * coding_rate(Z, eps)).sum(), Z)
    torch.testing.assert_close(gmu_z, gRc_z - gR_z, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gmu_u, gRc_u, rtol=1e-12, atol=1e-14)


def test_rates_are_once_differentiable():
    Z = rand(2, 5, 6, seed=95).requires_grad_()
    (g,) = torch.autograd.grad(coding_rate(Z, 0.8).sum(), Z, create_graph=True)
    with pytest.raises(RuntimeError, match="once differentiable"):
        g.sum().backward()
    # also when only the saved input, not the upstream gradient, carries the graph
    v = rand(2, 5, 6, seed=96).requires_grad_()
    (g,) = torch.autograd.grad(compression_rate(Z, rand(2, 6, 3, seed=97), 0.8).sum(), Z, create_graph=True)
    with pytest.raises(RuntimeError, match="once differentiable"):
        (g * v).sum().backward()
