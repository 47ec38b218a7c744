"""Curvature of the training loss: the trace and the top eigenvalue of its Hessian.

The loss is the mean cross-entropy of the evaluated network (``ctx.model``, eval mode, plain logits)
on the first ``n = min(hessian_images, len(ctx.images))`` images of the context's fixed training
subset,

    L(w) = (1/n) Σ_{i=1}^{n} CE(f_w(x_i), y_i),        H = ∇²_w L(w)  ∈ R^{ω×ω},

where ``w`` is the vector of all trainable parameters (``parameters()`` with ``requires_grad``; a
tied tensor once, as :meth:`torch.nn.Module.named_parameters` lists it; buffers and frozen
parameters are constants). Both measures only touch ``H`` through Hessian-vector products
(:func:`hvp_fn`) and grow with the curvature: larger means sharper, i.e. more complex.

* ``hessian-trace`` — Hutchinson's estimator (Hutchinson 1990; for networks Yao et al. 2020,
  PyHessian): for Rademacher probes ``v`` (entries ±1 with probability ½, independent),
  ``E[vᵀHv] = Σ_ij H_ij E[v_i v_j] = tr(H)``, so

      tr(H) ≈ (1/P) Σ_{k=1}^{P} v_kᵀ H v_k,        P = hutchinson_probes,

  with ``Var(vᵀHv) = 2 Σ_{i≠j} H_ij²`` per probe (the diagonal contributes no variance). The probes
  come from a ``torch.Generator`` seeded with ``settings.seed``.
* ``hessian-top`` — λ_max(H) by power iteration (as PyHessian; Keskar et al. 2017 use the largest
  eigenvalue as their sharpness): ``u_0`` a standard normal vector from the seeded generator,
  normalised; at step k, ``λ_k = u_{k−1}ᵀ H u_{k−1}`` (the Rayleigh quotient, ``‖u_{k−1}‖ = 1``) and
  ``u_k = H u_{k−1} / ‖H u_{k−1}‖``; stop when ``|λ_k − λ_{k−1}| ≤ power_tolerance · |λ_k|`` or after
  ``power_iterations`` products, and report the last ``λ_k``. Power iteration converges to the
  eigenvalue of largest **magnitude**, reported with its sign: at a trained minimum H is (nearly)
  positive semi-definite and that is the largest eigenvalue; at a saddle whose most negative
  eigenvalue dominates in magnitude, the value is that negative eigenvalue (not λ_max). Power
  iteration rather than Lanczos because its cost is exactly one product per iteration, bounded
  by ``power_iterations``, and it needs no host round trip per product; its convergence rate is
  ``|λ_2/λ_1|`` per step, so a nearly degenerate top pair converges slowly (the Rayleigh quotient
  still lies between them).

Hessian-vector products are reverse-over-reverse, ``Hv = ∇_w ⟨∇L(w), v⟩``: the gradient ``∇L`` is
computed once, with its graph (``torch.autograd.grad(..., create_graph=True)``, ``L`` evaluated
through ``torch.func.functional_call`` so that tied weights stay tied), and every product is the
gradient of ``⟨∇L, v⟩`` through that retained graph, in the model's dtype. Against
forward-over-reverse (``torch.func.jvp`` of ``torch.func.grad``, which redoes the forward and the
first backward for every product) this is about 2.5× faster per product on the fmnist model here
(docs/performance.md), for the memory of one retained double-backward graph per chunk of images.
When ``n`` exceeds ``batch_size`` the images are split into chunks ``B_c``, each with its own
graph, and ``Hv = Σ_c (|B_c|/n) H_c v`` (``L`` is a mean). A matrix of ``k`` vectors is multiplied
row by row. CRATE's tied attention is exact under a double backward: its CPU kernel's backward
recomputes the attention from ``w`` with differentiable ops when a graph is being built
(:class:`srrlab.models.kernels._TiedAttention`); tests compare the products with the full Hessian
of small models, with finite differences of the reverse-mode gradient on CRATE, and with
forward-over-reverse products.

The model is never modified: its parameters are read (detached), never written, and nothing is
cached but the product function itself with its gradient graphs (``ctx.cache[("curvature", "hvp")]``),
shared by the two measures.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .context import MeasureContext
from .registry import register

__all__ = ["HessianVectorProduct", "hvp_fn", "hessian_trace", "hessian_top_eigenvalue"]


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _seed(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"seed must be an integer, got {value!r}")
    return value


def _check_data(images, labels) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() < 1:
        raise ValueError(f"images must be a tensor with a leading batch axis, got {type(images).__name__}")
    if not isinstance(labels, torch.Tensor) or labels.dim() < 1:
        raise ValueError(f"labels must be a tensor with a leading batch axis, got {type(labels).__name__}")
    if len(images) != len(labels):
        raise ValueError(f"images and labels differ in length: {len(images)} images, {len(labels)} labels")
    if len(images) == 0:
        raise ValueError("images must hold at least one image, got none")


# ---------------------------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------------------------
class HessianVectorProduct:
    """``v ↦ Hv`` for the Hessian of the mean cross-entropy of ``model`` on ``(images, labels)``
    with respect to its trainable parameters, on flat vectors (parameters in ``named_parameters()``
    order, each flattened). Build it with :func:`hvp_fn`.

    ``dim`` is ω (the number of trainable scalars), ``dtype``/``device`` those of the parameters
    (every product is computed in that dtype on that device); ``names`` the parameters' names.
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500):
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch module, got {type(model).__name__}")
        _check_data(images, labels)
        self.batch_size = _positive_int("batch_size", batch_size)
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("model has no trainable parameters (none with requires_grad)")
        dtypes = {p.dtype for _, p in named}
        if len(dtypes) > 1 or not named[0][1].is_floating_point():
            raise ValueError(f"model's trainable parameters must share one floating dtype, "
                             f"got {sorted(map(str, dtypes))}")
        self.model = model
        self.names = [name for name, _ in named]
        self.params = {name: p.detach() for name, p in named}
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)
        self.dtype = named[0][1].dtype
        self.device = named[0][1].device
        # Constants of the functional call: frozen parameters and buffers.
        self.fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
        self.fixed.update({name: b for name, b in model.named_buffers()})
        images = images.to(self.device)
        if images.is_floating_point():
            images = images.to(self.dtype)
        self.images, self.labels = images, labels.to(self.device)
        self.leaves: dict[str, torch.Tensor] = {}
        self._chunks: list[tuple[float, list[torch.Tensor]]] | None = None

    @property
    def num_images(self) -> int:
        return len(self.images)

    def _unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: chunk.reshape(shape)
                for name, chunk, shape in zip(self.names, v.split(self.sizes), self.shapes)}

    def _graphs(self) -> list[tuple[float, list[torch.Tensor]]]:
        """Per chunk of at most :attr:`batch_size` images: its weight ``|B_c|/n`` and the gradient of
        its mean cross-entropy with respect to :attr:`leaves`, with the graph kept (built on the
        first product)."""
        if self._chunks is None:
            self.leaves = {name: p.clone().requires_grad_(True) for name, p in self.params.items()}
            order = [self.leaves[name] for name in self.names]
            n, bs = self.num_images, self.batch_size
            chunks = []
            with torch.enable_grad():
                for start in range(0, n, bs):
                    x, y = self.images[start:start + bs], self.labels[start:start + bs]
                    logits = torch.func.functional_call(self.model, (self.leaves, self.fixed), (x,))
                    grads = torch.autograd.grad(F.cross_entropy(logits, y), order, create_graph=True,
                                                allow_unused=True, materialize_grads=True)
                    chunks.append((len(x) / n, list(grads)))
            self._chunks = chunks
        return self._chunks

    def _product(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for one flat vector."""
        chunks = self._graphs()
        order = [self.leaves[name] for name in self.names]
        out = torch.zeros_like(v)
        for weight, grads in chunks:
            with torch.enable_grad():
                dot = sum(torch.vdot(g.reshape(-1), t) for g, t in zip(grads, v.split(self.sizes)) if g.requires_grad)
                if not isinstance(dot, torch.Tensor):  # the gradient is constant: H = 0
                    continue
                hv = torch.autograd.grad(dot, order, retain_graph=True, allow_unused=True, materialize_grads=True)
            out.add_(torch.cat([h.reshape(-1) for h in hv]), alpha=weight)
        return out

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat vector ``v`` of length :attr:`dim` (returned flat, in :attr:`dtype`), or
        ``V Hᵀ = V H`` for a matrix ``V`` of ``k`` such vectors as rows (``(k, dim)``, row by row)."""
        if not isinstance(v, torch.Tensor) or v.dim() not in (1, 2) or v.shape[-1] != self.dim or v.numel() == 0:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"v must be a flat tensor of length {self.dim} (the trainable parameters) or a "
                             f"(k, {self.dim}) matrix of such rows, got {shape}")
        v = v.to(device=self.device, dtype=self.dtype)
        if v.dim() == 2:
            return torch.stack([self._product(row) for row in v])
        return self._product(v)


def hvp_fn(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> HessianVectorProduct:
    """The Hessian-vector product ``v ↦ Hv`` of ``L(w) = mean CE(model(images), labels)`` over the
    trainable parameters of ``model``, on flat vectors (reverse-over-reverse through the retained graph
    of the gradient, chunks of at most ``batch_size`` images weighted by their size). ``model`` is evaluated in its
    current mode (call ``eval()`` first for a deterministic network) and never modified."""
    return HessianVectorProduct(model, images, labels, batch_size)


# ---------------------------------------------------------------------------------------------
# Trace and top eigenvalue
# ---------------------------------------------------------------------------------------------
def _product(model_or_hvp, images, labels, batch_size) -> HessianVectorProduct:
    if isinstance(model_or_hvp, HessianVectorProduct):
        return model_or_hvp
    return hvp_fn(model_or_hvp, images, labels, batch_size)


def hessian_trace(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, probes: int = 20, seed: int = 0,
                  batch_size: int = 500, probe_batch: int = 1) -> float:
    """Hutchinson's estimate of ``tr(H)``: the mean of ``vᵀHv`` over ``probes`` Rademacher vectors
    ``v`` (entries ±1) drawn one after another from a CPU generator seeded with ``seed``.

    ``probe_batch`` probes are drawn and multiplied per call (the same probes and, up to
    floating-point reassociation, the same value whatever ``probe_batch``).
    ``model`` may also be a :class:`HessianVectorProduct` (then ``images``, ``labels`` and
    ``batch_size`` are not used).
    """
    probes = _positive_int("probes", probes)
    probe_batch = _positive_int("probe_batch", probe_batch)
    gen = torch.Generator().manual_seed(_seed(seed))
    hvp = _product(model, images, labels, batch_size)
    total = 0.0
    for start in range(0, probes, probe_batch):
        k = min(probe_batch, probes - start)
        v = torch.stack([torch.randint(0, 2, (hvp.dim,), generator=gen, dtype=torch.int8) for _ in range(k)])
        v = v.to(device=hvp.device, dtype=hvp.dtype).mul_(2).sub_(1)
        total += float((v.double() * hvp(v).double()).sum())
    return total / probes


def hessian_top_eigenvalue(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, iterations: int = 20,
                           tol: float = 1e-3, seed: int = 0, batch_size: int = 500) -> float:
    """The eigenvalue of ``H`` of largest magnitude (λ_max at a minimum) by power iteration.

    Start ``u_0 ~ N(0, I)`` from a CPU generator seeded with ``seed``, normalised; step k computes
    ``Hu_{k−1}``, the Rayleigh quotient ``λ_k = u_{k−1}ᵀHu_{k−1}`` and ``u_k = Hu_{k−1}/‖Hu_{k−1}‖``;
    stops when ``|λ_k − λ_{k−1}| ≤ tol·|λ_k|`` or after ``iterations`` products and returns ``λ_k``
    (0 if ``Hu`` vanishes). ``model`` may also be a :class:`HessianVectorProduct`.
    """
    iterations = _positive_int("iterations", iterations)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    gen = torch.Generator().manual_seed(_seed(seed))
    hvp = _product(model, images, labels, batch_size)
    u = torch.randn(hvp.dim, generator=gen, dtype=torch.float64)
    u = (u / u.norm()).to(device=hvp.device, dtype=hvp.dtype)
    previous = None
    value = 0.0
    for _ in range(iterations):
        hu = hvp(u)
        value = float(torch.dot(u.double(), hu.double()))
        if previous is not None and abs(value - previous) <= tol * abs(value):
            break
        norm = hu.double().norm()
        if not norm > 0:  # Hu = 0 (u in the kernel) or not finite: stop with what we have
            break
        u = (hu.double() / norm).to(hvp.dtype)
        previous = value
    return value


# ---------------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------------
def _context_hvp(ctx: MeasureContext) -> HessianVectorProduct:
    """The context's Hessian-vector product on its first ``hessian_images`` images (cached)."""
    key = ("curvature", "hvp")
    if key not in ctx.cache:
        s = ctx.settings
        n = min(s.hessian_images, len(ctx.images))
        ctx.cache[key] = hvp_fn(ctx.model, ctx.images[:n], ctx.labels[:n], s.batch_size)
    return ctx.cache[key]


@register("hessian-trace", reference="Hutchinson 1990; Yao et al. 2020 (PyHessian), Hessian trace", needs_data=True)
def hessian_trace_measure(ctx: MeasureContext) -> float:
    """tr(∇²L): Hutchinson's estimate (mean of vᵀHv, Rademacher v) of the trace of the training-loss Hessian."""
    s = ctx.settings
    return hessian_trace(_context_hvp(ctx), None, None, probes=s.hutchinson_probes, seed=s.seed)


@register("hessian-top",
          reference="Keskar et al. 2017 / Yao et al. 2020 (PyHessian), top Hessian eigenvalue by power iteration",
          needs_data=True)
def hessian_top_measure(ctx: MeasureContext) -> float:
    """λ_max(∇²L): the top eigenvalue of the training-loss Hessian by power iteration on Hessian-vector products."""
    s = ctx.settings
    return hessian_top_eigenvalue(_context_hvp(ctx), None, None, iterations=s.power_iterations,
                                  tol=s.power_tolerance, seed=s.seed)
