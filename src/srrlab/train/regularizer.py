"""SRR as a regulariser (docs/theory.md §7):

``min_w L_CE(w) + η · (1/|S|) Σ_{ℓ∈S} μ^ℓ(w^ℓ; f_{w^ℓ}(StopGrad(Z^{ℓ-1})))``

with ``μ = λ‖Z‖₀ + R^c(Z; U) − R(Z)`` [HZX-11]. Layer ℓ is re-applied to its *detached* input,
so the term trains only layer ℓ's own parameters. ``‖Z‖₀`` is a count and has no gradient: it
is part of the logged value, but only ``R^c − R`` trains (the paper's setting); ``l1 > 0`` adds
the surrogate ``l1·‖Z^ℓ‖₁`` (per image, summed over tokens and features), which does train.
The layer runs as in training (pre-norm LayerNorms kept, dropout active in train mode).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..rate import srr_terms

__all__ = ["SRRRegularizer", "parse_layers"]


def parse_layers(choice: str, depth: int) -> str | tuple[int, ...]:
    """``"last"``, ``"all"``, ``"random"`` or 1-based layer indices ``"i,j,…"`` → the choice, or a tuple of
    0-based indices. Raises ``ValueError`` naming the bad value."""
    if choice in ("last", "all", "random"):
        return choice
    try:
        idx = tuple(int(t) for t in choice.split(","))
    except ValueError:
        raise ValueError(f"srr_layers must be last, all, random or 1-based layer indices like '1,6,12', got {choice!r}") from None
    bad = [i for i in idx if not 1 <= i <= depth]
    if bad or not idx:
        raise ValueError(f"srr_layers {choice!r}: layers are numbered 1..{depth} for this model")
    return tuple(sorted(set(i - 1 for i in idx)))


class SRRRegularizer:
    """Computes the logits and the regulariser of one training batch.

    ``eta`` is η, ``layers`` a :func:`parse_layers` choice, ``eps``/``lam`` the ε (None: γ = 1)
    and λ of μ, ``l1`` the weight of the ℓ1 surrogate. ``random`` draws one layer per step,
    uniformly, from the generator passed to :meth:`__call__`.
    """

    def __init__(self, depth: int, eta: float, layers: str, eps: float | None = None, lam: float = 0.1,
                 l1: float = 0.0):
        self.depth = depth
        self.eta = eta
        self.choice = parse_layers(layers, depth)
        self.eps = eps
        self.lam = lam
        self.l1 = l1

    def select(self, generator: torch.Generator | None = None) -> Sequence[int]:
        """0-based indices of the layers regularised at this step."""
        if self.choice == "last":
            return (self.depth - 1,)
        if self.choice == "all":
            return tuple(range(self.depth))
        if self.choice == "random":
            return (int(torch.randint(self.depth, (1,), generator=generator)),)
        return self.choice

    def layer_terms(self, model: nn.Module, z_in: torch.Tensor, ell: int) -> torch.Tensor:
        """Per-image ``μ^ℓ(w^ℓ; f_{w^ℓ}(StopGrad(z_in)))`` (+ the ℓ1 surrogate), shape ``(B,)``."""
        layer = model.layers[ell]
        z = layer(z_in.detach()).z_out
        mu = srr_terms(z, layer.attn.subspaces(), self.eps, self.lam)["mu"]
        if self.l1:
            mu = mu + self.l1 * z.abs().sum(dim=(-2, -1))
        return mu

    def __call__(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator | None = None, *,
                 forward_layers: Callable[[torch.Tensor], Any] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[int, float]]:
        """``(logits, regulariser, {ℓ (1-based): mean μ^ℓ over the batch})`` for images ``x``.

        The regulariser is the mean over the selected layers of the batch-mean μ^ℓ, *without* η.
        ``forward_layers`` replaces ``model.forward_layers`` for the forward pass (e.g. a
        ``torch.compile``'d version of it); the layers are re-applied from ``model`` itself."""
        out = (forward_layers or model.forward_layers)(x)
        values = {}
        terms = []
        for ell in self.select(generator):
            term = self.layer_terms(model, out.layers[ell].z_in, ell).mean()
            terms.append(term)
            values[ell + 1] = term.item()
        return out.logits, torch.stack(terms).mean(), values
