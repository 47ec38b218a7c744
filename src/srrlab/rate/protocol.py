"""The evaluation protocol of the SRR measure: one named, recorded setting (docs/measures.md).

Three choices decide what "the SRR of a trained model" means, and the paper states only the first:

* ``layernorm`` — which LayerNorms are removed before measuring (``"pre"``: the two pre-operator
  LayerNorms of every layer, the paper's App. C; ``"all"``; ``"none"``);
* ``sparsity`` — ``λ‖Z‖₀`` as the literal ``"count"`` of non-zero entries (the paper's formula) or
  as their ``"fraction"`` (the official CRATE analysis code);
* ``rate`` — ``"gamma1"`` (raw tokens, ε² = p/N, the CRATE models' γ = 1) or ``"unit"`` (tokens
  scaled to unit norm, ε² = 0.01, the official CRATE analysis tool).

Every measurement records its protocol (:attr:`SRRProtocol.name`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..models.crate import LAYERNORM_PROTOCOLS, layernorm_protocol
from ..names import RATE_CONVENTIONS, SPARSITY_FORMS
# declared in srrlab.options (the command line reads them without torch), shared by TrainConfig and MeasureSettings
from ..options import SRR_SETTINGS, srr_option

__all__ = ["SRRProtocol", "SPARSITY_FORMS", "DEFAULT_PROTOCOL", "SRR_SETTINGS", "srr_option"]

# SPARSITY_FORMS (the literal count of non-zeros, or their fraction count/(N·d)) is owned by srrlab.names.


@dataclass(frozen=True)
class SRRProtocol:
    """How the SRR measure is evaluated. Defaults: ``layernorm="pre"``, ``sparsity="count"``,
    ``rate="gamma1"`` (the paper's reading; docs/measures.md explains each choice).

    ``layernorm`` also accepts the boolean alias of earlier releases (``True``: keep every
    LayerNorm = ``"none"``; ``False``: remove every LayerNorm = ``"all"``).
    """

    layernorm: str = "pre"
    sparsity: str = SRR_SETTINGS["sparsity"]["default"]  # "count"
    rate: str = SRR_SETTINGS["rate"]["default"]  # "gamma1"

    def __post_init__(self) -> None:
        # None reads as "none" (no LayerNorm removed): command lines and TOML spell it that way.
        layernorm = "none" if self.layernorm is None else self.layernorm
        object.__setattr__(self, "layernorm", layernorm_protocol(layernorm))
        if self.sparsity not in SPARSITY_FORMS:
            raise ValueError(f"sparsity must be one of {', '.join(map(repr, SPARSITY_FORMS))} (λ‖Z‖₀ as the "
                             f"count of non-zero entries, or their fraction), got {self.sparsity!r}")
        if self.rate not in RATE_CONVENTIONS:
            raise ValueError(f"rate must be one of {', '.join(map(repr, RATE_CONVENTIONS))} (gamma1: raw tokens, "
                             f"ε² = p/N; unit: unit-norm tokens, ε² = 0.01), got {self.rate!r}")

    @property
    def name(self) -> str:
        """``layernorm=<…> sparsity=<…> rate=<…>``: how every measurement names its protocol."""
        return f"layernorm={self.layernorm} sparsity={self.sparsity} rate={self.rate}"

    @property
    def removed_layernorms(self) -> frozenset[str]:
        """Names of the LayerNorm modules this protocol replaces by the identity."""
        return LAYERNORM_PROTOCOLS[self.layernorm]


DEFAULT_PROTOCOL = SRRProtocol()
