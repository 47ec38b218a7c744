"""A reference implementation of the official CRATE formulation (docs/theory.md §8), for benchmarks.

Written the way the official ``model/crate.py`` computes (not copied from it): attention with an
explicit score matrix ``softmax(w wᵀ · scale)`` per head followed by ``attn @ w`` and the learned
output projection; the ISTA step as three matrix products,
``ReLU(x + β (Dᵀx − DᵀD x) − βλ)`` with ``D x``, ``Dᵀ(D x)`` and ``Dᵀx`` computed separately.
:func:`from_srrlab` builds it with the weights of an srrlab ``crate`` model, so the two can be
checked for equal outputs and timed side by side (``benchmarks/vs_official.py``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srrlab.models import CRATE


class OfficialAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__()
        self.heads, self.dim_head, self.scale = heads, dim_head, dim_head ** -0.5
        self.qkv = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        w = self.qkv(x).view(b, n, self.heads, self.dim_head).permute(0, 2, 1, 3)  # (B, K, N, p)
        dots = torch.matmul(w, w.transpose(-1, -2)) * self.scale                   # explicit q·kᵀ
        attn = dots.softmax(dim=-1)
        out = torch.matmul(attn, w).permute(0, 2, 1, 3).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class OfficialISTA(nn.Module):
    def __init__(self, dim: int, step: float, lambd: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim))
        self.step, self.lambd = step, lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dx = F.linear(x, self.weight)                 # D x
        dtdx = F.linear(dx, self.weight.t())          # Dᵀ D x
        dtx = F.linear(x, self.weight.t())            # Dᵀ x
        return F.relu(x + self.step * (dtx - dtdx) - self.step * self.lambd)


class OfficialCRATE(nn.Module):
    """The official CRATE classifier (pre-norm, CLS pooling), with srrlab's parameter layout."""

    def __init__(self, model: CRATE):
        super().__init__()
        c = model.config
        if c.variant != "crate" or not c.prenorm or c.pool != "cls" or c.eps is not None or c.alpha != 1.0:
            raise ValueError("the official formulation is the 'crate' variant with prenorm, cls pooling, "
                             f"alpha = 1 and eps = None; got {c.variant}")
        self.patch = model.config.patch_size
        self.patch_norm_in = nn.LayerNorm(c.patch_dim)
        self.patch_proj = nn.Linear(c.patch_dim, c.dim)
        self.patch_norm_out = nn.LayerNorm(c.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, c.num_tokens, c.dim))
        self.norm1 = nn.ModuleList(nn.LayerNorm(c.dim) for _ in range(c.depth))
        self.attn = nn.ModuleList(OfficialAttention(c.dim, c.heads, c.dim_head) for _ in range(c.depth))
        self.norm2 = nn.ModuleList(nn.LayerNorm(c.dim) for _ in range(c.depth))
        self.ista = nn.ModuleList(OfficialISTA(c.dim, c.ista, c.lambd) for _ in range(c.depth))
        self.head_norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, ch, h, w = images.shape
        p = self.patch
        x = images.reshape(b, ch, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * ch)
        x = self.patch_norm_out(self.patch_proj(self.patch_norm_in(x)))
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1) + self.pos_embedding
        for n1, attn, n2, ista in zip(self.norm1, self.attn, self.norm2, self.ista):
            x = x + attn(n1(x))
            x = ista(n2(x))
        return self.head(self.head_norm(x[:, 0]))


def from_srrlab(model: CRATE) -> OfficialCRATE:
    """The official formulation with the weights of the srrlab ``crate`` model ``model``."""
    ref = OfficialCRATE(model)
    src = model.state_dict()
    dst = {}
    for key in ("patch_norm_in", "patch_proj", "patch_norm_out", "head_norm", "head"):
        for suffix in ("weight", "bias"):
            dst[f"{key}.{suffix}"] = src[f"{key}.{suffix}"]
    dst["cls_token"], dst["pos_embedding"] = src["cls_token"], src["pos_embedding"]
    for i in range(model.config.depth):
        for ours, theirs in (("norm1", "norm1"), ("norm2", "norm2")):
            for suffix in ("weight", "bias"):
                dst[f"{theirs}.{i}.{suffix}"] = src[f"layers.{i}.{ours}.{suffix}"]
        dst[f"attn.{i}.qkv.weight"] = src[f"layers.{i}.attn.qkv.weight"]
        dst[f"attn.{i}.to_out.weight"] = src[f"layers.{i}.attn.to_out.weight"]
        dst[f"attn.{i}.to_out.bias"] = src[f"layers.{i}.attn.to_out.bias"]
        dst[f"ista.{i}.weight"] = src[f"layers.{i}.ista.weight"]
    ref.load_state_dict(dst)
    return ref
