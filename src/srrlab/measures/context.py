"""What every measure sees: the trained model, its initial weights, the training data, and the
shared quantities computed once per model (weight matrices, their norms, logits, margins)."""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import torch
from torch import nn

from ..models import CRATE
from ..models.crate import ISTAStep
from ..options import check_keys, check_types
from ..rate import SRRMeasurement, SRRProtocol, measure_srr
from ..names import NETWORKS
from ..rate.protocol import srr_option

__all__ = ["MeasureSettings", "MeasureContext", "WeightMatrix", "weight_matrices", "NETWORKS"]

# NETWORKS ("trained", "protocol": what the measures other than SRR evaluate, MeasureSettings.network)
# is owned by srrlab.names, where the command line reads it without torch.


@dataclass
class MeasureSettings:
    """Cost and convention settings shared by all measures (defaults in parentheses).

    Data: ``max_images`` training images (a fixed random subset drawn with ``seed``; ``None``: all)
    are used by every data-dependent measure; ``batch_size`` bounds memory.
    Margin: ``margin_percentile`` of the per-sample margins (10, Jiang et al. 2020); fewer than
    ``min_margin_samples`` (10) samples are refused.
    SRR: ``srr_images`` (500) of those images, ``srr_eps`` (None: the convention's ε), ``srr_lam`` (0.1),
    and the evaluation protocol (docs/measures.md): ``layernorm`` ("pre": the pre-operator LayerNorms
    removed), ``sparsity`` ("count") and ``rate`` ("gamma1"); see :class:`~srrlab.rate.SRRProtocol`.
    ``network``: the network every *other* measure evaluates, ``"trained"`` (default: the trained
    network as it is, LayerNorms included, as Jiang et al. and Dziugaite et al. measure) or
    ``"protocol"`` (the same copy with the protocol's LayerNorms removed that SRR is measured on, see
    :meth:`~srrlab.models.CRATE.without_layernorms`).
    PAC-Bayes / sharpness (:mod:`~srrlab.measures.flatness`): σ (the noise standard deviation) or
    the box radius α is searched by bisection (geometric midpoints while the lower end is > 0)
    between ``sigma_min`` (1e-6) and ``sigma_max`` (5) until the perturbed training accuracy drops
    by ``target_deviation`` (0.1) to within ``search_tolerance`` (0.01), in at most
    ``search_iterations`` (20) evaluations; each PAC-Bayes accuracy is a Monte-Carlo mean over
    ``mc_samples`` (10) draws.
    Sharpness: projected sign-gradient ascent on the training cross-entropy inside the box,
    ``ascent_steps`` (5) steps on minibatches of ``ascent_batch_size`` (256) images, from
    ``ascent_restarts`` (2) uniform random starts, the worst kept. ``magnitude_eps`` (1e-3) is the
    ε of the magnitude-aware variants (noise std σ'|w| + ε; box |u| ≤ α'(|w| + ε)).
    ``batch_draws`` (False): evaluate a PAC-Bayes estimate's ``mc_samples`` perturbed copies as one
    ``vmap`` forward instead of one forward each — the same draws, numbers equal up to
    floating-point reassociation (a near-tie in an argmax may fall the other way); off by default
    because on a CPU it does not pay (docs/performance.md, "Grouped training").
    Adaptive sharpness (:mod:`~srrlab.measures.adaptive`, Andriushchenko et al. 2023): on the first
    ``adaptive_images`` (1024) training images in batches of ``adaptive_batch_size`` (128, their m),
    ``adaptive_steps`` (20) ascent steps from ``adaptive_restarts`` (1) starts (the first at w, the others
    at random points of the ball), radii ``adaptive_rho_linf`` (0.001), ``adaptive_rho_l2`` (1.0) and
    ``adaptive_rho_average`` (0.2, over ``adaptive_samples`` (20) Gaussian draws), the loss on
    logits divided by their ℓ2 norm when ``normalize_logits`` (True).
    Curvature (:mod:`~srrlab.measures.curvature`): the loss on the first ``hessian_images`` (512)
    training images; Hutchinson's trace with ``hutchinson_probes`` (20) Rademacher probes; the top
    eigenvalue by at most ``power_iterations`` (20) power iterations, stopped when the relative change
    is below ``power_tolerance`` (1e-3).
    Representation (:mod:`~srrlab.measures.representation`, Natekar & Sharma 2020): label-wise mixup
    with weight ``mixup_alpha`` (0.5); augmentation: random translations by up to ``augment_shift``
    (0.125) of the image side.
    Spectrum (:mod:`~srrlab.measures.spectrum`, WeightWatcher): matrices with fewer than
    ``spectrum_min_evals`` (50) eigenvalues are left out of the layer average.
    """

    max_images: int | None = 2000
    seed: int = 0
    batch_size: int = 500
    margin_percentile: float = 10.0
    min_margin_samples: int = 10
    srr_images: int | None = srr_option("srr_images")  # shared with TrainConfig: rate.protocol.SRR_SETTINGS
    srr_eps: float | None = srr_option("srr_eps")
    srr_lam: float = srr_option("srr_lam")
    layernorm: str | bool | None = "pre"  # None / True / False: aliases, normalised to a name
    sparsity: str = srr_option("sparsity")
    rate: str = srr_option("rate")
    network: str = "trained"
    target_deviation: float = 0.1
    search_tolerance: float = 0.01
    search_iterations: int = 20
    sigma_min: float = 1e-6
    sigma_max: float = 5.0
    mc_samples: int = 10
    ascent_steps: int = 5
    ascent_restarts: int = 2
    ascent_batch_size: int = 256
    magnitude_eps: float = 1e-3
    batch_draws: bool = False  # evaluate the Monte-Carlo draws of a PAC-Bayes estimate as one batched forward
    # adaptive sharpness (Andriushchenko et al. 2023; measures/adaptive.py)
    adaptive_images: int = 1024
    adaptive_batch_size: int = 128
    adaptive_steps: int = 20
    adaptive_restarts: int = 1
    adaptive_rho_linf: float = 0.001
    adaptive_rho_l2: float = 1.0
    adaptive_rho_average: float = 0.2
    adaptive_samples: int = 20
    normalize_logits: bool = True
    # curvature of the training loss (measures/curvature.py)
    hessian_images: int = 512
    hutchinson_probes: int = 20
    power_iterations: int = 20
    power_tolerance: float = 1e-3
    # representation measures (Natekar & Sharma 2020; measures/representation.py)
    mixup_alpha: float = 0.5
    augment_shift: float = 0.125
    # weight-spectrum heavy tails (Martin & Mahoney 2021; measures/spectrum.py)
    spectrum_min_evals: int = 50

    def __post_init__(self) -> None:
        check_types(self)
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"max_images must be a positive integer or None, got {self.max_images!r}")
        if not 0 < self.margin_percentile < 100:
            raise ValueError(f"margin_percentile must be in (0, 100), got {self.margin_percentile!r}")
        for name in ("batch_size", "search_iterations", "mc_samples", "ascent_steps", "ascent_restarts",
                     "ascent_batch_size", "min_margin_samples", "adaptive_images", "adaptive_batch_size",
                     "adaptive_steps", "adaptive_restarts", "adaptive_samples", "hessian_images", "hutchinson_probes",
                     "power_iterations", "spectrum_min_evals"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 < self.target_deviation < 1:
            raise ValueError(f"target_deviation must be in (0, 1), got {self.target_deviation!r}")
        if not 0 <= self.sigma_min < self.sigma_max:
            raise ValueError(f"need 0 <= sigma_min < sigma_max, got {self.sigma_min!r}, {self.sigma_max!r}")
        for name in ("adaptive_rho_linf", "adaptive_rho_l2", "adaptive_rho_average", "power_tolerance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0 < self.mixup_alpha < 1:
            raise ValueError(f"mixup_alpha must be in (0, 1) (the weight of the first image), got {self.mixup_alpha!r}")
        if not 0 <= self.augment_shift < 0.5:
            raise ValueError(f"augment_shift must be in [0, 0.5) (a fraction of the image side), got {self.augment_shift!r}")
        self.layernorm = self.protocol.layernorm  # normalised (None / True / False → their names)
        if self.network not in NETWORKS:
            raise ValueError(f"network must be one of {', '.join(map(repr, NETWORKS))} (the network the measures "
                             f"other than SRR evaluate), got {self.network!r}")

    @property
    def protocol(self) -> SRRProtocol:
        """The SRR evaluation protocol of these settings (raises ValueError naming a bad field)."""
        return SRRProtocol(self.layernorm, self.sparsity, self.rate)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasureSettings:
        check_keys(d, (f.name for f in dataclasses.fields(cls)), "measure setting")
        return cls(**d)


class WeightMatrix(NamedTuple):
    """One weight matrix ``W_i`` of the norm-based measures, with its initial value ``W_i^0``."""

    name: str
    weight: torch.Tensor
    init: torch.Tensor | None


def weight_matrices(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The weight matrices of the norm-based measures, chosen by module type (not by name).

    Rule (documented in ``docs/measures.md``): the ``weight`` of every ``nn.Linear`` (patch
    projection, the tied ``U = qkv``, ``crate``'s learned output projection, the classifier) and
    the dictionary ``D`` of every ISTA step; a tensor used several times (the tied ``U`` acts as
    query, key, value and, in ``crate-c/-n/-t``, output operator; ``D`` acts as ``D`` and ``Dᵀ``)
    is counted once. Not matrices of the network's linear maps, hence excluded here: biases,
    LayerNorm affine parameters, the CLS token and positional embedding, and ``crate-fix``'s
    fixed output buffer (not trained). Whole-vector measures (``params``, ``l2``, ``l2-dist``,
    PAC-Bayes, sharpness) use every trainable parameter instead.
    """
    out, seen = [], set()
    for module_name, module in model.named_modules():
        if isinstance(module, (nn.Linear, ISTAStep)):
            w = module.weight
            if id(w) in seen or not w.requires_grad:
                continue
            seen.add(id(w))
            out.append((f"{module_name}.weight", w))
    return out


def _as_model(init: Any, model: CRATE) -> CRATE | None:
    if init is None:
        return init
    if isinstance(init, nn.Module):
        device = next(model.parameters()).device
        if any(p.device != device for p in init.parameters()):  # e.g. a CUDA model, its init loaded on the CPU
            return copy.deepcopy(init).to(device)  # a copy: the caller's init stays where it is
        return init
    if isinstance(init, dict):
        clone = copy.deepcopy(model)
        clone.load_state_dict(init)
        return clone
    raise TypeError(f"init must be a model, a state dict or None, got {type(init).__name__}")


class MeasureContext:
    """The trained ``model``, its initial weights ``init`` (a model or a state dict), the training
    ``data`` (an ImageDataset, Splits — its train split — or an ``(images, labels)`` pair) and the
    ``settings``; shared quantities are computed on first use and cached.
    """

    def __init__(self, model: CRATE, init: Any = None, data: Any = None, settings: MeasureSettings | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch module, got {type(model).__name__}")
        self.settings = settings or MeasureSettings()
        self.trained_model = model.eval()
        init = _as_model(init, model)
        if self.settings.network == "protocol":  # every measure evaluates the protocol's network
            model = model.without_layernorms(self.settings.layernorm)
            init = None if init is None else init.without_layernorms(self.settings.layernorm)
        self.model = model.eval()
        self.init_model = init
        if self.init_model is not None:
            self.init_model.eval()
        self._data = data
        self.device = next(model.parameters()).device
        #: Free-form per-model cache for quantities shared by several measures (e.g. the σ/α searches
        #: of :mod:`srrlab.measures.flatness`), keyed by a ``(module, name)`` tuple.
        self.cache: dict[Any, Any] = {}

    # -- requirements -------------------------------------------------------------------
    def require_init(self, measure: str) -> CRATE:
        if self.init_model is None:
            raise ValueError(f"measure {measure!r} needs the initial weights: pass init= (a model or state dict)")
        return self.init_model

    # -- data -----------------------------------------------------------------------------
    @cached_property
    def _subset(self) -> tuple[torch.Tensor, torch.Tensor]:
        data = self._data
        if data is None:
            raise ValueError("this measure needs training data: pass data= (an ImageDataset, Splits or (images, labels))")
        if hasattr(data, "train") and hasattr(data.train, "images"):
            data = data.train
        if hasattr(data, "images") and hasattr(data, "labels"):
            x, y = data.images, data.labels
        elif isinstance(data, (tuple, list)) and len(data) == 2:
            x, y = data
        else:
            raise TypeError(f"data must be an ImageDataset, Splits or (images, labels), got {type(data).__name__}")
        if len(x) != len(y):
            raise ValueError(f"data has {len(x)} images but {len(y)} labels")
        self._num_train = len(x)
        n = self.settings.max_images
        if n is not None and n < len(x):
            gen = torch.Generator().manual_seed(self.settings.seed)
            idx = torch.randperm(len(x), generator=gen)[:n].sort().values
            x, y = x[idx], y[idx]
        return x.to(self.device), y.to(self.device)

    @property
    def num_train(self) -> int:
        """m: the number of training samples in ``data`` (all of them, not only the ``max_images`` subset)."""
        self._subset  # noqa: B018 - parses the data and records its size
        return self._num_train

    @property
    def images(self) -> torch.Tensor:
        """The training images the data-dependent measures use (fixed subset, on the model's device)."""
        return self._subset[0]

    @property
    def labels(self) -> torch.Tensor:
        return self._subset[1]

    @torch.no_grad()
    def logits_of(self, model: nn.Module) -> torch.Tensor:
        """``model``'s logits on :attr:`images`, in eval mode, batched."""
        bs = self.settings.batch_size
        was = model.training
        model.eval()
        out = torch.cat([model(self.images[i:i + bs]) for i in range(0, len(self.images), bs)])
        model.train(was)
        return out

    @cached_property
    def srr(self) -> SRRMeasurement:
        """The SRR pass shared by every SRR measure: one :func:`~srrlab.rate.measure_srr` of the
        trained model under the settings' protocol on the first ``srr_images`` of :attr:`images`
        (with their labels, so it carries the evaluated network's training accuracy), with the rates
        in both conventions."""
        s = self.settings
        n = len(self.images) if s.srr_images is None else min(s.srr_images, len(self.images))
        return measure_srr(self.trained_model, (self.images[:n], self.labels[:n]), layernorm=s.layernorm,
                           sparsity=s.sparsity, rate=s.rate, eps=s.srr_eps, lam=s.srr_lam,
                           batch_size=s.batch_size, both_rates=True)

    def record(self) -> dict[str, Any]:
        """What a measurement row records about how it was measured: the protocol, the network the
        other measures evaluated and, when SRR was measured, the evaluated network's training
        accuracy and image count (``protocol_train_acc``, ``protocol_images``)."""
        out: dict[str, Any] = {"protocol": self.settings.protocol.name, "measure_network": self.settings.network}
        srr = self.__dict__.get("srr")  # only if an SRR measure ran: recording never adds a pass
        out["protocol_train_acc"] = None if srr is None else srr.train_acc
        out["protocol_images"] = None if srr is None else srr.images
        return out

    def accuracy_of(self, model: nn.Module) -> float:
        return (self.logits_of(model).argmax(-1) == self.labels).double().mean().item()

    @cached_property
    def logits(self) -> torch.Tensor:
        return self.logits_of(self.model)

    @cached_property
    def accuracy(self) -> float:
        """Training accuracy of the model on :attr:`images`."""
        return (self.logits.argmax(-1) == self.labels).double().mean().item()

    @cached_property
    def margins(self) -> torch.Tensor:
        """Per-sample margins ``f(x)[y] − max_{j≠y} f(x)[j]`` on :attr:`images` (fp64)."""
        logits = self.logits.double()
        true = logits.gather(1, self.labels[:, None]).squeeze(1)
        other = logits.scatter(1, self.labels[:, None], float("-inf")).amax(1)
        return true - other

    @cached_property
    def margin(self) -> float:
        """γ: the ``settings.margin_percentile``-th percentile of :attr:`margins` (Jiang et al. 2020, App. C).

        Nearest rank: the k-th smallest margin, ``k = ⌈q·n/100⌉`` (q = 10: the 200th of 2000).
        Fewer than ``settings.min_margin_samples`` samples raise ``ValueError``. A non-positive γ
        (at least k of the n training samples misclassified or tied) gives nan, with a warning:
        the margin-normalised measures are undefined there.
        """
        s = self.settings
        n = len(self.labels)
        if n < s.min_margin_samples:
            raise ValueError(
                f"the {s.margin_percentile:g}th-percentile margin needs at least {s.min_margin_samples} training "
                f"samples (settings.min_margin_samples), got {n}; pass more data or raise max_images")
        k = max(1, math.ceil(s.margin_percentile * n / 100 - 1e-9))
        gamma = self.margins.sort().values[k - 1].item()
        if not math.isfinite(gamma):
            bad = int((~torch.isfinite(self.margins)).sum())
            warnings.warn(
                f"margin γ is not a number: {bad} of the {n} training samples have non-finite outputs (a diverged "
                f"run?); margin-based measures are nan", stacklevel=3)
            return float("nan")
        if not gamma > 0:
            wrong = int((self.margins <= 0).sum())
            warnings.warn(
                f"margin γ = {gamma:.4g} ≤ 0: the model misclassifies (or ties) {wrong} of the {n} training "
                f"samples ({100 * wrong / n:.1f}%; a positive {s.margin_percentile:g}th-percentile margin needs "
                f"fewer than {k}), so margin-based measures are nan", stacklevel=3)
            return float("nan")
        return gamma

    # -- weights --------------------------------------------------------------------------
    @cached_property
    def matrices(self) -> list[WeightMatrix]:
        """The weight matrices of :func:`weight_matrices`, detached, fp64, with their initial values."""
        init = dict(weight_matrices(self.init_model)) if self.init_model is not None else {}
        return [WeightMatrix(name, w.detach().double(), init[name].detach().double() if name in init else None)
                for name, w in weight_matrices(self.model)]

    def _initial(self, measure: str) -> list[torch.Tensor]:
        self.require_init(measure)
        return [m.init for m in self.matrices]

    @cached_property
    def spectral_norms(self) -> torch.Tensor:
        """``‖W_i‖₂`` of every matrix (fp64)."""
        return torch.stack([torch.linalg.matrix_norm(m.weight, ord=2) for m in self.matrices])

    @cached_property
    def frobenius_norms(self) -> torch.Tensor:
        """``‖W_i‖_F`` of every matrix (fp64)."""
        return torch.stack([torch.linalg.matrix_norm(m.weight) for m in self.matrices])

    @cached_property
    def distance_spectral(self) -> torch.Tensor:
        """``‖W_i − W_i^0‖₂`` (fp64); needs the initial weights."""
        return torch.stack([torch.linalg.matrix_norm(m.weight - w0, ord=2)
                            for m, w0 in zip(self.matrices, self._initial("dist-spec-init"))])

    @cached_property
    def distance_frobenius(self) -> torch.Tensor:
        """``‖W_i − W_i^0‖_F`` (fp64); needs the initial weights."""
        return torch.stack([torch.linalg.matrix_norm(m.weight - w0)
                            for m, w0 in zip(self.matrices, self._initial("fro-dist"))])

    def parameters(self, model: nn.Module | None = None) -> list[torch.Tensor]:
        """Every trainable parameter of ``model`` (default: the trained one), as in ``parameters()``."""
        return [p for p in (model or self.model).parameters() if p.requires_grad]

    @cached_property
    def parameter_vector(self) -> torch.Tensor:
        return torch.cat([p.detach().double().reshape(-1) for p in self.parameters()])

    @cached_property
    def init_parameter_vector(self) -> torch.Tensor:
        init = self.require_init("l2-dist")
        return torch.cat([p.detach().double().reshape(-1) for p in self.parameters(init)])
