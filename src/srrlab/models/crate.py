"""The CRATE model family: one implementation, a table of variants.

A CRATE layer ℓ maps ``Z^{ℓ-1}`` to ``Z^ℓ`` in two unrolled optimisation steps (docs/theory.md §3):

* compression [HZX-2]:  ``Y = Z + s·α·γ²·O(SSA_1(Z), …, SSA_K(Z))`` (pre-norm: ``SSA`` sees ``LN₁(Z)``),
* sparsification, one ISTA step [HZX-3]:  ``Z^ℓ = ReLU(Y + β Dᵀ(Y − D Y) − β λ)`` (pre-norm: of ``LN₂(Y)``).

The variants differ only in the sign ``s`` and the output operator ``O`` of the compression
step (the table of docs/theory.md §3); :data:`VARIANTS` holds that table, one :class:`Variant`
row per variant with its :class:`OutputOperator`, and :class:`CompressionStep` is the one module
that implements all of them by calling the row's operator. ``crate-g`` replaces the softmax
attention by one exact gradient-descent step on ``R^c`` in push-through form. A new variant is
one row of the table (and, if its ``O`` is new, one operator class).

The file reads top-down: configuration, the table of variants, the layer, the model. How the
attention and the ISTA step are computed (custom autograd, operator fusion) lives in
:mod:`srrlab.models.kernels`.

Shapes in code are row-major: a batch of token sets is ``(B, N, d)`` where docs/theory.md §1 writes
``Z ∈ R^{d×N}``. The tied projection ``qkv = Linear(d, K·p, bias=False)`` has weight ``Uᵀ``
(shape ``(K·p, d)``), so head ``k`` uses rows ``k·p … (k+1)·p−1``.
"""
from __future__ import annotations

import copy as _copy
import dataclasses
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..names import VARIANT_NAMES
from ..options import check_types
from .kernels import ista, ista_operator, tied_attention

__all__ = [
    "CRATEConfig",
    "Variant",
    "OutputOperator",
    "VARIANTS",
    "CRATE",
    "CompressionStep",
    "ISTAStep",
    "LayerStates",
    "LayerwiseOutput",
    "LAYERNORM_PROTOCOLS",
    "layernorm_protocol",
]


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------
@dataclass
class CRATEConfig:
    """Configuration of a CRATE model. Field names follow the official CRATE constructor
    (``image_size``, ``patch_size``, ``channels``, ``num_classes``, ``dim``, ``depth``, ``heads``,
    ``dim_head``, ``dropout``, ``emb_dropout``, ``pool``, ``ista``) where it has one.

    ``dim_head`` (p) defaults to ``dim // heads``. ``ista`` is the ISTA step size β and ``lambd``
    the sparsity weight λ (docs/theory.md §3, [HZX-3]). ``temperature`` is the softmax scale τ applied to
    ``(U_kᵀZ)ᵀ(U_kᵀZ)``; default ``p^{-1/2}`` as in the official code. ``alpha`` scales the
    compression update of every variant (α in [HZX-2]; 1 in trained models). ``eps`` is the
    quantisation ε in ``γ = p/(N ε²)``: the softmax variants scale their update by ``αγ²``
    ([HZX-2]) and ``crate-g`` uses γ in ``R^c``; ``None`` means the CRATE convention γ = 1.
    ``dropout`` acts after the compression step's output operator, ``attn_dropout`` after the
    softmax and ``emb_dropout`` after the positional embedding is added; ``None`` (the default of
    both) means "same as ``dropout``", so one ``dropout`` value sets all three places the paper
    names (App. C, docs/models.md). The official code's ``emb_dropout`` defaults to 0: set
    ``emb_dropout=0.0`` for its behaviour. ``prenorm`` puts a LayerNorm before each of the two steps.
    """

    variant: str = "crate"
    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    num_classes: int = 10
    dim: int = 384
    depth: int = 12
    heads: int = 6
    dim_head: int | None = None
    ista: float = 0.1
    lambd: float = 0.1
    temperature: float | None = None
    alpha: float = 1.0
    eps: float | None = None
    dropout: float = 0.0
    attn_dropout: float | None = None
    emb_dropout: float | None = None
    prenorm: bool = True
    pool: str = "cls"

    def __post_init__(self) -> None:
        check_types(self)
        if self.dim_head is None and self.heads > 0:
            self.dim_head = self.dim // self.heads
        self.validate()

    # Derived quantities -------------------------------------------------------------
    @property
    def inner_dim(self) -> int:
        """K·p, the width of the stacked heads."""
        return self.heads * self.dim_head

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        """N: patches plus the CLS token."""
        return self.num_patches + 1

    @property
    def patch_dim(self) -> int:
        return self.channels * self.patch_size**2

    @property
    def softmax_scale(self) -> float:
        return self.dim_head**-0.5 if self.temperature is None else self.temperature

    @property
    def attention_dropout(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def embedding_dropout(self) -> float:
        return self.dropout if self.emb_dropout is None else self.emb_dropout

    @property
    def spec(self) -> Variant:
        return VARIANTS[self.variant]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field and how to fix it."""
        if self.variant not in VARIANTS:
            raise ValueError(
                f"unknown variant {self.variant!r}; valid variants: {', '.join(VARIANTS)}"
            )
        for name in ("image_size", "patch_size", "channels", "num_classes", "dim", "depth", "heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.dim_head, int) or self.dim_head < 1:
            raise ValueError(
                f"dim_head must be a positive integer, got {self.dim_head!r} "
                f"(dim={self.dim}, heads={self.heads}: dim // heads must be at least 1)"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is not divisible by patch_size={self.patch_size}; "
                f"choose a patch size that divides the image size"
            )
        if self.spec.needs_square and self.dim != self.inner_dim:
            raise ValueError(
                f"{self.variant} needs dim == heads * dim_head (its output operator is "
                f"{self.spec.operator.symbol}), got dim={self.dim}, "
                f"heads={self.heads}, dim_head={self.dim_head}; "
                + (f"set dim_head={self.dim // self.heads}" if self.dim % self.heads == 0 else
                   f"choose a dim divisible by heads (e.g. dim={self.heads * max(1, round(self.dim / self.heads))}) "
                   f"or heads dividing dim")
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("attn_dropout", "emb_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1) or None (same as dropout), got {value!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.eps is not None and not self.eps > 0:
            raise ValueError(f"eps must be positive or None (γ = 1), got {self.eps!r}")


# --------------------------------------------------------------------------------------
# The table of variants (docs/theory.md §3)
# --------------------------------------------------------------------------------------
class OutputOperator:
    """The output operator ``O`` of a variant's compression step: from the stacked heads
    ``S = [SSA_1; …; SSA_K]`` (row form, ``(B, N, K·p)``) and the step's weights to the update
    ``O(S)`` (``(B, N, d)``), before the factor ``s·α·γ²``.

    One instance per kind of operator; the attributes are what the rest of srrlab asks of it:

    * ``name`` — the table's name of ``O`` (:attr:`Variant.output`), ``symbol`` — how messages write it;
    * ``needs_square`` — it requires ``d == K·p``;
    * ``attention`` — the update is built from the softmax heads (``False``: ``crate-g``, whose
      update is the rate gradient and which carries no ``γ²``);
    * ``products`` — matrix products ``(B·N × K·p)·(K·p × d)`` of one forward (0 or 1), and
      ``trains_weight`` — whether that product's weight is trained (a gradient backward);
    * :meth:`build` registers the parameters or buffers it owns on the step, :meth:`num_parameters`
      counts its trainable ones; :meth:`matrix` / :meth:`bias` give ``O`` as ``S @ matrix + bias``.
    """

    name: str = ""
    symbol: str = ""
    needs_square: bool = False
    attention: bool = True
    products: int = 1
    trains_weight: bool = True

    def build(self, step: CompressionStep, cfg: CRATEConfig) -> None:
        """Register the parameters and buffers this operator owns on ``step`` (none by default)."""

    def num_parameters(self, cfg: CRATEConfig) -> int:
        """Trainable parameters this operator owns per layer (beyond ``U``)."""
        return 0

    def update(self, step: CompressionStep, z: torch.Tensor) -> torch.Tensor:
        """The update ``O(SSA_1(z), …, SSA_K(z))`` of ``step`` on ``z`` (``(B, N, d)``), unscaled."""
        return self.apply(step, step.heads_output(z))

    def apply(self, step: CompressionStep, s: torch.Tensor) -> torch.Tensor:
        """``O(S)`` for the stacked heads ``s`` (``(B, N, K·p)``)."""
        raise NotImplementedError

    def matrix(self, step: CompressionStep) -> torch.Tensor | None:
        """``O`` in row form, a ``(K·p, d)`` matrix with ``apply(s) = s @ matrix (+ bias)``; ``None``: the identity."""
        raise NotImplementedError

    def bias(self, step: CompressionStep) -> torch.Tensor | None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:  # stateless: equal by kind (so Variant rows compare by value)
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class LearnedOutput(OutputOperator):
    """``crate``: a learned ``W ∈ R^{d×Kp}`` with bias, independent of ``U`` (``to_out``)."""

    name, symbol = "learned", "a learned W"

    def build(self, step: CompressionStep, cfg: CRATEConfig) -> None:
        step.to_out = nn.Linear(cfg.inner_dim, cfg.dim)

    def num_parameters(self, cfg: CRATEConfig) -> int:
        return cfg.inner_dim * cfg.dim + cfg.dim

    def apply(self, step: CompressionStep, s: torch.Tensor) -> torch.Tensor:
        return step.to_out(s)

    def matrix(self, step: CompressionStep) -> torch.Tensor:
        return step.to_out.weight.t()

    def bias(self, step: CompressionStep) -> torch.Tensor | None:
        return step.to_out.bias


class SubspaceOutput(OutputOperator):
    """``crate-c``, ``crate-n``: ``O = U``, tied to the subspaces: ``S @ Wq`` with ``Wq = Uᵀ`` the qkv weight."""

    name, symbol = "U", "U"

    def apply(self, step: CompressionStep, s: torch.Tensor) -> torch.Tensor:
        return s @ step.qkv.weight

    def matrix(self, step: CompressionStep) -> torch.Tensor:
        return step.qkv.weight


class TransposedOutput(OutputOperator):
    """``crate-t``: ``O = Uᵀ`` (needs ``d = K·p``): ``S @ Wqᵀ``."""

    name, symbol, needs_square = "Ut", "Uᵀ", True

    def apply(self, step: CompressionStep, s: torch.Tensor) -> torch.Tensor:
        return s @ step.qkv.weight.t()

    def matrix(self, step: CompressionStep) -> torch.Tensor:
        return step.qkv.weight.t()


class FixedOutput(OutputOperator):
    """``crate-fix``: a random ``M ∈ R^{d×Kp}`` drawn at construction with ``nn.Linear``'s default
    scale and stored (and saved) as the buffer ``fixed_out``, so that it is never trained: ``S @ Mᵀ``."""

    name, symbol, trains_weight = "fixed", "a fixed random matrix", False

    def build(self, step: CompressionStep, cfg: CRATEConfig) -> None:
        fixed = torch.empty(cfg.dim, cfg.inner_dim)
        nn.init.kaiming_uniform_(fixed, a=math.sqrt(5))
        step.register_buffer("fixed_out", fixed)

    def apply(self, step: CompressionStep, s: torch.Tensor) -> torch.Tensor:
        return s @ step.fixed_out.t()

    def matrix(self, step: CompressionStep) -> torch.Tensor:
        return step.fixed_out.t()


class IdentityOutput(OutputOperator):
    """``crate-identity``: ``O = I`` (needs ``d = K·p``): the stacked heads themselves."""

    name, symbol, needs_square, products, trains_weight = "identity", "the identity", True, 0, False

    def apply(self, step: CompressionStep, s: torch.Tensor) -> torch.Tensor:
        return s

    def matrix(self, step: CompressionStep) -> None:
        return None


class RateGradient(OutputOperator):
    """``crate-g``: no attention; the update is the exact gradient ``∇_Z R^c(Z; U)`` in push-through
    form (:func:`~srrlab.rate.compression_rate_gradient`), whose last product is ``(·) @ Uᵀ``."""

    name, symbol, attention = "gradient", "∇R^c", False

    def update(self, step: CompressionStep, z: torch.Tensor) -> torch.Tensor:
        from ..rate.core import compression_rate_gradient  # not at the top: srrlab.rate imports this module

        return compression_rate_gradient(z, step.qkv.weight, step.heads, step.gamma(z.shape[1]))

    def apply(self, step: CompressionStep, s: torch.Tensor) -> torch.Tensor:
        raise ValueError("crate-g's update is the rate gradient of Z, not a map of the attention heads")

    def matrix(self, step: CompressionStep) -> torch.Tensor:
        raise ValueError("crate-g's update is the rate gradient of Z, not a linear map of the attention heads")


@dataclass(frozen=True)
class Variant:
    """One row of the variant table of docs/theory.md §3: the sign ``s`` and the output operator
    ``O`` of the compression step.

    ``operator`` is the :class:`OutputOperator`; ``output`` its name:
    ``"learned"`` (a ``Linear(Kp, d)`` with bias, independent of ``U``), ``"U"``, ``"Ut"``,
    ``"fixed"`` (a random matrix stored as a buffer, never trained), ``"identity"``, or
    ``"gradient"`` (``crate-g``: no attention, the exact gradient of ``R^c``).
    """

    name: str
    sign: float
    operator: OutputOperator
    reference: str
    description: str

    @property
    def output(self) -> str:
        return self.operator.name

    @property
    def needs_square(self) -> bool:
        """The variant requires ``d == K·p``."""
        return self.operator.needs_square


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("crate", +1.0, LearnedOutput(), "[HZX-2], official code",
                "official CRATE: learned output projection W (d×Kp) with bias"),
        Variant("crate-c", +1.0, SubspaceOutput(), "[HZX-4], [HZX-8]",
                "conceptual CRATE: output operator U (tied to the subspaces)"),
        Variant("crate-n", -1.0, SubspaceOutput(), "[HZX-9]",
                "negative CRATE: the sign of crate-c flipped, a descent step"),
        Variant("crate-t", +1.0, TransposedOutput(), "[HZX-10]",
                "transpose CRATE: output operator Uᵀ (needs d = K·p)"),
        Variant("crate-fix", +1.0, FixedOutput(), "docs/theory.md §3",
                "fixed random output operator, never trained"),
        Variant("crate-identity", +1.0, IdentityOutput(), "docs/theory.md §3",
                "identity output operator (needs d = K·p)"),
        Variant("crate-g", -1.0, RateGradient(), "docs/theory.md §3 (exact gradient, push-through form)",
                "one exact gradient-descent step on R^c: Z − α∇R^c(Z)"),
    )
}
if tuple(VARIANTS) != VARIANT_NAMES:  # the command line lists srrlab.names.VARIANT_NAMES without torch
    raise ImportError(f"srrlab.names.VARIANT_NAMES {VARIANT_NAMES} differs from the variant table {tuple(VARIANTS)}")


# --------------------------------------------------------------------------------------
# The layer: its two steps
# --------------------------------------------------------------------------------------
class CompressionStep(nn.Module):
    """The compression (attention) step of every variant [HZX-2], without the skip connection.

    Returns ``s·α·γ²·O(SSA_1(Z), …, SSA_K(Z))`` for the softmax variants, with
    ``SSA_k(Z) = (U_kᵀZ) softmax((U_kᵀZ)ᵀ(U_kᵀZ)·τ)`` computed as tied ``q = k = v`` attention,
    and ``−α ∇R^c(Z)`` for ``crate-g``. ``O`` is the variant's :class:`OutputOperator`
    (``self.operator``), which owns any parameter beyond ``U`` (``to_out``, ``fixed_out``).
    The layer adds the skip: ``Y = Z + step(LN₁(Z))``.
    """

    def __init__(self, cfg: CRATEConfig):
        super().__init__()
        self.variant = cfg.spec
        self.heads = cfg.heads
        self.dim_head = cfg.dim_head
        self.scale = cfg.softmax_scale
        self.alpha = cfg.alpha
        self.eps = cfg.eps
        self.attn_dropout = cfg.attention_dropout
        self.qkv = nn.Linear(cfg.dim, cfg.inner_dim, bias=False)  # weight = Uᵀ, (Kp, d)
        self.operator.build(self, cfg)
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def operator(self) -> OutputOperator:
        """The output operator ``O`` of this step's variant."""
        return self.variant.operator

    def gamma(self, num_tokens: int) -> float:
        """γ = p/(N ε²); 1 under the CRATE convention ``eps=None`` (docs/theory.md §2)."""
        from ..rate.core import rate_gamma  # not at the top: srrlab.rate imports this module

        return rate_gamma(self.dim_head, num_tokens, self.eps)

    def heads_output(self, z: torch.Tensor) -> torch.Tensor:
        """The stacked heads ``[SSA_1; …; SSA_K]`` in row form, ``(B, N, K·p)``."""
        b, n, _ = z.shape
        w = self.qkv(z).view(b, n, self.heads, self.dim_head).transpose(1, 2)  # (B, K, N, p)
        out = tied_attention(w, self.scale, self.attn_dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        update = self.operator.update(self, z)
        factor = self.variant.sign * self.alpha
        if self.operator.attention:  # the factor αγ² of [HZX-2] (γ = 1 when eps is None)
            factor *= self.gamma(z.shape[1]) ** 2
        if factor != 1.0:
            update = factor * update
        return self.drop(update)

    def subspaces(self) -> torch.Tensor:
        """``U`` as a ``(K, d, p)`` tensor: ``U[k]`` is the basis ``U_k`` of head k."""
        d = self.qkv.weight.shape[1]
        return self.qkv.weight.view(self.heads, self.dim_head, d).transpose(1, 2)


class ISTAStep(nn.Module):
    """One ISTA step on the sparse-coding objective [HZX-3]:
    ``Z' = ReLU(Y + β Dᵀ(Y − D Y) − β λ)``.

    ``weight`` is the dictionary ``D`` (``(d, d)``), initialised as in the official code
    (Kaiming-uniform). The step is linear in ``Y`` before the ReLU: ``Z' = ReLU(A Y − βλ)`` with
    the ``d×d`` operator ``A = I + β(Dᵀ − DᵀD)`` (:meth:`operator`); it is computed in that form
    (:func:`srrlab.models.kernels.ista`), which equals the formula above up to rounding.
    """

    def __init__(self, cfg: CRATEConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.dim, cfg.dim))
        nn.init.kaiming_uniform_(self.weight)
        self.step = cfg.ista
        self.lambd = cfg.lambd

    def operator(self) -> torch.Tensor:
        """``A = I + β(Dᵀ − DᵀD)``, the ``(d, d)`` linear part of the step in column form:
        ``Z' = ReLU(A Y − βλ)`` [HZX-3]."""
        return ista_operator(self.weight, self.step)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return ista(y, self.operator(), self.step, self.lambd)


class LayerStates(NamedTuple):
    """The states of one layer ℓ: its input ``Z^{ℓ-1}``, the half step ``Y^ℓ`` and its output ``Z^ℓ``."""

    z_in: torch.Tensor
    y: torch.Tensor
    z_out: torch.Tensor


def _norm(ln: nn.Module, x: torch.Tensor, name: str, removed: frozenset[str]) -> torch.Tensor:
    return x if name in removed else ln(x)


class CRATELayer(nn.Module):
    """One CRATE layer: ``Y = Z + step(LN₁(Z))``, ``Z' = ISTA(LN₂(Y))`` (docs/theory.md §3)."""

    def __init__(self, cfg: CRATEConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim) if cfg.prenorm else nn.Identity()
        self.attn = CompressionStep(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim) if cfg.prenorm else nn.Identity()
        self.ista = ISTAStep(cfg)

    def forward(self, z: torch.Tensor, removed: frozenset[str] = frozenset()) -> LayerStates:
        """``removed``: names of the LayerNorms (``norm1``, ``norm2``) replaced by the identity."""
        y = z + self.attn(_norm(self.norm1, z, "norm1", removed))
        return LayerStates(z, y, self.ista(_norm(self.norm2, y, "norm2", removed)))


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------
# Which LayerNorms an evaluation removes (docs/measures.md, "The evaluation protocol").
#: LayerNorm removal protocols: the names of the LayerNorm modules each one replaces by the
#: identity. ``"pre"``: the two pre-operator LayerNorms of every layer (before the compression
#: step and before the ISTA step), as the paper's App. C prescribes for its measures; ``"all"``:
#: every LayerNorm, patch embedding and head included; ``"none"``: the network as trained.
LAYERNORM_PROTOCOLS: dict[str, frozenset[str]] = {
    "pre": frozenset({"norm1", "norm2"}),
    "all": frozenset({"norm1", "norm2", "patch_norm_in", "patch_norm_out", "head_norm"}),
    "none": frozenset(),
}


def layernorm_protocol(layernorm: str | bool) -> str:
    """The protocol name of ``layernorm``: one of :data:`LAYERNORM_PROTOCOLS`, or the boolean alias
    of earlier releases (``True``: keep every LayerNorm = ``"none"`` removed; ``False``: ``"all"``)."""
    if isinstance(layernorm, bool):
        return "none" if layernorm else "all"
    if layernorm not in LAYERNORM_PROTOCOLS:
        raise ValueError(
            f"layernorm must name the LayerNorms to remove, one of {', '.join(map(repr, LAYERNORM_PROTOCOLS))} "
            f"(or True = keep all, False = remove all), got {layernorm!r}"
        )
    return layernorm


class LayerwiseOutput(NamedTuple):
    """What :meth:`CRATE.forward_layers` returns: one :class:`LayerStates` per layer, and the logits."""

    layers: list[LayerStates]
    logits: torch.Tensor


class CRATE(nn.Module):
    """A CRATE vision model of any variant (docs/theory.md §3), laid out as the official code.

    Patches ``(p1 p2 c)`` → LayerNorm → Linear → LayerNorm, a CLS token and a learned
    positional embedding, ``depth`` CRATE layers, then LayerNorm → Linear on the CLS token
    (or the token mean with ``pool="mean"``).
    """

    def __init__(self, config: CRATEConfig):
        super().__init__()
        self.config = config
        cfg = config
        self.patch_norm_in = nn.LayerNorm(cfg.patch_dim)
        self.patch_proj = nn.Linear(cfg.patch_dim, cfg.dim)
        self.patch_norm_out = nn.LayerNorm(cfg.dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, cfg.dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, cfg.num_tokens, cfg.dim))
        self.emb_drop = nn.Dropout(cfg.embedding_dropout)
        self.layers = nn.ModuleList(CRATELayer(cfg) for _ in range(cfg.depth))
        self.head_norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)

    @property
    def variant(self) -> str:
        return self.config.variant

    def extra_repr(self) -> str:
        c = self.config
        return f"variant={c.variant}, dim={c.dim}, depth={c.depth}, heads={c.heads}, dim_head={c.dim_head}"

    # -- pieces ---------------------------------------------------------------------
    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` → ``(B, num_patches, p·p·C)``, patches flattened as ``(p1 p2 c)``."""
        cfg = self.config
        if images.dim() != 4 or tuple(images.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(
                f"images must have shape (B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}) "
                f"for this model, got {tuple(images.shape)}"
            )
        b, c, h, w = images.shape
        p = cfg.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # b, h', w', p1, p2, c
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def embed(self, images: torch.Tensor, removed: frozenset[str] = frozenset()) -> torch.Tensor:
        """Token embedding ``Z⁰`` (``(B, N, d)``, N = patches + CLS); ``removed`` as in :meth:`forward_layers`."""
        x = self.patchify(images)
        x = self.patch_proj(_norm(self.patch_norm_in, x, "patch_norm_in", removed))
        x = _norm(self.patch_norm_out, x, "patch_norm_out", removed)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embedding
        return self.emb_drop(x)

    def pooled(self, z: torch.Tensor, removed: frozenset[str] = frozenset()) -> torch.Tensor:
        """The representation the classifier reads: the CLS token (or token mean) after the head's LayerNorm."""
        pooled = z[:, 0] if self.config.pool == "cls" else z.mean(dim=1)
        return _norm(self.head_norm, pooled, "head_norm", removed)

    def classify(self, z: torch.Tensor, removed: frozenset[str] = frozenset()) -> torch.Tensor:
        return self.head(self.pooled(z, removed))

    # -- forward passes --------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The penultimate representation ``(B, d)``: what the final ``head`` Linear maps to the logits."""
        z = self.embed(images)
        for layer in self.layers:
            z = layer(z).z_out
        return self.pooled(z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def forward_layers(self, images: torch.Tensor, layernorm: str | bool = "none") -> LayerwiseOutput:
        """Forward that keeps every layer's states (the SRR measure needs them, docs/rates.md).

        Returns :class:`LayerwiseOutput` with, for every layer ℓ, ``Z^{ℓ-1}``, ``Y^ℓ`` and ``Z^ℓ``
        as ``(B, N, d)`` tensors, and the logits. ``layernorm`` names the LayerNorms replaced by
        the identity (:data:`LAYERNORM_PROTOCOLS`): ``"none"`` (default: the network as trained),
        ``"pre"`` (the two pre-operator LayerNorms of every layer: the evaluation protocol of the
        SRR measure, docs/measures.md) or ``"all"`` (patch embedding and head too). ``True`` and
        ``False`` are accepted for ``"none"`` and ``"all"``.
        """
        removed = LAYERNORM_PROTOCOLS[layernorm_protocol(layernorm)]
        z = self.embed(images, removed)
        states = []
        for layer in self.layers:
            s = layer(z, removed)
            states.append(s)
            z = s.z_out
        return LayerwiseOutput(states, self.classify(z, removed))

    def without_layernorms(self, layernorm: str | bool = "pre") -> CRATE:
        """A copy of this model in which the LayerNorms named by ``layernorm`` (as in
        :meth:`forward_layers`) are replaced by ``nn.Identity``: the network an evaluation protocol
        evaluates, as an ordinary module (its ``forward`` equals ``forward_layers(x, layernorm).logits``).
        An evaluation copy: its ``config`` still describes the trained model."""
        removed = LAYERNORM_PROTOCOLS[layernorm_protocol(layernorm)]
        copy = _copy.deepcopy(self)
        for name, module in list(copy.named_modules()):
            for child, sub in list(module.named_children()):
                if child in removed and isinstance(sub, nn.LayerNorm):
                    setattr(module, child, nn.Identity())
        return copy

    def subspaces(self) -> list[torch.Tensor]:
        """The list of ``U^ℓ``, each a ``(K, d, p)`` view of layer ℓ's tied projection."""
        return [layer.attn.subspaces() for layer in self.layers]

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
