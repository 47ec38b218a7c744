"""The kernels of a CRATE layer: how its two steps are computed, and why that way.

:mod:`srrlab.models.crate` says *what* a layer computes (docs/theory.md §3); this module holds the
*how*: the custom autograd function of the tied attention and the operator algebra of the ISTA
step. The timings quoted are those of docs/performance.md.

* :func:`tied_attention` — ``softmax(w wᵀ·τ) w`` per head for tied ``q = k = v = w``. On CPU
  without attention dropout it is :class:`_TiedAttention`, whose backward uses the tying (three
  batched products instead of the four of ``scaled_dot_product_attention``'s CPU math kernels,
  which treat ``q``, ``k`` and ``v`` as different tensors, plus their recomputation of the scores):
  0.6 vs 2.0 ms at the digits shape and 29 vs 38 ms at tiny. On CUDA (flash / memory-efficient
  kernels), or with attention dropout, it is ``F.scaled_dot_product_attention``.
* :func:`ista_operator` / :func:`ista` — the ISTA step ``ReLU(Y + β Dᵀ(Y − D Y) − β λ)`` is linear
  in ``Y`` before the ReLU, so it is computed as one product with the ``d×d`` operator
  ``A = I + β(Dᵀ − DᵀD)``: ``Z' = ReLU(A Y − βλ)``, in row form ``ReLU(y @ Aᵀ − βλ)``. Forming ``A``
  costs one ``d×d×d`` product; the ``(B·N)×d×d`` products drop from three (official code) or two to
  one in the forward pass and from six or four to two in the backward pass. The value and the
  gradients are those of the unfused formula up to rounding (tests compare against it in float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["tied_attention", "ista_operator", "ista"]


class _TiedAttention(torch.autograd.Function):
    """``softmax(w wᵀ·τ) w`` per head for tied ``q = k = v = w`` (``(..., N, p)``), with the
    backward of the tied form.

    With ``P = softmax(S)``, ``S = τ w wᵀ`` and ``O = P w``, the gradient is
    ``∂w = Pᵀ ∂O + τ (∂S + ∂Sᵀ) w`` where ``∂S = P ⊙ (∂P − rowsum(∂P ⊙ P))`` and ``∂P = ∂O wᵀ``:
    three batched products, against four for ``scaled_dot_product_attention`` with ``q``, ``k``
    and ``v`` treated as different tensors (plus the recomputation of ``S``). Keeps ``P`` (N×N per
    head) instead of recomputing it; used on CPU without attention dropout (see
    :func:`tied_attention`). Twice differentiable: under ``create_graph=True`` the backward
    recomputes ``P`` from ``w`` and is built from differentiable ops, so a double backward (e.g.
    a Hessian-vector product) is exact. The softmax backward is torch's private
    ``torch._softmax_backward_data``.
    """

    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: float) -> torch.Tensor:
        # the input itself is saved (not a contiguous copy made here), so that a double backward
        # reaches it through the graph
        ctx.save_for_backward(w)
        w = w.contiguous()
        attn = torch.softmax(torch.matmul(w, w.mT).mul_(scale), dim=-1)
        ctx.attn = attn
        ctx.scale = scale
        return torch.matmul(attn, w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (w,) = ctx.saved_tensors
        w, attn = w.contiguous(), ctx.attn
        if torch.is_grad_enabled():
            # create_graph=True (a double backward, e.g. reverse-over-reverse Hessian-vector products):
            # the saved attention was computed without a graph, so recompute it from w; every op below
            # is differentiable, so the second derivative is exact.
            attn = torch.softmax(torch.matmul(w, w.mT) * ctx.scale, dim=-1)
        grad = grad.contiguous()
        d_scores = torch._softmax_backward_data(torch.matmul(grad, w.mT), attn, -1, attn.dtype)
        d_scores = d_scores + d_scores.mT
        shape = w.shape
        flat = (-1, *shape[-2:])
        gw = torch.baddbmm(torch.matmul(attn.mT, grad).reshape(flat), d_scores.reshape(-1, shape[-2], shape[-2]),
                           w.reshape(flat), alpha=ctx.scale)
        return gw.view(shape), None


def tied_attention(w: torch.Tensor, scale: float, dropout: float = 0.0) -> torch.Tensor:
    """``softmax(w wᵀ·τ) w`` per head for ``w`` of shape ``(B, K, N, p)``, softmax over keys, with
    attention dropout ``dropout``.

    On CPU without dropout the tied form's backward (three products, :class:`_TiedAttention`)
    beats SDPA's kernels: 0.6 vs 2.0 ms at the digits shape and 29 vs 38 ms at tiny
    (docs/performance.md). Otherwise: ``F.scaled_dot_product_attention(w, w, w)`` (on CUDA its
    flash / memory-efficient kernels). Under a ``torch.func`` transform — ``vmap`` (grouped training,
    :mod:`srrlab.train.group`), ``grad`` or ``jvp`` (the Hessian-vector products of
    :mod:`srrlab.measures.curvature`) — the plain softmax and two products, which every transform
    composes through (the custom function has no functorch rule).
    """
    if torch._C._functorch.is_functorch_wrapped_tensor(w):  # inside a torch.func transform: plain ops
        attn = torch.softmax(torch.matmul(w, w.mT) * scale, dim=-1)
        return torch.matmul(F.dropout(attn, dropout) if dropout else attn, w)
    if w.device.type == "cpu" and dropout == 0.0:
        return _TiedAttention.apply(w, scale)
    return F.scaled_dot_product_attention(w, w, w, dropout_p=dropout, scale=scale)


def ista_operator(d: torch.Tensor, step: float) -> torch.Tensor:
    """``A = I + β(Dᵀ − DᵀD)`` for the dictionary ``d`` (``(d, d)``) and step ``β``: one ``addmm``
    (a ``d×d×d`` product), ``A = (I + β Dᵀ) − β DᵀD``."""
    eye = torch.eye(d.shape[0], dtype=d.dtype, device=d.device)
    return torch.addmm(torch.add(eye, d.t(), alpha=step), d.t(), d, alpha=-step)


def ista(y: torch.Tensor, operator: torch.Tensor, step: float, lambd: float) -> torch.Tensor:
    """``ReLU(y @ Aᵀ − βλ)`` with ``A = operator`` (:func:`ista_operator`): one ``(B·N)×d×d``
    product. Row form: ``(A Y)ᵀ = y @ Aᵀ = F.linear(y, A)``; the shift ``−βλ`` rides in the GEMM's
    bias."""
    shift = torch.full((y.shape[-1],), -step * lambd, dtype=y.dtype, device=y.device)
    return F.relu(F.linear(y, operator, shift))
