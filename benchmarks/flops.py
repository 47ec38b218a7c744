"""Matrix-product FLOPs of one CRATE training step, counted analytically from the configuration.

A step is forward + cross-entropy + backward (not the optimizer). The count is the one
``torch.utils.flop_counter.FlopCounterMode`` makes: ``2·m·n·k`` per matrix product
``(m×k)·(k×n)`` (``mm``, ``addmm``; ``bmm``/``baddbmm`` times the batch), and for fused attention
(``F.scaled_dot_product_attention``, on CUDA) torch's SDPA formulas: 2 products forward, 5 backward
(the backward recomputes the scores). The suite divides this count by the measured GEMM peak to
get "% of peak". Not counted (FlopCounterMode does not count them either): elementwise ops, the
biases of ``addmm``, LayerNorm, softmax, ReLU, dropout, cross-entropy, the optimizer, and
Cholesky factorisations and triangular solves (``linalg_cholesky``, ``cholesky_solve``,
``linalg_solve_triangular``).

Notation: ``B`` batch, ``P`` patches, ``N = P + 1`` tokens, ``M = B·N`` token rows, ``c`` patch
dimension (channels·patch²), ``d`` width, ``K`` heads, ``p`` head dimension, ``Kp = K·p``,
``C`` classes, ``L`` depth, and ``G(m, n, k) = 2·m·n·k``. A linear map ``rows×in → rows×out``
costs ``G(rows, out, in)`` forward and the same again per gradient backward (input, weight).
Every parameter requires grad, and the input of every product requires grad, so both backward
products run, except where noted.

==================  ==================================  ==========================================
part                forward                              backward
==================  ==================================  ==========================================
patch_embed         G(B·P, d, c)                         2·G(B·P, d, c)  [1]
attention_proj      L·G(M, Kp, d)       (z ↦ Uᵀz)        2·L·G(M, Kp, d)
attention_core      L·2·B·K·G(N, N, p)  (tied, CPU)      L·3·B·K·G(N, N, p)  [2]
                    L·2·B·K·G(N, N, p)  (SDPA, CUDA)     L·5·B·K·G(N, N, p)
                    L·2·B·K·G(N, N, p)  (official)       L·4·B·K·G(N, N, p)  (explicit products)
                    L·B·K·G(p, p, N)    (crate-g)        L·B·K·(3·G(p, p, N) + 2·G(p, p, p))  [3]
output_op           L·G(M, d, Kp)                        2·L·G(M, d, Kp); crate-fix: 1·  [4]
ista                L·(G(d, d, d) + G(M, d, d))          L·(2·G(d, d, d) + 2·G(M, d, d))  [5]
                    L·3·G(M, d, d)      (official)       L·6·G(M, d, d)
head                G(B, C, d)                           2·G(B, C, d)
==================  ==================================  ==========================================

[1] The patch projection's input is ``LayerNorm(patches)``, whose affine weights are trained, so
    its gradient is computed too: 2 products backward, not 1.
[2] srrlab's compression step on CPU without attention dropout is ``_TiedAttention`` of
    ``srrlab.models.kernels`` (q = k = v:
    ``∂w = Pᵀ∂O + τ(∂S + ∂Sᵀ)w`` with ``∂P = ∂O wᵀ``, 3 products backward), ``attention="tied"``.
    On CUDA it is SDPA's fused kernels (``"sdpa"``). With attention dropout active in training it
    is SDPA, which on CPU falls back to its math decomposition: 4 backward products as in the
    official code (``"explicit"``).
[3] ``crate-g`` (``compression_rate_gradient``): forward the Gram ``A Aᵀ`` per image and head
    (``G(p, p, N)``); its Cholesky and ``cholesky_solve`` are not counted. Backward: the Gram's
    two gradients (``2·G(p, p, N)``), and the matrix products inside torch's backward formulas of
    ``cholesky_solve`` (``grad·resultᵀ``: ``G(p, p, N)``; ``common·L``: ``G(p, p, p)``) and of
    ``linalg_cholesky`` (``Lᴴ·grad_L``: ``G(p, p, p)``); their triangular solves are not counted.
    Its projection ``Uᵀz`` is under attention_proj and its output product ``(·)U`` under output_op.
[4] learned (``Linear(Kp, d)``), U (``s @ Uᵀ``), Ut (``s @ U``, ``Kp = d``), fixed (a buffer: no
    weight gradient, 1 product backward), identity (no product: 0), gradient (``(·) @ Uᵀ``). Read off the
    variant's ``OutputOperator``: ``products`` (0 or 1) and ``trains_weight`` (2 or 1 backward).
[5] srrlab's fused ISTA: ``A = I + β(Dᵀ − DᵀD)`` by one ``addmm`` (``G(d, d, d)``, 2 backward), then
    ``F.linear(y, A)``. The official code computes ``Dx``, ``Dᵀ(Dx)``, ``Dᵀx``: 3 products.

:func:`step_flops` gives these counts; :func:`measured_flops` runs one step under
``FlopCounterMode`` (the oracle of ``tests/test_benchmarks.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).parent))
from official_crate import OfficialCRATE  # noqa: E402

from srrlab.models import CRATEConfig  # noqa: E402

__all__ = ["step_flops", "measured_flops"]

PARTS = ("patch_embed", "attention_proj", "attention_core", "output_op", "ista", "head")


def gemm(m: int, n: int, k: int, batch: int = 1) -> int:
    """``G(m, n, k)``: FLOPs of ``batch`` products ``(m×k)·(k×n)``, 2·m·n·k each."""
    return 2 * batch * m * n * k


def _linear(rows: int, fan_in: int, fan_out: int, grads: int = 2) -> tuple[int, int]:
    """(forward, backward) of ``rows×fan_in ↦ rows×fan_out`` with ``grads`` backward products."""
    f = gemm(rows, fan_out, fan_in)
    return f, grads * f


def _patch_embed(c: CRATEConfig, b: int) -> tuple[int, int]:
    return _linear(b * c.num_patches, c.patch_dim, c.dim)


def _head(c: CRATEConfig, b: int) -> tuple[int, int]:
    return _linear(b, c.dim, c.num_classes)


def _attention_proj(c: CRATEConfig, b: int) -> tuple[int, int]:
    return _linear(b * c.num_tokens, c.dim, c.inner_dim)


ATTENTION_BACKWARD = {"tied": 3, "sdpa": 5, "explicit": 4}


def _attention_core(c: CRATEConfig, b: int, attention: str) -> tuple[int, int]:
    n, p, bk = c.num_tokens, c.dim_head, b * c.heads
    if not c.spec.operator.attention:  # crate-g: the rate gradient, no softmax
        gram, tri = gemm(p, p, n, bk), gemm(p, p, p, bk)
        return gram, 3 * gram + 2 * tri
    scores = gemm(n, n, p, bk)  # w·wᵀ, and likewise attn·w
    return 2 * scores, ATTENTION_BACKWARD[attention] * scores


def _output_op(c: CRATEConfig, b: int) -> tuple[int, int]:
    op = c.spec.operator  # products: 0 (identity) or 1; a fixed (untrained) weight has no gradient
    f, g = _linear(b * c.num_tokens, c.inner_dim, c.dim, grads=2 if op.trains_weight else 1)
    return op.products * f, op.products * g


def _ista(c: CRATEConfig, b: int, official: bool) -> tuple[int, int]:
    step = gemm(b * c.num_tokens, c.dim, c.dim)
    if official:
        return 3 * step, 6 * step
    operator = gemm(c.dim, c.dim, c.dim)
    return operator + step, 2 * operator + 2 * step


def _parts(c: CRATEConfig, b: int, official: bool, attention: str) -> dict[str, tuple[int, int]]:
    per_layer = {
        "attention_proj": _attention_proj(c, b),
        "attention_core": _attention_core(c, b, attention),
        "output_op": _output_op(c, b),
        "ista": _ista(c, b, official),
    }
    parts = {"patch_embed": _patch_embed(c, b), "head": _head(c, b)}
    parts.update({k: (c.depth * f, c.depth * g) for k, (f, g) in per_layer.items()})
    return {k: parts[k] for k in PARTS}


def _resolve(model, official: bool | None) -> tuple[CRATEConfig, bool]:
    if isinstance(model, CRATEConfig):
        cfg, is_ref = model, False
    else:
        cfg, is_ref = getattr(model, "config", None), isinstance(model, OfficialCRATE)
    if official is None:
        official = is_ref
    if not isinstance(cfg, CRATEConfig):
        raise ValueError("step_flops needs model.config; for the official reference set "
                         "ref.config = model.config as benchmarks/vs_official.py does")
    if official and cfg.variant != "crate":
        raise ValueError(f"the official formulation is the 'crate' variant, got {cfg.variant!r}")
    return cfg, official


def _default_attention(model, cfg: CRATEConfig, official: bool) -> str:
    """The attention path the model takes in a training step (as ``srrlab.models.kernels.tied_attention``)."""
    if official:
        return "explicit"
    param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    on_cuda = param is not None and param.device.type == "cuda"
    if cfg.attention_dropout > 0.0:
        return "sdpa" if on_cuda else "explicit"
    return "sdpa" if on_cuda else "tied"


def step_flops(model, batch: int, *, official: bool | None = None, attention: str | None = None) -> dict:
    """Matrix-product FLOPs of one training step of ``model`` on ``batch`` images (module docstring).

    ``model`` is an srrlab ``CRATE``, the reference ``OfficialCRATE`` (with ``.config`` set) or a
    ``CRATEConfig``. ``official`` forces the official formulation (default: whether ``model`` is an
    ``OfficialCRATE``). ``attention`` is ``"tied"``, ``"sdpa"`` or ``"explicit"`` (3, 5, 4 backward
    products, footnote [2]); default: the path the model takes in training on its device. Returns ``{"forward", "backward", "total", "parts"}``; ``parts`` maps each
    of :data:`PARTS` to ``{"forward", "backward", "total"}``.
    """
    cfg, official = _resolve(model, official)
    if attention is None:
        attention = _default_attention(model, cfg, official)
    if attention not in ATTENTION_BACKWARD:
        raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKWARD)}, got {attention!r}")
    parts = {k: {"forward": f, "backward": g, "total": f + g}
             for k, (f, g) in _parts(cfg, batch, official, attention).items()}
    forward = sum(v["forward"] for v in parts.values())
    backward = sum(v["backward"] for v in parts.values())
    return {"forward": forward, "backward": backward, "total": forward + backward, "parts": parts}


# --------------------------------------------------------------------------------------
# The oracle: one step under FlopCounterMode
# --------------------------------------------------------------------------------------
def _sdpa_forward(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _sdpa_backward(grad_out, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, q, k, v)


def _cpu_sdpa_mapping() -> dict:
    """Torch's SDPA formulas for the CPU flash kernel, which FlopCounterMode does not register
    (it counts the CUDA kernels only); without this, CPU attention would count as 0."""
    aten = torch.ops.aten
    names = {"_scaled_dot_product_flash_attention_for_cpu": _sdpa_forward,
             "_scaled_dot_product_flash_attention_for_cpu_backward": _sdpa_backward}
    return {getattr(aten, n): f for n, f in names.items() if hasattr(aten, n)}


def measured_flops(model: torch.nn.Module, batch: int, seed: int = 0) -> dict:
    """FLOPs that ``FlopCounterMode`` counts for one step (forward + cross-entropy + backward) of
    ``model`` (which has a ``.config``) on a random batch, in the model's current mode, with the
    CPU SDPA kernel counted by torch's SDPA formulas. Gradients are taken with
    ``torch.autograd.grad`` for every parameter that requires grad (the products of
    ``loss.backward()``), leaving ``.grad`` untouched. Returns ``{"forward", "backward", "total"}``.
    """
    cfg = model.config
    ref = next(model.parameters())
    gen = torch.Generator(device=ref.device).manual_seed(seed)
    x = torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size, generator=gen,
                    device=ref.device, dtype=ref.dtype)
    y = torch.randint(0, cfg.num_classes, (batch,), generator=gen, device=ref.device)
    params = [p for p in model.parameters() if p.requires_grad]
    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as counter:
        loss = F.cross_entropy(model(x), y)
        forward = counter.get_total_flops()
        torch.autograd.grad(loss, params)
        total = counter.get_total_flops()
    return {"forward": forward, "backward": total - forward, "total": total}
