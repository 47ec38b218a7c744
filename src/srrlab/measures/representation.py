"""Representation-based measures of Natekar & Sharma 2020 (winners of the NeurIPS 2020 PGDL competition).

Natekar & Sharma, "Representation Based Complexity Measures for Predicting Generalization in Deep
Learning" (arXiv:2012.02775, 2020). All three measures evaluate the network (``ctx.model``, in eval
mode, never modified) on the context's fixed training subset (:attr:`MeasureContext.images`), in
batches of ``settings.batch_size``, with the quantities in float64:

* ``db-index``: the **Davies–Bouldin index** of the penultimate representation ``φ(x) =
  model.features(x)`` (what the final ``head`` Linear maps to the logits), clustered by the labels
  (their "consistency of representations"). With the k classes present, ``c_i`` the mean of class
  i's features and ``s_i`` the mean Euclidean distance of its points to ``c_i``::

      DB = (1/k) Σ_i max_{j≠i} (s_i + s_j) / ‖c_i − c_j‖₂

  the standard definition (Davies & Bouldin 1979; ``sklearn.metrics.davies_bouldin_score``).
  Natekar & Sharma's code averages the ratio over ``j`` instead of taking the maximum; we use the
  standard maximum. Larger = classes less separated relative to their spread = more complex.
  Invariant to a global scaling of the features and to renaming the classes.
  *Single-sample classes are kept*, with ``s_i = 0`` (the exact scatter of the sample, as in the
  standard definition and scikit-learn); fewer than two classes raise ``ValueError`` (DB is
  undefined). Two classes with coincident centroids give ``inf`` (indistinguishable classes:
  maximally complex; scikit-learn instead drops such pairs).

* ``mixup-margin``: the output margin ``f(x̃)_y − max_{j≠y} f(x̃)_j`` on **label-wise mixup**
  images ``x̃ = α x_a + (1 − α) x_b`` of two training images of the *same* class y (the label kept),
  α = ``settings.mixup_alpha`` (their "robustness to perturbations": mixup within a class).
  Pairing (:func:`label_mixup`): for each class, in increasing label order, its images are put in a
  random order ``π`` (``torch.randperm`` with a generator seeded by ``settings.seed``) and image
  ``π(k)`` is mixed with ``π(k+1)`` cyclically (the last with the first): a class of n ≥ 2 images
  gives n mixed images, every image appears once as ``x_a`` and once as ``x_b``, never with itself;
  a class with a single image gives none.
* ``augment-margin``: the same margin on **augmented** training images, each translated by a
  random integer shift ``(dy, dx)`` with ``|dy|, |dx| ≤ round(augment_shift · side)`` pixels
  (uniform, independent per image, from a generator seeded by ``settings.seed``), the uncovered
  pixels zero in the (normalised) input space the model reads (:func:`random_translate`). No flips:
  digits and Fashion-MNIST are not mirror-symmetric (a flipped "2" or shoe is not the same class),
  so a flip would test the network on out-of-class images rather than on a nuisance transformation.
  The rounding is half up (0.125 · 28 = 3.5 → 4 pixels; 0.125 · 8 = 1).

Both margin measures summarise the margin distribution as Natekar & Sharma do (after Jiang et
al. 2019's margin distribution): the mean of its five-number summary (:func:`margin_summary`),
and are **minus** that summary, since a larger margin predicts better generalisation.
Margins are linear in the logits, so scaling the head (weights and bias) by c > 0 scales both
summaries by c.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..data.augment import augment
from .context import MeasureContext
from .registry import register

__all__ = ["davies_bouldin", "margin_summary", "label_mixup", "random_translate", "output_margins", "max_shift_of"]

_NS = ("Natekar & Sharma 2020, 'Representation Based Complexity Measures for Predicting Generalization "
       "in Deep Learning' (arXiv:2012.02775)")


# -- plain functions ----------------------------------------------------------------------------
def davies_bouldin(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Davies–Bouldin index of ``features`` ``(n, d)`` clustered by ``labels`` ``(n,)`` (float64).

    ``DB = (1/k) Σ_i max_{j≠i} (s_i + s_j) / ‖c_i − c_j‖₂`` over the k distinct labels, ``c_i`` the
    class centroid and ``s_i`` the mean Euclidean distance of the class's points to it (a
    single-sample class has ``s_i = 0``). ``inf`` when two centroids coincide. Raises ValueError
    with fewer than two classes or mismatched sizes.
    """
    x = torch.as_tensor(features).detach().double()
    y = torch.as_tensor(labels).detach().to(x.device)
    if x.dim() != 2:
        raise ValueError(f"davies_bouldin: features must have shape (n, d), got {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"davies_bouldin: need one label per feature row, got labels of shape "
                         f"{tuple(y.shape)} for {len(x)} rows")
    classes, index = torch.unique(y, return_inverse=True)
    k = len(classes)
    if k < 2:
        raise ValueError(f"davies_bouldin: the Davies-Bouldin index needs at least 2 classes, got {k} "
                         f"(labels {classes.tolist()}); pass more (or more varied) training images")
    if not torch.isfinite(x).all():
        warnings.warn("Davies-Bouldin index is nan: some features are not finite (a diverged run?)", stacklevel=2)
        return float("nan")
    counts = torch.bincount(index, minlength=k).double()
    centroids = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device).index_add_(0, index, x)
    centroids = centroids / counts[:, None]
    dist = torch.linalg.vector_norm(x - centroids[index], dim=1)
    scatter = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, index, dist) / counts
    separation = torch.cdist(centroids, centroids)
    ratio = (scatter[:, None] + scatter[None, :]) / separation  # 0/0 = nan, s/0 = inf on coincident centroids
    ratio = torch.where(separation == 0, torch.full_like(ratio, math.inf), ratio)
    ratio.fill_diagonal_(-math.inf)
    return ratio.max(dim=1).values.mean().item()


def margin_summary(margins) -> float:
    """The mean of the five-number summary of ``margins`` (a 1-D array or tensor), in float64.

    The five numbers: the lower fence value, Q1, the median, Q3 and the upper fence value. The
    quartiles are percentiles with linear interpolation (``numpy.percentile``'s default); with
    ``IQR = Q3 − Q1``, the lower fence value is the smallest margin ``≥ Q1 − 1.5·IQR`` and the upper
    fence value the largest margin ``≤ Q3 + 1.5·IQR`` (Tukey's whiskers: the most extreme data
    points that are not outliers). ``nan`` (with a warning) when a margin is not finite.
    """
    m = np.asarray(margins.detach().cpu() if isinstance(margins, torch.Tensor) else margins, dtype=np.float64)
    m = m.reshape(-1)
    if m.size == 0:
        raise ValueError("margin_summary: no margins (empty input)")
    if not np.isfinite(m).all():
        bad = int((~np.isfinite(m)).sum())
        warnings.warn(f"margin summary is nan: {bad} of the {m.size} margins are not finite (non-finite "
                      f"network outputs; a diverged run?)", stacklevel=2)
        return float("nan")
    q1, median, q3 = np.percentile(m, [25.0, 50.0, 75.0])
    iqr = q3 - q1
    lower = m[m >= q1 - 1.5 * iqr].min()
    upper = m[m <= q3 + 1.5 * iqr].max()
    return float(np.mean([lower, q1, median, q3, upper]))


def label_mixup(images: torch.Tensor, labels: torch.Tensor, alpha: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Label-wise mixup: ``α x_a + (1 − α) x_b`` for pairs of images of the same label, the label kept.

    For each label, in increasing order, the class's images (in their order in ``images``) are
    permuted with ``torch.randperm(n, generator=generator)`` into ``π`` and ``π(k)`` is mixed with
    ``π((k+1) mod n)``: n mixed images for a class of n ≥ 2 images, none for a single-image class.
    Returns ``(mixed, mixed_labels)`` on the images' device, in that order (class by class).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"label_mixup: alpha must be in (0, 1), got {alpha!r}")
    if images.dim() < 1 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"label_mixup: need one label per image, got images {tuple(images.shape)} and "
                         f"labels {tuple(labels.shape)}")
    labels_cpu = labels.detach().cpu()
    first, second = [], []
    for label in torch.unique(labels_cpu).tolist():
        members = (labels_cpu == label).nonzero().squeeze(1)
        if len(members) < 2:
            continue
        order = members[torch.randperm(len(members), generator=generator, device=generator.device).cpu()]
        first.append(order)
        second.append(order.roll(-1))
    if not first:
        return images[:0].clone(), labels[:0].clone()
    a = torch.cat(first).to(images.device)
    b = torch.cat(second).to(images.device)
    return alpha * images[a] + (1 - alpha) * images[b], labels[a]


def random_translate(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image translated by its own random integer shift ``(dy, dx)``, ``|dy|, |dx| ≤ max_shift``.

    Shifts are uniform and independent; the uncovered pixels are zero (in the input space: the
    padding is applied to the given values). This is :func:`srrlab.data.augment.augment`'s random
    crop of the zero-padded image with ``crop_padding=max_shift`` and no flip: its window offset
    ``o ∈ [0, 2·max_shift]`` (one ``torch.randint(0, 2·max_shift + 1, (n, 2))`` draw, rows then
    columns) moves the content by ``max_shift − o`` pixels (positive: down / right).
    ``max_shift = 0`` returns a copy of ``images``.
    """
    return augment(images, generator=generator, crop_padding=max_shift, flip=False)


def output_margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample output margins ``f(x)_y − max_{j≠y} f(x)_j`` (float64)."""
    logits = logits.double()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return true - other


# -- measures -----------------------------------------------------------------------------------
def _batched(ctx: MeasureContext, fn, images: torch.Tensor) -> torch.Tensor:
    bs = ctx.settings.batch_size
    with torch.no_grad():
        return torch.cat([fn(images[i:i + bs]) for i in range(0, len(images), bs)])


def _features(ctx: MeasureContext) -> torch.Tensor:
    """The penultimate representation ``model.features(x)`` of the training subset (float64, cached)."""
    key = ("representation", "features")
    if key not in ctx.cache:
        features = getattr(ctx.model, "features", None)
        if not callable(features):
            raise TypeError(f"db-index needs the penultimate representation model.features(images); "
                            f"{type(ctx.model).__name__} has no features method")
        ctx.cache[key] = _batched(ctx, features, ctx.images).double()
    return ctx.cache[key]


def _margin_measure(ctx: MeasureContext, images: torch.Tensor, labels: torch.Tensor) -> float:
    logits = _batched(ctx, ctx.model, images)
    return -margin_summary(output_margins(logits, labels))


def _generator(ctx: MeasureContext) -> torch.Generator:
    return torch.Generator().manual_seed(ctx.settings.seed)


def max_shift_of(images: torch.Tensor, fraction: float) -> int:
    """``round(fraction · side)`` pixels (half up), ``side`` the smaller of the images' height and width."""
    side = min(images.shape[-2], images.shape[-1])
    return int(math.floor(fraction * side + 0.5))


@register("db-index", reference=f"{_NS}, Davies-Bouldin index of the penultimate representation "
                                f"(consistency of representations); standard max over j, see module docs",
          needs_data=True)
def db_index(ctx: MeasureContext) -> float:
    """Davies–Bouldin index of the penultimate features of the training images, clustered by label."""
    return davies_bouldin(_features(ctx), ctx.labels)


@register("mixup-margin", reference=f"{_NS}, label-wise mixup margin (robustness to perturbations)",
          needs_data=True)
def mixup_margin(ctx: MeasureContext) -> float:
    """−(mean five-number summary of the output margins on label-wise mixup training images)."""
    images, labels = label_mixup(ctx.images, ctx.labels, ctx.settings.mixup_alpha, _generator(ctx))
    if len(images) == 0:
        raise ValueError("mixup-margin needs a class with at least 2 training images; every class has "
                         "at most one: pass more data or raise max_images")
    return _margin_measure(ctx, images, labels)


@register("augment-margin", reference=f"{_NS}, augmented margin (robustness to perturbations); "
                                      f"random translations only, see module docs",
          needs_data=True)
def augment_margin(ctx: MeasureContext) -> float:
    """−(mean five-number summary of the output margins on randomly translated training images)."""
    shift = max_shift_of(ctx.images, ctx.settings.augment_shift)
    images = random_translate(ctx.images, shift, _generator(ctx))
    return _margin_measure(ctx, images, ctx.labels)
