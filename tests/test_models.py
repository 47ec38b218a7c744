"""Value tests of srrlab.models against references written here from the spec (SRR.md §1–§3, §8).

Every reference below is written from the spec formulas in *column form* (``Z ∈ R^{d×N}`` per
image, tokens are columns) with explicit loops over images and heads; none of the
implementation's helpers is used to build a reference. Comparisons are in fp64 unless the point
is fp32 agreement with the official forward.
"""
from __future__ import annotations

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srrlab.models import (
    CRATE,
    SIZES,
    VARIANTS,
    CompressionStep,
    CRATEConfig,
    ISTAStep,
    compression_rate_gradient,
    count_parameters,
    create_model,
    load_official_crate,
    model_config,
)

F64 = torch.float64

# The spec §3 table, restated independently of srrlab.models.VARIANTS: sign s and operator O.
SPEC_TABLE = {
    "crate": (+1.0, "learned"),
    "crate-c": (+1.0, "U"),
    "crate-n": (-1.0, "U"),
    "crate-t": (+1.0, "Ut"),
    "crate-fix": (+1.0, "fixed"),
    "crate-identity": (+1.0, "identity"),
    "crate-g": (-1.0, "gradient"),  # Y = Z − α ∇_Z R^c(Z; U)
}
ALL_VARIANTS = list(SPEC_TABLE)
SQUARE_ONLY = {"crate-t", "crate-identity"}


def test_variant_table_is_the_spec_table():
    assert set(VARIANTS) == set(SPEC_TABLE)
    for name, (sign, _) in SPEC_TABLE.items():
        assert VARIANTS[name].sign == sign
        assert VARIANTS[name].needs_square == (name in SQUARE_ONLY)


# ======================================================================================
# Independent references (column form, explicit loops)
# ======================================================================================
def ref_layer_norm(x, weight, bias, eps=1e-5):
    mu = x.mean(dim=-1, keepdim=True)
    var = ((x - mu) ** 2).mean(dim=-1, keepdim=True)  # biased variance, as LayerNorm
    return (x - mu) / torch.sqrt(var + eps) * weight + bias


def ref_ssa_head_column(A, tau):
    """SSA_k = A softmax(AᵀA·τ) for A = U_kᵀZ (p×N).

    Column j of ``A @ S`` is ``Σ_i A[:, i] S[i, j]``: token j is the query and the keys are
    indexed by the row i, so "softmax over keys" normalises each *column* (dim 0).
    """
    G = A.T @ A  # N×N, G[i, j] = <a_i, a_j>
    S = torch.softmax(G * tau, dim=0)
    return A @ S


def ref_ssa_head_official_rows(w, scale):
    """The official row form of one head: dots = w wᵀ·scale, softmax over the last dim, attn @ w."""
    dots = (w @ w.T) * scale
    attn = torch.softmax(dots, dim=-1)
    return attn @ w


def ref_rc(Z, U, heads, gamma):
    """R^c(Z; U) = Σ_k ½ logdet(I_N + γ A_kᵀA_k), A_k = U_kᵀZ, in the N×N form (spec §2)."""
    d, N = Z.shape
    p = U.shape[1] // heads
    total = Z.new_zeros(())
    for k in range(heads):
        Uk = U[:, k * p:(k + 1) * p]
        A = Uk.T @ Z
        M = torch.eye(N, dtype=Z.dtype) + gamma * (A.T @ A)
        total = total + 0.5 * torch.logdet(M)
    return total


def ref_rc_grad(Z, U, heads, gamma):
    with torch.enable_grad():
        Zv = Z.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ref_rc(Zv, U.detach(), heads, gamma), Zv)
    return g


def ref_update_column(Z, *, variant, U, heads, tau, alpha, gamma, W=None, bias=None, O_fixed=None):
    """The compression update s·α·γ²·O(SSA_1(Z), …, SSA_K(Z)) (no skip), or −α∇R^c for crate-g."""
    sign, op = SPEC_TABLE[variant]
    if op == "gradient":
        return -alpha * ref_rc_grad(Z, U, heads, gamma)
    p = U.shape[1] // heads
    blocks = []
    for k in range(heads):
        Uk = U[:, k * p:(k + 1) * p]  # d×p
        blocks.append(ref_ssa_head_column(Uk.T @ Z, tau))
    S = torch.cat(blocks, dim=0)  # Kp×N
    if op == "learned":
        out = W @ S + bias[:, None]
    elif op == "U":
        out = U @ S
    elif op == "Ut":
        out = U.T @ S
    elif op == "fixed":
        out = O_fixed @ S
    else:
        out = S
    return sign * alpha * gamma**2 * out


def ref_ista_column(Y, D, beta, lambd):
    """Z' = ReLU(Y + β Dᵀ(Y − D Y) − β λ) with Y ∈ R^{d×N}."""
    return torch.relu(Y + beta * (D.T @ (Y - D @ Y)) - beta * lambd)


def ref_ista_official_rows(x, D, beta, lambd):
    """Official: ReLU(x + β(Dᵀx − DᵀDx) − βλ), F.linear(x, D) meaning x Dᵀ (rows are tokens)."""
    Dx = F.linear(x, D)  # rows of (D x)
    DtDx = F.linear(Dx, D.t())  # rows of (Dᵀ D x)
    Dtx = F.linear(x, D.t())  # rows of (Dᵀ x)
    return torch.relu(x + beta * (Dtx - DtDx) - beta * lambd)


def ref_patches(images, P):
    """'b c (h p1) (w p2) -> b (h w) (p1 p2 c)', one patch at a time."""
    B, C, H, W = images.shape
    gh, gw = H // P, W // P
    out = images.new_empty(B, gh * gw, P * P * C)
    for i in range(gh):
        for j in range(gw):
            block = images[:, :, i * P:(i + 1) * P, j * P:(j + 1) * P]  # (B, c, p1, p2)
            out[:, i * gw + j] = block.permute(0, 2, 3, 1).reshape(B, P * P * C)
    return out


def _attn_params(sd, prefix):
    """U (d×Kp), and the operators of a layer from a srrlab state dict (spec: qkv.weight = Uᵀ)."""
    return dict(
        U=sd[prefix + "attn.qkv.weight"].T,
        W=sd.get(prefix + "attn.to_out.weight"),
        bias=sd.get(prefix + "attn.to_out.bias"),
        O_fixed=sd.get(prefix + "attn.fixed_out"),
    )


def _tau(cfg):
    return cfg.dim_head**-0.5 if cfg.temperature is None else cfg.temperature


def _gamma(cfg, N):
    return 1.0 if cfg.eps is None else cfg.dim_head / (N * cfg.eps**2)


def ref_crate_forward(model, images, layernorm=True):
    """A hand-written forward of a srrlab CRATE model from its state dict and config (spec §3)."""
    cfg = model.config
    sd = {k: v.detach() for k, v in model.state_dict().items()}

    def ln(x, name):
        if not layernorm or name + ".weight" not in sd:
            return x
        return ref_layer_norm(x, sd[name + ".weight"], sd[name + ".bias"])

    x = ref_patches(images, cfg.patch_size)
    x = ln(x, "patch_norm_in")
    x = x @ sd["patch_proj.weight"].T + sd["patch_proj.bias"]
    x = ln(x, "patch_norm_out")
    B = x.shape[0]
    x = torch.cat([sd["cls_token"].expand(B, 1, cfg.dim), x], dim=1) + sd["pos_embedding"]
    N = x.shape[1]
    states = []
    for layer in range(cfg.depth):
        pre = f"layers.{layer}."
        params = _attn_params(sd, pre)
        h = ln(x, pre + "norm1")
        upd = torch.stack([
            ref_update_column(h[b].T, variant=cfg.variant, heads=cfg.heads, tau=_tau(cfg),
                              alpha=cfg.alpha, gamma=_gamma(cfg, N), **params).T
            for b in range(B)
        ])
        y = x + upd
        h2 = ln(y, pre + "norm2")
        D = sd[pre + "ista.weight"]
        z = torch.stack([ref_ista_column(h2[b].T, D, cfg.ista, cfg.lambd).T for b in range(B)])
        states.append((x, y, z))
        x = z
    logits = ln(x[:, 0], "head_norm") @ sd["head.weight"].T + sd["head.bias"]
    return states, logits


# ======================================================================================
# Helpers
# ======================================================================================
def _model(variant, size="digits", seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model(f"{variant}-{size}", **overrides).double().eval()


def _images(model, batch=2, seed=1, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return torch.randn(batch, c.channels, c.image_size, c.image_size, generator=g, dtype=dtype)


def _tokens(model, batch=3, seed=2):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    return torch.randn(batch, c.num_tokens, c.dim, generator=g, dtype=F64)


def _close(a, b, atol=1e-11, rtol=1e-9):
    torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


# ======================================================================================
# 1. The compression step of every variant
# ======================================================================================
def test_column_reference_equals_official_row_form():
    """Sanity check of the reference itself: column-form SSA_k is the transpose of the official row form."""
    g = torch.Generator().manual_seed(0)
    N, p = 7, 5
    for tau in (p**-0.5, 0.37):
        w = torch.randn(N, p, generator=g, dtype=F64)  # rows are tokens
        col = ref_ssa_head_column(w.T, tau)  # A = wᵀ
        _close(col.T, ref_ssa_head_official_rows(w, tau), atol=1e-13)
        # softmax over keys: each query's weights sum to one
        S = torch.softmax((w @ w.T) * tau, dim=0)
        _close(S.sum(0), torch.ones(N, dtype=F64))


_STEP_CASES = []
for _v in ALL_VARIANTS:
    _STEP_CASES.append((_v, {}))
    _STEP_CASES.append((_v, {"temperature": 0.11, "alpha": 0.7}))
    if _v not in SQUARE_ONLY:
        _STEP_CASES.append((_v, {"dim_head": 8, "alpha": 1.6}))  # Kp = 32 ≠ d = 64
    _STEP_CASES.append((_v, {"eps": 0.5, "alpha": 1.3}))  # γ ≠ 1: the factor αγ² of [HZX-2]


@pytest.mark.parametrize("variant,opts", _STEP_CASES,
                         ids=[f"{v}-{'-'.join(f'{k}={x}' for k, x in o.items()) or 'default'}"
                              for v, o in _STEP_CASES])
def test_compression_step_matches_column_reference(variant, opts):
    model = _model(variant, **opts)
    cfg = model.config
    z = _tokens(model)
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    assert isinstance(model.layers[0].attn, CompressionStep)
    for index in (0, cfg.depth - 1):
        attn = model.layers[index].attn
        with torch.no_grad():
            out = attn(z)
        assert out.shape == z.shape and out.dtype == F64
        params = _attn_params(sd, f"layers.{index}.")
        for b in range(z.shape[0]):
            ref = ref_update_column(z[b].T, variant=variant, heads=cfg.heads, tau=_tau(cfg),
                                    alpha=cfg.alpha, gamma=_gamma(cfg, z.shape[1]), **params)
            _close(out[b], ref.T)
        # the update is not trivially zero
        assert out.abs().max() > 1e-3


def test_default_temperature_is_inverse_sqrt_head_dim():
    a = _model("crate-c")
    b = _model("crate-c", temperature=16**-0.5)  # p = 64 / 4
    b.load_state_dict(a.state_dict())
    z = _tokens(a)
    with torch.no_grad():
        assert torch.equal(a.layers[0].attn(z), b.layers[0].attn(z))
        c = _model("crate-c", temperature=0.5)
        c.load_state_dict(a.state_dict())
        assert not torch.allclose(a.layers[0].attn(z), c.layers[0].attn(z))


@pytest.mark.parametrize("variant", ["crate-c", "crate-g"])
def test_eps_giving_gamma_one_is_the_default(variant):
    """ε² = p/N is the CRATE convention γ = 1 (spec §2): same update as eps=None."""
    a = _model(variant)
    b = _model(variant, eps=math.sqrt(16 / 17))  # p = 16, N = 17 tokens
    b.load_state_dict(a.state_dict())
    z = _tokens(a)
    with torch.no_grad():
        _close(b.layers[0].attn(z), a.layers[0].attn(z), atol=1e-13)


# ======================================================================================
# 2. crate-n = −crate-c
# ======================================================================================
@pytest.mark.parametrize("alpha", [1.0, 0.7])
def test_crate_n_is_exact_negative_of_crate_c(alpha):
    c = _model("crate-c", alpha=alpha)
    n = _model("crate-n", seed=5, alpha=alpha)
    n.load_state_dict(c.state_dict())
    z = _tokens(c)
    with torch.no_grad():
        for lc, ln in zip(c.layers, n.layers):
            uc, un = lc.attn(z), ln.attn(z)
            assert torch.equal(un, -uc)
            assert uc.abs().max() > 1e-3
            # and the half step Y = Z + update(LN₁(Z)) flips its update accordingly
            _close(ln(z).y - z, -(lc(z).y - z), atol=1e-13)


# ======================================================================================
# 3. crate-fix: the output operator is a buffer, never trained, saved
# ======================================================================================
def test_crate_fix_output_is_a_fixed_saved_buffer():
    torch.manual_seed(0)
    model = create_model("crate-fix-digits")
    param_names = {n for n, _ in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers() if n.endswith("fixed_out")}
    assert len(buffers) == model.config.depth
    assert not any("fixed_out" in n for n in param_names)
    sd = model.state_dict()
    for name, buf in buffers.items():
        assert name in sd
        assert not buf.requires_grad
        assert buf.shape == (model.config.dim, model.config.inner_dim)
        assert buf.abs().max() > 0

    fixed_before = {n: b.clone() for n, b in buffers.items()}
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(3)
    model.train()
    for _ in range(3):
        x = torch.randn(8, 1, 8, 8, generator=g)
        y = torch.randint(0, 10, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for name, buf in model.named_buffers():
        if name in fixed_before:
            assert torch.equal(buf, fixed_before[name]), name
            assert buf.grad is None
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), params_before[name]), f"{name} was not trained"

    # saved and restored with the state dict
    torch.manual_seed(123)
    other = create_model("crate-fix-digits")
    assert not torch.equal(other.layers[0].attn.fixed_out, model.layers[0].attn.fixed_out)
    other.load_state_dict(model.state_dict())
    for name, buf in other.named_buffers():
        if name in fixed_before:
            assert torch.equal(buf, fixed_before[name])


# ======================================================================================
# 4. crate-g: one exact gradient step on R^c
# ======================================================================================
@pytest.mark.parametrize("eps,alpha", [(None, 1.0), (0.5, 1.0), (None, 0.3), (1.7, 2.5)])
def test_crate_g_half_step_is_gradient_descent_on_rc(eps, alpha):
    model = _model("crate-g", prenorm=False, eps=eps, alpha=alpha)
    cfg = model.config
    z = _tokens(model)
    N = z.shape[1]
    gamma = 1.0 if eps is None else cfg.dim_head / (N * eps**2)
    for index, layer in enumerate(model.layers):
        with torch.no_grad():
            y = layer(z).y
        U = layer.attn.qkv.weight.detach().T
        for b in range(z.shape[0]):
            Z = z[b].T
            Y_ref = Z - alpha * ref_rc_grad(Z, U, cfg.heads, gamma)
            _close(y[b], Y_ref.T)
        if index == 0:  # the step is not negligible, and it descends R^c for a small α
            assert (y - z).abs().max() > 1e-3


def test_crate_g_step_decreases_rc_for_small_alpha():
    model = _model("crate-g", prenorm=False, alpha=0.05)
    z = _tokens(model)
    U = model.layers[0].attn.qkv.weight.detach().T
    with torch.no_grad():
        y = model.layers[0](z).y
    for b in range(z.shape[0]):
        assert ref_rc(y[b].T, U, 4, 1.0) < ref_rc(z[b].T, U, 4, 1.0)


@pytest.mark.parametrize("heads,p,gamma", [(4, 16, 1.0), (4, 8, 0.7), (2, 5, 3.0)])
def test_compression_rate_gradient_equals_autograd(heads, p, gamma):
    g = torch.Generator().manual_seed(4)
    d, N, B = 64, 17, 3
    wq = torch.randn(heads * p, d, generator=g, dtype=F64) / math.sqrt(d)
    z = torch.randn(B, N, d, generator=g, dtype=F64)
    out = compression_rate_gradient(z, wq, heads, gamma)
    assert out.shape == (B, N, d)
    for b in range(B):
        _close(out[b], ref_rc_grad(z[b].T, wq.T, heads, gamma).T)
    # N < p case (the other Gram matrix is smaller) also agrees
    z_small = torch.randn(2, 3, d, generator=g, dtype=F64)
    out = compression_rate_gradient(z_small, wq, heads, gamma)
    for b in range(2):
        _close(out[b], ref_rc_grad(z_small[b].T, wq.T, heads, gamma).T)


@pytest.mark.parametrize("shape,scale", [((2, 3, 7, 5), 0.3), ((1, 2, 17, 16), 0.25)])
def test_tied_attention_function_values_and_gradients(shape, scale):
    """The tied-attention autograd function: gradcheck in fp64, and the values and gradients of
    scaled_dot_product_attention with q = k = v (which differentiates q, k, v separately)."""
    from srrlab.models.kernels import _TiedAttention

    g = torch.Generator().manual_seed(1)
    w = torch.randn(*shape, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: _TiedAttention.apply(t, scale), (w,))
    up = torch.randn(*shape, generator=g, dtype=F64)
    (_TiedAttention.apply(w, scale) * up).sum().backward()
    ours = w.grad.clone()
    w.grad = None
    ref = F.scaled_dot_product_attention(w, w, w, scale=scale)
    (ref * up).sum().backward()
    _close(_TiedAttention.apply(w, scale), ref)
    _close(ours, w.grad)
    # a strided (transposed) input, as the compression step passes it
    wt = w.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_(True)
    assert not wt.is_contiguous()
    (_TiedAttention.apply(wt, scale) * up).sum().backward()
    _close(wt.grad, ours)
    # twice differentiable (Hessian-vector products run a double backward through it), also on a
    # strided input: the second derivatives are those of the plain softmax-and-products formula
    assert torch.autograd.gradgradcheck(lambda t: _TiedAttention.apply(t, scale), (w,))
    assert torch.autograd.gradgradcheck(lambda t: _TiedAttention.apply(t.transpose(1, 2), scale),
                                        (w.detach().transpose(1, 2).contiguous().requires_grad_(True),))

    def plain(t):
        return torch.matmul(torch.softmax(torch.matmul(t, t.mT) * scale, dim=-1), t)

    small = w.detach()[:1, :1]
    h_ours = torch.autograd.functional.hessian(lambda t: (_TiedAttention.apply(t, scale) ** 3).sum(), small)
    h_plain = torch.autograd.functional.hessian(lambda t: (plain(t) ** 3).sum(), small)
    _close(h_ours, h_plain)


@pytest.mark.parametrize("variant", ["crate", "crate-t"])
def test_compression_step_gradients_equal_the_explicit_formula(variant):
    """Parameter and input gradients of the compression step (tied-attention path on CPU) equal
    those of the explicit softmax(w wᵀτ) w written with autograd."""
    cfg = CRATEConfig(variant=variant, image_size=8, patch_size=2, channels=1, dim=32, depth=1, heads=4)
    step = CompressionStep(cfg).double()
    z = torch.randn(3, 9, 32, dtype=F64, requires_grad=True)
    up = torch.randn(3, 9, 32, dtype=F64)
    (step(z) * up).sum().backward()
    got = [z.grad.clone()] + [p.grad.clone() for p in step.parameters()]
    z.grad = None
    step.zero_grad()
    w = step.qkv(z).view(3, 9, 4, 8).transpose(1, 2)
    s = torch.softmax(w @ w.mT * step.scale, -1) @ w
    s = s.transpose(1, 2).reshape(3, 9, 32)
    out = step.to_out(s) if variant == "crate" else s @ step.qkv.weight.t()
    (out * up).sum().backward()
    want = [z.grad] + [p.grad for p in step.parameters()]
    for a, b in zip(got, want):
        _close(a, b)


def test_attention_dropout_takes_the_sdpa_path():
    """With attention dropout in training the step is random (SDPA with dropout); in eval it is not."""
    cfg = CRATEConfig(variant="crate-c", image_size=8, patch_size=2, channels=1, dim=32, depth=1, heads=4,
                      dropout=0.0, attn_dropout=0.5)
    step = CompressionStep(cfg)
    z = torch.randn(2, 9, 32)
    step.train()
    torch.manual_seed(0)
    a = step(z)
    torch.manual_seed(1)
    assert not torch.allclose(a, step(z))
    step.eval()
    torch.testing.assert_close(step(z), step(z))


# ======================================================================================
# 5. The ISTA step
# ======================================================================================
@pytest.mark.parametrize("beta,lambd", [(0.1, 0.1), (0.3, 0.05)])
def test_ista_step_matches_column_and_official_forms(beta, lambd):
    cfg = CRATEConfig(variant="crate", image_size=8, patch_size=2, channels=1, dim=64, depth=1,
                      heads=4, ista=beta, lambd=lambd)
    step = ISTAStep(cfg).double()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        step.weight.copy_(torch.randn(64, 64, generator=g, dtype=F64) / 8)
    D = step.weight.detach()
    y = torch.randn(3, 17, 64, generator=g, dtype=F64)
    with torch.no_grad():
        out = step(y)
    for b in range(3):
        _close(out[b], ref_ista_column(y[b].T, D, beta, lambd).T)
        _close(out[b], ref_ista_official_rows(y[b], D, beta, lambd))
    assert (out >= 0).all() and (out == 0).any() and (out > 0).any()



def test_ista_operator_is_the_linear_part_of_the_step():
    """A = I + β(Dᵀ − DᵀD) written out entry by entry equals operator(), and A Y − βλ before the ReLU."""
    cfg = CRATEConfig(variant="crate", image_size=8, patch_size=2, channels=1, dim=16, depth=1, heads=4,
                      ista=0.3, lambd=0.2)
    step = ISTAStep(cfg).double()
    D = step.weight.detach()
    d = D.shape[0]
    naive = torch.empty(d, d, dtype=F64)
    for i in range(d):
        for j in range(d):
            naive[i, j] = (i == j) + 0.3 * (D[j, i] - sum(D[k, i] * D[k, j] for k in range(d)))
    _close(step.operator().detach(), naive)
    y = torch.randn(2, 5, d, dtype=F64)
    with torch.no_grad():
        _close(step(y), torch.relu(y @ naive.T - 0.3 * 0.2))


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ista_gradients_equal_the_three_product_form(beta):
    """The one-product step has the gradients (in y and in D) of the official three-product form."""
    cfg = CRATEConfig(variant="crate", image_size=8, patch_size=2, channels=1, dim=32, depth=1, heads=4,
                      ista=beta, lambd=0.1)
    step = ISTAStep(cfg).double()
    g = torch.Generator().manual_seed(3)
    y = torch.randn(4, 9, 32, generator=g, dtype=F64, requires_grad=True)
    w = torch.randn(4, 9, 32, generator=g, dtype=F64)
    (step(y) * w).sum().backward()
    gy, gD = y.grad.clone(), step.weight.grad.clone()
    y.grad = None
    D = step.weight.detach().clone().requires_grad_(True)
    (ref_ista_official_rows(y, D, beta, 0.1) * w).sum().backward()
    _close(gy, y.grad)
    _close(gD, D.grad)
    assert gD.abs().max() > 0

# ======================================================================================
# 6. forward_layers, the LayerNorm-free forward and subspaces()
# ======================================================================================
@pytest.mark.parametrize("variant", ALL_VARIANTS)
@pytest.mark.parametrize("layernorm", [True, False])
def test_full_forward_matches_hand_written_reference(variant, layernorm):
    model = _model(variant, depth=2)
    x = _images(model)
    with torch.no_grad():
        out = model.forward_layers(x, layernorm=layernorm)
    ref_states, ref_logits = ref_crate_forward(model, x, layernorm=layernorm)
    assert len(out.layers) == len(ref_states) == 2
    for s, (z_in, y, z_out) in zip(out.layers, ref_states):
        _close(s.z_in, z_in, atol=1e-9)
        _close(s.y, y, atol=1e-9)
        _close(s.z_out, z_out, atol=1e-9)
    _close(out.logits, ref_logits, atol=1e-9)
    assert torch.isfinite(out.logits).all()


def test_patchify_is_p1_p2_c_rearrange():
    model = _model("crate-c", image_size=8, patch_size=4, channels=3)
    x = _images(model)
    patches = model.patchify(x)
    _close(patches, ref_patches(x, 4), atol=0, rtol=0)
    # one element written out: token h*gw + w, feature (p1·P + p2)·C + c
    assert patches[1, 1 * 2 + 0, (3 * 4 + 2) * 3 + 1] == x[1, 1, 1 * 4 + 3, 0 * 4 + 2]


@pytest.mark.parametrize("variant", ["crate", "crate-c", "crate-fix"])
def test_forward_layers_consistent_with_forward(variant):
    model = _model(variant)
    x = _images(model, batch=3)
    with torch.no_grad():
        out = model.forward_layers(x)
        logits = model(x)
    _close(out.logits, logits, atol=1e-13)
    assert len(out.layers) == model.config.depth
    for prev, nxt in zip(out.layers[:-1], out.layers[1:]):
        assert torch.equal(prev.z_out, nxt.z_in)
    for s in out.layers:
        assert s.z_in.shape == s.y.shape == s.z_out.shape == (3, 17, 64)
        assert (s.z_out >= 0).all()  # the ISTA output is a ReLU


def _strip_layernorms(model):
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.LayerNorm):
                setattr(module, child_name, nn.Identity())
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    return model


@pytest.mark.parametrize("variant", ["crate", "crate-n", "crate-g"])
def test_layernorm_false_equals_model_without_layernorms(variant):
    model = _model(variant)
    bare = _strip_layernorms(model)
    x = _images(model)
    with torch.no_grad():
        off = model.forward_layers(x, layernorm=False)
        ref = bare.forward_layers(x, layernorm=True)
        ref_plain = bare(x)
        on = model.forward_layers(x, layernorm=True)
    _close(off.logits, ref.logits, atol=1e-12)
    _close(off.logits, ref_plain, atol=1e-12)
    for a, b in zip(off.layers, ref.layers):
        _close(a.z_in, b.z_in, atol=1e-12)
        _close(a.y, b.y, atol=1e-12)
        _close(a.z_out, b.z_out, atol=1e-12)
    assert not torch.allclose(on.logits, off.logits)
    assert not torch.allclose(on.layers[-1].z_out, off.layers[-1].z_out)


@pytest.mark.parametrize("opts", [{}, {"dim_head": 8}])
def test_subspaces_are_views_of_qkv(opts):
    model = _model("crate-c", **opts)
    cfg = model.config
    K, p, d = cfg.heads, cfg.dim_head, cfg.dim
    subspaces = model.subspaces()
    assert len(subspaces) == cfg.depth
    for layer, U in zip(model.layers, subspaces):
        w = layer.attn.qkv.weight
        assert U.shape == (K, d, p)
        for k in range(K):
            assert torch.equal(U[k], w[k * p:(k + 1) * p].T)
        assert U.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
        with torch.no_grad():
            w[p + 2, 5] += 1.0  # head 1, basis vector 2, coordinate 5
        assert U[1, 5, 2] == w[p + 2, 5]
    # a gradient through the subspaces reaches the weights
    model.subspaces()[0].sum().backward()
    assert model.layers[0].attn.qkv.weight.grad is not None


# ======================================================================================
# 7. Official checkpoints
# ======================================================================================
def make_official_state_dict(dim, depth, inner, patch_dim, num_patches, classes, seed=0):
    """A random state dict with the official CRATE keys (spec §8)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "to_patch_embedding.1.weight": 1 + rnd(patch_dim, scale=0.1),
        "to_patch_embedding.1.bias": rnd(patch_dim, scale=0.1),
        "to_patch_embedding.2.weight": rnd(dim, patch_dim, scale=patch_dim**-0.5),
        "to_patch_embedding.2.bias": rnd(dim, scale=0.1),
        "to_patch_embedding.3.weight": 1 + rnd(dim, scale=0.1),
        "to_patch_embedding.3.bias": rnd(dim, scale=0.1),
        "pos_embedding": rnd(1, num_patches + 1, dim),
        "cls_token": rnd(1, 1, dim),
        "mlp_head.0.weight": 1 + rnd(dim, scale=0.1),
        "mlp_head.0.bias": rnd(dim, scale=0.1),
        "mlp_head.1.weight": rnd(classes, dim, scale=dim**-0.5),
        "mlp_head.1.bias": rnd(classes, scale=0.1),
    }
    for i in range(depth):
        t = f"transformer.layers.{i}."
        sd[t + "0.norm.weight"] = 1 + rnd(dim, scale=0.1)
        sd[t + "0.norm.bias"] = rnd(dim, scale=0.1)
        sd[t + "0.fn.qkv.weight"] = rnd(inner, dim, scale=dim**-0.5)
        sd[t + "0.fn.to_out.0.weight"] = rnd(dim, inner, scale=inner**-0.5)
        sd[t + "0.fn.to_out.0.bias"] = rnd(dim, scale=0.1)
        sd[t + "1.norm.weight"] = 1 + rnd(dim, scale=0.1)
        sd[t + "1.norm.bias"] = rnd(dim, scale=0.1)
        sd[t + "1.fn.weight"] = rnd(dim, dim, scale=dim**-0.5)
    return sd


def official_reference_forward(sd, images, heads, patch):
    """The official CRATE forward, written from spec §8 on the official keys (row form, F.linear)."""
    B, C, H, W = images.shape
    x = images.reshape(B, C, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 3, 5, 1).reshape(B, (H // patch) * (W // patch), patch * patch * C)
    x = F.layer_norm(x, (x.shape[-1],), sd["to_patch_embedding.1.weight"], sd["to_patch_embedding.1.bias"])
    x = F.linear(x, sd["to_patch_embedding.2.weight"], sd["to_patch_embedding.2.bias"])
    x = F.layer_norm(x, (x.shape[-1],), sd["to_patch_embedding.3.weight"], sd["to_patch_embedding.3.bias"])
    n = x.shape[1]
    x = torch.cat([sd["cls_token"].expand(B, -1, -1), x], dim=1)
    x = x + sd["pos_embedding"][:, : n + 1]
    dim = x.shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("transformer.layers."))
    for i in range(depth):
        t = f"transformer.layers.{i}."
        h = F.layer_norm(x, (dim,), sd[t + "0.norm.weight"], sd[t + "0.norm.bias"])
        w = F.linear(h, sd[t + "0.fn.qkv.weight"])  # (B, n+1, Kp)
        p = w.shape[-1] // heads
        outs = []
        for k in range(heads):  # tied q = k = v, scale p^{-1/2}, softmax over the last dim
            wk = w[..., k * p:(k + 1) * p]
            attn = torch.softmax(wk @ wk.transpose(-1, -2) * p**-0.5, dim=-1)
            outs.append(attn @ wk)
        out = F.linear(torch.cat(outs, dim=-1), sd[t + "0.fn.to_out.0.weight"], sd[t + "0.fn.to_out.0.bias"])
        y = x + out
        z = F.layer_norm(y, (dim,), sd[t + "1.norm.weight"], sd[t + "1.norm.bias"])
        D = sd[t + "1.fn.weight"]
        x = F.relu(z + 0.1 * (F.linear(z, D.t()) - F.linear(F.linear(z, D), D.t())) - 0.1 * 0.1)
    cls = F.layer_norm(x[:, 0], (dim,), sd["mlp_head.0.weight"], sd["mlp_head.0.bias"])
    return F.linear(cls, sd["mlp_head.1.weight"], sd["mlp_head.1.bias"])


# (dim, depth, heads, dim_head, image, patch, pass heads=?)
OFFICIAL_CASES = {
    "dim48-heads3": (48, 2, 3, 16, 12, 4, True),
    "dim384-inferred6": (384, 1, 6, 64, 8, 4, False),
}


@pytest.fixture(params=list(OFFICIAL_CASES), scope="module")
def official(request):
    dim, depth, heads, dim_head, image, patch, pass_heads = OFFICIAL_CASES[request.param]
    sd = make_official_state_dict(dim, depth, heads * dim_head, 3 * patch * patch, (image // patch) ** 2, 10)
    images = torch.randn(3, 3, image, image, generator=torch.Generator().manual_seed(9))
    kwargs = {"heads": heads} if pass_heads else {}
    return dict(sd=sd, images=images, heads=heads, patch=patch, kwargs=kwargs, depth=depth,
                dim=dim, dim_head=dim_head, image=image)


def _check_official(model, o):
    cfg = model.config
    assert (cfg.variant, cfg.dim, cfg.depth, cfg.heads, cfg.dim_head) == (
        "crate", o["dim"], o["depth"], o["heads"], o["dim_head"])
    assert (cfg.image_size, cfg.patch_size, cfg.channels, cfg.num_classes) == (o["image"], o["patch"], 3, 10)
    model.eval()
    with torch.no_grad():
        logits = model(o["images"])
        ref32 = official_reference_forward(o["sd"], o["images"], o["heads"], o["patch"])
        torch.testing.assert_close(logits, ref32, atol=1e-5, rtol=1e-5)
        # and in fp64 the agreement is exact up to rounding
        sd64 = {k: v.double() for k, v in o["sd"].items()}
        ref64 = official_reference_forward(sd64, o["images"].double(), o["heads"], o["patch"])
        _close(copy.deepcopy(model).double()(o["images"].double()), ref64, atol=1e-10)
    assert logits.abs().max() > 1e-2


def test_load_official_from_dict(official):
    _check_official(load_official_crate(official["sd"], **official["kwargs"]), official)


def test_load_official_from_torch_file(official, tmp_path):
    path = tmp_path / "crate.pth"
    torch.save(official["sd"], path)
    _check_official(load_official_crate(path, **official["kwargs"]), official)
    _check_official(load_official_crate(str(path), **official["kwargs"]), official)


def test_load_official_from_safetensors(official, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "crate.safetensors"
    save_file({k: v.contiguous() for k, v in official["sd"].items()}, str(path))
    _check_official(load_official_crate(path, **official["kwargs"]), official)


def test_load_official_wrapped_ddp(official, tmp_path):
    wrapped = {"model": {"module." + k: v for k, v in official["sd"].items()}, "epoch": 7}
    _check_official(load_official_crate(wrapped, **official["kwargs"]), official)
    path = tmp_path / "wrapped.pt"
    torch.save(wrapped, path)
    _check_official(load_official_crate(path, **official["kwargs"]), official)


def test_load_official_needs_heads_for_unofficial_width():
    sd = make_official_state_dict(48, 1, 48, 48, 4, 10)
    with pytest.raises(ValueError, match="heads"):
        load_official_crate(sd)


class _Opaque:
    """An arbitrary class: loading its pickle would import and construct it."""

    def __init__(self):
        self.value = 1


class _Payload:
    """Runs a shell command when unpickled, if unpickling were allowed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_official_refuses_pickled_objects(tmp_path):
    sd = make_official_state_dict(48, 1, 48, 48, 4, 10)
    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pth"
    torch.save({"model": sd, "hook": _Payload(marker)}, evil)
    with pytest.raises(ValueError):
        load_official_crate(evil, heads=3)
    assert not marker.exists()
    opaque = tmp_path / "opaque.pth"
    torch.save({"model": sd, "meta": _Opaque()}, opaque)
    with pytest.raises(ValueError):
        load_official_crate(opaque, heads=3)
    bare = tmp_path / "bare.pth"
    torch.save(_Opaque(), bare)
    with pytest.raises(ValueError):
        load_official_crate(bare, heads=3)
    assert not marker.exists()


def test_load_official_missing_extra_and_misshapen_keys():
    base = make_official_state_dict(48, 2, 48, 48, 9, 10)
    load_official_crate(base, heads=3)  # the unmodified dict loads

    sd = dict(base)
    del sd["transformer.layers.1.1.fn.weight"]
    with pytest.raises(ValueError, match=r"missing.*layers\.1\.ista\.weight"):
        load_official_crate(sd, heads=3)

    sd = dict(base)
    del sd["mlp_head.1.weight"]
    with pytest.raises(ValueError, match=r"mlp_head\.1\.weight"):
        load_official_crate(sd, heads=3)

    sd = dict(base)
    sd["transformer.layers.0.0.fn.gate.weight"] = torch.zeros(3)
    sd["decoder.bias"] = torch.zeros(3)
    with pytest.raises(ValueError) as err:
        load_official_crate(sd, heads=3)
    assert "transformer.layers.0.0.fn.gate.weight" in str(err.value)
    assert "decoder.bias" in str(err.value)

    sd = dict(base)
    sd["transformer.layers.1.1.fn.weight"] = torch.zeros(48, 47)
    with pytest.raises(ValueError, match=r"layers\.1\..*\(48, 47\)"):
        load_official_crate(sd, heads=3)

    sd = dict(base)
    sd["transformer.layers.1.0.fn.to_out.0.bias"] = torch.zeros(50)
    with pytest.raises(ValueError, match=r"layers\.1\..*to_out"):
        load_official_crate(sd, heads=3)

    with pytest.raises(ValueError):
        load_official_crate(base, heads=3, variant="crate-c")


# ======================================================================================
# 8. Configuration validation and create_model overrides
# ======================================================================================
@pytest.mark.parametrize("variant", sorted(SQUARE_ONLY))
def test_square_variants_need_dim_equal_heads_times_dim_head(variant):
    with pytest.raises(ValueError, match="dim_head"):
        create_model(f"{variant}-digits", dim_head=8)
    with pytest.raises(ValueError, match="dim_head"):
        CRATEConfig(variant=variant, dim=64, heads=4, dim_head=20)
    # dim not divisible by heads: dim_head = 66 // 4 = 16, K·p = 64 ≠ 66
    with pytest.raises(ValueError, match="dim_head"):
        create_model(f"{variant}-digits", dim=66)
    create_model("crate-c-digits", dim_head=8)  # the others accept K·p ≠ d


def test_image_not_divisible_by_patch():
    with pytest.raises(ValueError) as err:
        create_model("crate-c-digits", image_size=10, patch_size=4)
    assert "image_size" in str(err.value) and "patch_size" in str(err.value)


def test_unknown_variant_size_and_option():
    with pytest.raises(ValueError) as err:
        create_model("crate-x-tiny")
    for v in VARIANTS:
        assert v in str(err.value)
    with pytest.raises(ValueError) as err:
        create_model("crate-c-huge")
    for s in SIZES:
        assert s in str(err.value)
    with pytest.raises(ValueError) as err:
        CRATEConfig(variant="crate-q")
    assert "crate-identity" in str(err.value) and "crate-g" in str(err.value)
    with pytest.raises(TypeError, match="widthh"):
        create_model("crate-c-digits", widthh=3)


def test_create_model_overrides():
    m = create_model("crate-t-tiny", num_classes=100, depth=1)
    assert m.head.out_features == 100 and m.config.num_classes == 100
    m = create_model("crate-c-digits", dim=32)
    assert (m.config.dim, m.config.dim_head, m.config.heads) == (32, 8, 4)
    assert m.layers[0].attn.qkv.weight.shape == (32, 32)
    m = create_model("crate-c-digits", heads=8)
    assert m.config.dim_head == 8
    m = create_model("crate-c-digits", dim_head=4)
    assert m.layers[0].attn.qkv.weight.shape == (16, 64)
    cfg = model_config("crate-digits")
    assert (cfg.image_size, cfg.patch_size, cfg.channels, cfg.dim, cfg.depth, cfg.heads) == (8, 2, 1, 64, 4, 4)


# ======================================================================================
# 9. Parameter counts
# ======================================================================================
@pytest.mark.parametrize("size", ["digits", "micro"])
@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_count_parameters_matches_built_model(variant, size):
    cfg = model_config(f"{variant}-{size}")
    model = CRATE(cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count_parameters(cfg) == trainable == model.num_parameters()
    if variant not in SQUARE_ONLY:
        cfg = model_config(f"{variant}-{size}", dim_head=8, prenorm=False)
        model = CRATE(cfg)
        assert count_parameters(cfg) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_crate_tiny_has_the_output_projection_extra():
    full, conc = model_config("crate-tiny"), model_config("crate-c-tiny")
    L, d, kp = full.depth, full.dim, full.inner_dim
    assert count_parameters(full) - count_parameters(conc) == L * (kp * d + d)
    n_full = sum(p.numel() for p in create_model("crate-tiny").parameters())
    n_conc = sum(p.numel() for p in create_model("crate-c-tiny").parameters())
    assert n_full - n_conc == L * (kp * d + d) == 12 * (384 * 384 + 384)


# ======================================================================================
# 10. A well-behaved nn.Module
# ======================================================================================
def test_dtype_and_device_moves():
    torch.manual_seed(0)
    model = create_model("crate-fix-digits").eval()
    x = torch.randn(2, 1, 8, 8)
    assert model(x).dtype == torch.float32
    m64 = copy.deepcopy(model).double()
    assert all(t.dtype == F64 for t in list(m64.parameters()) + list(m64.buffers()))
    assert m64(x.double()).dtype == F64
    m64b = copy.deepcopy(model).to(F64)
    assert torch.equal(m64b(x.double()), m64(x.double()))
    same = model.to("cpu")
    assert same is model
    torch.testing.assert_close(m64(x.double()).float(), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_state_dict_round_trip(variant):
    a = _model(variant, seed=0)
    b = _model(variant, seed=1)
    x = _images(a)
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))
        b.load_state_dict(a.state_dict())
        assert torch.equal(a(x), b(x))


def test_dropout_train_and_eval():
    torch.manual_seed(0)
    model = create_model("crate-digits", dropout=0.5, emb_dropout=0.5)
    x = torch.randn(4, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    # without dropout, train mode is deterministic and equal to eval mode
    plain = create_model("crate-digits")
    with torch.no_grad():
        plain.train()
        t = plain(x)
        plain.eval()
        assert torch.equal(t, plain(x))


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 1, 16, 16), (1, 8, 8), (2, 1, 8, 6)])
def test_wrong_input_shape(shape):
    model = create_model("crate-c-digits")
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        model(torch.randn(*shape))


def test_every_variant_row_carries_its_operator_object():
    from srrlab.models import VARIANTS, OutputOperator

    for name, v in VARIANTS.items():
        assert isinstance(v.operator, OutputOperator), name
        # the operator answers what other modules used to dispatch on names for
        assert v.needs_square == v.operator.needs_square and v.output == v.operator.name
    assert [n for n, v in VARIANTS.items() if not v.operator.attention] == ["crate-g"]
    assert [n for n, v in VARIANTS.items() if v.operator.needs_square] == ["crate-t", "crate-identity"]
