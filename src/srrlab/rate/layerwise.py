"""Measuring SRR layer by layer on a model under a named evaluation protocol ([HZX-11]; docs/rates.md)."""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import pandas as pd
import torch

from .core import RATE_CONVENTIONS, _coding_rate, _compression_rate, l0, rate_eps
from .protocol import SRRProtocol

__all__ = ["SRRMeasurement", "measure_srr", "LAYERWISE_COLUMNS", "BOTH_RATES_COLUMNS"]

#: Columns of the per-layer table, in order: R, R^c and μ in the protocol's rate convention, the
#: count ‖Z‖₀ and the fraction of non-zero entries (whichever the protocol uses, both are kept).
LAYERWISE_COLUMNS = ("layer", "R", "Rc", "l0", "fraction", "mu")
#: Extra columns with ``both_rates=True``: the rates in each named convention.
BOTH_RATES_COLUMNS = ("R_gamma1", "Rc_gamma1", "R_unit", "Rc_unit")


class SRRMeasurement(NamedTuple):
    """What :func:`measure_srr` returns; unpacks as ``table, value, eps, ...``.

    ``table``: one row per layer ℓ = 1…L with the image-averaged ``R(Z^ℓ)``, ``R^c(Z^ℓ; U^ℓ)``,
    ``‖Z^ℓ‖₀`` (count), the fraction of non-zero entries and ``μ^ℓ = λ·S + R^c − R`` with ``S`` the
    protocol's sparsity form. ``value``: the model-level μ_SRR, the mean of ``μ^ℓ`` over layers.
    ``eps``: the ε used (reported with every measurement). ``protocol``: the
    :class:`~srrlab.rate.SRRProtocol`. ``train_acc``: the accuracy of the evaluated network (the
    protocol's LayerNorms removed) on the measured images, when the data carries labels, else None.
    """

    table: pd.DataFrame
    value: float
    eps: float
    lam: float
    images: int
    layernorm: str
    protocol: SRRProtocol
    train_acc: float | None


def _data(data: Any) -> tuple[Any, torch.Tensor | None]:
    """``(images, labels or None)``; images are a tensor or an iterable of batches."""
    if isinstance(data, torch.Tensor):
        return data, None
    if hasattr(data, "train") and hasattr(data.train, "images"):  # Splits: SRR is measured on training data
        data = data.train
    if hasattr(data, "images") and isinstance(data.images, torch.Tensor):  # ImageDataset
        return data.images, getattr(data, "labels", None)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        if len(data[0]) != len(data[1]):
            raise ValueError(f"data: {len(data[0])} images but {len(data[1])} labels")
        return data
    if isinstance(data, Iterable):
        return data, None
    raise TypeError(
        f"data must be an image tensor (B, C, H, W), an (images, labels) pair, an ImageDataset, Splits (its "
        f"train split is used) or an iterable of image batches / (images, labels) pairs, got {type(data).__name__}"
    )


def _batches(images: Iterable[Any] | torch.Tensor, labels: torch.Tensor | None, batch_size: int,
             max_images: int | None, seed: int) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4:
            raise ValueError(f"data must be images of shape (B, C, H, W), got {tuple(images.shape)}")
        if max_images is not None and max_images < len(images):
            gen = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(images), generator=gen)[:max_images].sort().values
            images = images[idx]
            labels = None if labels is None else labels[idx]
        for start in range(0, len(images), batch_size):
            yield images[start:start + batch_size], None if labels is None else labels[start:start + batch_size]
        return
    seen = 0
    for batch in images:
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        if max_images is not None:
            if seen >= max_images:
                return
            x = x[: max_images - seen]
            y = None if y is None else y[: len(x)]
        seen += len(x)
        yield x, y


@torch.no_grad()
def measure_srr(model: torch.nn.Module, data: Any, *, layernorm: str | bool = "pre", sparsity: str = "count",
                rate: str = "gamma1", eps: float | None = None, lam: float = 0.1, max_images: int | None = None,
                batch_size: int = 256, tol: float = 0.0, dtype: torch.dtype | None = None, seed: int = 0,
                both_rates: bool = False) -> SRRMeasurement:
    """Per-layer SRR of ``model`` on ``data``, averaged over images, under one evaluation protocol
    (docs/measures.md "The evaluation protocol"; [HZX-11]).

    For every layer ℓ the output ``Z^ℓ`` of :meth:`~srrlab.models.CRATE.forward_layers` with the
    LayerNorms named by ``layernorm`` removed (``"pre"``, the default: the two pre-operator
    LayerNorms of every layer, as the paper's App. C; ``"all"``; ``"none"``; ``True``/``False`` are
    the old aliases of ``"none"``/``"all"``) and the layer's subspaces ``U^ℓ`` give ``R(Z^ℓ)``,
    ``R^c(Z^ℓ; U^ℓ)``, ``‖Z^ℓ‖₀`` and ``μ^ℓ = λ·S + R^c − R`` per image, where ``S`` is the count
    of non-zero entries (``sparsity="count"``) or their fraction (``"fraction"``) and the rates use
    the ``rate`` convention (``"gamma1"``: raw tokens, ε² = p/N; ``"unit"``: unit-norm tokens,
    ε² = 0.01; an explicit ``eps`` overrides the protocol's ε). The table holds the means over
    images and ``value`` (μ_SRR) the mean of ``μ^ℓ`` over layers. ``both_rates=True`` adds the
    rates in both conventions (columns :data:`BOTH_RATES_COLUMNS`; the other convention with its own
    default ε) from the same forward pass.

    ``data``: images ``(B, C, H, W)``, an ``(images, labels)`` pair, an
    :class:`~srrlab.data.ImageDataset`, a :class:`~srrlab.data.Splits` (its train split), or an
    iterable of batches (or ``(images, labels)`` batches). With labels, ``train_acc`` is the
    evaluated network's accuracy on the measured images. ``max_images`` takes a fixed random
    subset (``seed``) of a tensor/dataset, or the first images of an iterable. ``tol`` is passed to
    :func:`~srrlab.rate.l0`; ``dtype=torch.float64`` computes the rates in fp64. The model is run
    in eval mode and its mode is restored afterwards.
    """
    protocol = SRRProtocol(layernorm, sparsity, rate)
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam!r}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be a positive integer or None, got {max_images!r}")
    if not hasattr(model, "forward_layers") or not hasattr(model, "subspaces"):
        raise TypeError(f"model must be a srrlab CRATE model (forward_layers, subspaces), got {type(model).__name__}")
    device = next(model.parameters()).device
    subspaces = [u.detach() for u in model.subspaces()]
    rates = RATE_CONVENTIONS if both_rates else (protocol.rate,)
    sums: torch.Tensor | None = None  # (L, 3 + 2·len(rates)): l0, fraction, μ-rate-part…, summed over images
    count, correct, labelled = 0, 0, 0
    used_eps: dict[str, float] = {}
    was_training = model.training
    model.eval()
    try:
        for x, y in _batches(*_data(data), batch_size, max_images, seed):
            out = model.forward_layers(x.to(device), layernorm=protocol.layernorm)
            if y is not None:
                correct += int((out.logits.argmax(-1).cpu() == y.cpu()).sum())
                labelled += len(y)
            rows = []
            for state, u in zip(out.layers, subspaces):
                z = state.z_out
                n, p = z.shape[-2], u.shape[-1]
                nonzero = l0(z, tol=tol).double()
                cols = [nonzero.sum(), (nonzero / (n * z.shape[-1])).sum()]
                for r in rates:
                    used_eps[r] = rate_eps(r, n, p, eps if r == protocol.rate else None)
                    unit = r == "unit"
                    cols.append(_coding_rate(z, used_eps[r], dtype, unit=unit).double().sum())
                    cols.append(_compression_rate(z, u, used_eps[r], dtype, unit=unit).double().sum())
                rows.append(torch.stack(cols))
            batch_sums = torch.stack(rows).cpu()
            sums = batch_sums if sums is None else sums + batch_sums
            count += len(x)
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("data holds no images")
    means = (sums / count).numpy()
    per_rate = {r: (means[:, 2 + 2 * i], means[:, 3 + 2 * i]) for i, r in enumerate(rates)}
    R, Rc = per_rate[protocol.rate]
    l0_mean, fraction = means[:, 0], means[:, 1]
    sparse = l0_mean if protocol.sparsity == "count" else fraction
    table = pd.DataFrame({"layer": range(1, len(means) + 1), "R": R, "Rc": Rc, "l0": l0_mean,
                          "fraction": fraction, "mu": lam * sparse + Rc - R})
    if both_rates:
        for r in rates:
            table[f"R_{r}"], table[f"Rc_{r}"] = per_rate[r]
    train_acc = correct / labelled if labelled == count else None
    table.attrs.update(eps=used_eps[protocol.rate], lam=lam, images=count, protocol=protocol.name,
                       train_acc=train_acc)
    return SRRMeasurement(table, float(table["mu"].mean()), used_eps[protocol.rate], lam, count,
                          protocol.layernorm, protocol, train_acc)
