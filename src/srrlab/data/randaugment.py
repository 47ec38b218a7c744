"""Batched, reproducible RandAugment and Inception-style random resized crop.

Both augmentations work on a whole batch ``(n, C, H, W)`` of floating-point
images at once (no Python loop over images), draw every random number from a
passed ``torch.Generator`` and return a new tensor (never a view of the input).

* :func:`random_resized_crop` samples one crop box per image (area fraction
  uniform in ``scale``, aspect ratio log-uniform in ``ratio``; up to 10
  candidates, the first that fits, else a central crop) and resizes it back to
  ``H × W`` with bilinear interpolation.  It works on the stored (normalised)
  values directly.
* :func:`rand_augment` applies ``num_ops`` rounds of RandAugment (Cubuk et al.
  2020, "RandAugment: Practical automated data augmentation with a reduced
  search space"): in each round every image draws one of the 14 operations in
  :data:`OPS`, applied at a fixed ``magnitude``.  The operations are defined on
  pixel values in ``[0, 1]``; pass the dataset's per-channel ``mean`` / ``std``
  to use it on stored (standardised) images.
* :func:`apply_op` applies one named operation with a per-image value; it is
  the building block of :func:`rand_augment`.

Coordinate conventions of the geometric operations (``x`` to the right, ``y``
downwards, continuous pixel coordinates with the origin at the top-left corner
of the image, so pixel ``(i, j)`` has its centre at ``(j + 0.5, i + 0.5)``);
each maps an output point to the input point it shows:

* ``TranslateX`` by ``t`` pixels: input ``(x - t, y)``; a positive ``t`` moves
  the content right (``t = 1`` equals ``torch.roll(x, 1, -1)`` with the wrapped
  column set to 0).  ``TranslateY`` likewise, positive moves it down.
* ``ShearX`` by ``v``: input ``(x + v·y, y)``, i.e. a shear about the top-left
  corner as in the original PIL implementation (row ``i`` is shifted left by
  ``v·(i + 0.5)`` pixels for ``v > 0``).  ``ShearY`` by ``v``: input
  ``(x, y + v·x)``.
* ``Rotate`` by ``θ`` degrees about the image centre; a positive ``θ`` turns the
  content counter-clockwise as displayed (row 0 at the top), so ``θ = 90`` on a
  square image equals ``torch.rot90(x, 1, dims=(-2, -1))``.

Pixels that come from outside the image are 0 (black), and every geometric
operation samples with nearest-neighbour interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["OPS", "apply_op", "rand_augment", "random_resized_crop", "sample_crop_boxes"]

#: The RandAugment operations, in the order used to index the per-image op draw.
OPS: tuple[str, ...] = (
    "Identity",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "Brightness",
    "Color",
    "Contrast",
    "Sharpness",
    "Posterize",
    "Solarize",
    "AutoContrast",
    "Equalize",
)

# Largest magnitude value of each op (Translate: fraction of the image size) and whether it is signed.
_MAX_VALUE: dict[str, float] = {
    "ShearX": 0.3,
    "ShearY": 0.3,
    "TranslateX": 150.0 / 331.0,
    "TranslateY": 150.0 / 331.0,
    "Rotate": 30.0,
    "Brightness": 0.9,
    "Color": 0.9,
    "Contrast": 0.9,
    "Sharpness": 0.9,
}
_SIGNED = frozenset(_MAX_VALUE)
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)
_ATTEMPTS = 10


# ---------------------------------------------------------------------------
# Argument checks.


def _check_images(name: str, images: object, floating: bool = True) -> torch.Tensor:
    """A 4-D tensor (``floating``: of a floating-point dtype); shared with :func:`~srrlab.data.augment.augment`."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name}: images must be a torch.Tensor, got {type(images).__name__}")
    if images.dim() != 4:
        raise ValueError(f"{name}: images must have shape (n, C, H, W), got {tuple(images.shape)}")
    if floating and not images.is_floating_point():
        raise TypeError(f"{name}: images must have a floating-point dtype, got {images.dtype}")
    return images


def _check_generator(name: str, generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"{name}: generator must be a torch.Generator, got {type(generator).__name__}")
    return generator


def _check_int(name: str, arg: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: {arg} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        where = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}: {arg} must be an int {where}, got {value}")
    return value


def _check_range(name: str, arg: str, value: object) -> tuple[float, float]:
    """A pair ``(low, high)`` of finite positive reals with ``low <= high``."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name}: {arg} must be a (low, high) pair of numbers, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name}: {arg} must be a (low, high) pair of numbers, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or low > high:
        raise ValueError(f"{name}: {arg} must satisfy 0 < low <= high (finite), got {tuple(value)}")
    return low, high


def _check_stats(name: str, arg: str, value: object, channels: int) -> tuple[float, ...]:
    if isinstance(value, torch.Tensor):
        if value.dim() != 1:
            raise ValueError(f"{name}: {arg} must be 1-D with one value per channel, got shape {tuple(value.shape)}")
        value = value.tolist()
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name}: {arg} must be a sequence of floats, got {type(value).__name__}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"{name}: {arg} must be a sequence of floats, got an element of type {type(v).__name__}")
    stats = tuple(float(v) for v in value)
    if len(stats) != channels:
        raise ValueError(f"{name}: {arg} must have one value per channel ({channels}), got {len(stats)}")
    if not all(math.isfinite(v) for v in stats):
        raise ValueError(f"{name}: {arg} must be finite, got {stats}")
    return stats


# ---------------------------------------------------------------------------
# Random resized crop.


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Sample the Inception-style crop boxes used by :func:`random_resized_crop`.

    For each of the ``n`` images, 10 candidate boxes are drawn at once: area
    ``height·width·s`` with ``s`` uniform in ``scale``, aspect ratio
    ``r = width / height`` of the box with ``log r`` uniform in
    ``[log ratio[0], log ratio[1]]``; box width ``round(sqrt(area·r))`` and box
    height ``round(sqrt(area / r))``.  The first candidate whose box is
    non-empty and fits in the image is kept, its top-left corner uniform over
    the admissible integer positions.  When none fits, the image gets the
    central crop of the largest box whose aspect ratio is the image's, clamped
    to ``ratio``.

    All randomness is one ``torch.rand((n, 10, 4), dtype=torch.float64)`` draw
    from ``generator`` (on its device); along the last axis: area fraction,
    log-ratio, row offset and column offset, each as a uniform in ``[0, 1)``.

    Args:
        n: number of boxes (``>= 0``).
        height, width: image size (``>= 1``).
        generator: the ``torch.Generator`` that drives every random choice.
        scale: ``(low, high)`` range of the area fraction, ``0 < low <= high``.
        ratio: ``(low, high)`` range of the aspect ratio, ``0 < low <= high``.

    Returns:
        An ``int64`` tensor of shape ``(n, 4)`` on the CPU, with columns
        ``top, left, box_height, box_width``; always
        ``0 <= top <= height - box_height`` and ``0 <= left <= width - box_width``
        with ``1 <= box_height <= height`` and ``1 <= box_width <= width``.

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``n < 0``, a size is ``< 1`` or a range is invalid.
    """
    name = "sample_crop_boxes"
    _check_int(name, "n", n, 0)
    _check_int(name, "height", height, 1)
    _check_int(name, "width", width, 1)
    _check_generator(name, generator)
    s_low, s_high = _check_range(name, "scale", scale)
    r_low, r_high = _check_range(name, "ratio", ratio)
    return _sample_boxes(n, height, width, generator, (s_low, s_high), (r_low, r_high))


def _sample_boxes(
    n: int, height: int, width: int, generator: torch.Generator,
    scale: tuple[float, float], ratio: tuple[float, float],
) -> torch.Tensor:
    u = torch.rand((n, _ATTEMPTS, 4), generator=generator, device=generator.device, dtype=torch.float64).cpu()
    area = (height * width) * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_low + (log_high - log_low) * u[..., 1])
    box_w = torch.round(torch.sqrt(area * aspect)).to(torch.int64)
    box_h = torch.round(torch.sqrt(area / aspect)).to(torch.int64)
    fits = (box_w >= 1) & (box_w <= width) & (box_h >= 1) & (box_h <= height)
    # Offsets uniform over the admissible positions (meaningless, and unused, for boxes that do not fit).
    top = torch.floor(u[..., 2] * (height - box_h + 1).clamp(min=1)).to(torch.int64)
    left = torch.floor(u[..., 3] * (width - box_w + 1).clamp(min=1)).to(torch.int64)
    candidates = torch.stack([top, left, box_h, box_w], dim=-1)  # (n, 10, 4)
    first = fits.to(torch.int64).argmax(dim=1)  # index of the first fitting candidate (0 when none fits)
    chosen = candidates[torch.arange(n), first]  # (n, 4)

    # Fallback: central crop, aspect ratio of the image clamped to `ratio`.
    image_ratio = width / height
    if image_ratio < ratio[0]:
        fb_w, fb_h = width, min(height, max(1, round(width / ratio[0])))
    elif image_ratio > ratio[1]:
        fb_w, fb_h = min(width, max(1, round(height * ratio[1]))), height
    else:
        fb_w, fb_h = width, height
    fallback = torch.tensor([(height - fb_h) // 2, (width - fb_w) // 2, fb_h, fb_w], dtype=torch.int64)
    return torch.where(fits.any(dim=1)[:, None], chosen, fallback)


def random_resized_crop(
    images: torch.Tensor,
    *,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Crop a random box from each image and resize it back to ``H × W``.

    The boxes are those of :func:`sample_crop_boxes` (same draws from
    ``generator``): per image, area fraction uniform in ``scale``, aspect ratio
    (box width / box height) log-uniform in ``ratio``, up to 10 attempts, else
    the central crop with the ratio clamped to ``ratio``.  Box sizes and
    offsets are integers.  The box ``[left, left + w) × [top, top + h)`` is then
    stretched over the whole output with bilinear interpolation in one
    ``affine_grid`` / ``grid_sample`` call (``align_corners=False``): output
    pixel ``(i, j)`` samples the input at row ``top + (i + 0.5)·h/H - 0.5``,
    column ``left + (j + 0.5)·w/W - 0.5`` (pixel-index coordinates), clamped to
    the image (border padding), so a box covering the whole image returns the
    image.  Works on the stored (normalised) values directly.

    Args:
        images: floating-point tensor of shape ``(n, C, H, W)``, any device.
        generator: the ``torch.Generator`` that drives every random choice.
        scale: ``(low, high)`` range of the box area as a fraction of ``H·W``.
        ratio: ``(low, high)`` range of the box aspect ratio (width / height).

    Returns:
        A new tensor with the shape, dtype and device of ``images``.

    Raises:
        TypeError: if ``images`` is not a floating-point tensor, ``generator``
            is not a ``torch.Generator`` or ``scale`` / ``ratio`` is not a pair
            of numbers.
        ValueError: if ``images`` is not 4-D or ``scale`` / ``ratio`` does not
            satisfy ``0 < low <= high``.
    """
    name = "random_resized_crop"
    _check_images(name, images)
    _check_generator(name, generator)
    scale_range = _check_range(name, "scale", scale)
    ratio_range = _check_range(name, "ratio", ratio)
    n, _, h, w = images.shape
    if n == 0 or h == 0 or w == 0:
        return images.clone()
    boxes = _sample_boxes(n, h, w, generator, scale_range, ratio_range).to(torch.float64)
    top, left, box_h, box_w = boxes.unbind(dim=1)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = box_w / w
    theta[:, 0, 2] = (2 * left + box_w) / w - 1
    theta[:, 1, 1] = box_h / h
    theta[:, 1, 2] = (2 * top + box_h) / h - 1
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.contiguous()


# ---------------------------------------------------------------------------
# RandAugment operations on images in [0, 1].


def _warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour warp with per-image ``(m, 2, 3)`` pixel-space matrices (output point -> input point)."""
    m, _, h, w = images.shape
    # to_norm maps continuous pixel coordinates (origin at the top-left corner) to affine_grid's [-1, 1].
    to_norm = torch.tensor([[2.0 / w, 0.0, -1.0], [0.0, 2.0 / h, -1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # its inverse in closed form (no LU: batched LU of this torch build's MKL can return invalid
    # pivots after torch.set_num_threads, which the study runner calls; docs/performance.md)
    from_norm = torch.tensor([[w / 2.0, 0.0, w / 2.0], [0.0, h / 2.0, h / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    full = torch.zeros(m, 3, 3, dtype=torch.float64)
    full[:, :2] = matrices
    full[:, 2, 2] = 1.0
    theta = (to_norm @ full @ from_norm)[:, :2]
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _geometric(images: torch.Tensor, op: str, value: torch.Tensor) -> torch.Tensor:
    _, _, h, w = images.shape
    v = value.detach().to(device="cpu", dtype=torch.float64)
    mats = torch.zeros(v.shape[0], 2, 3, dtype=torch.float64)
    mats[:, 0, 0] = 1.0
    mats[:, 1, 1] = 1.0
    if op == "ShearX":  # input (x + v y, y)
        mats[:, 0, 1] = v
    elif op == "ShearY":  # input (x, y + v x)
        mats[:, 1, 0] = v
    elif op == "TranslateX":  # input (x - t, y)
        mats[:, 0, 2] = -v
    elif op == "TranslateY":  # input (x, y - t)
        mats[:, 1, 2] = -v
    else:  # Rotate about the centre c: input = R (p - c) + c, R = [[cos, -sin], [sin, cos]] (y downwards)
        rad = torch.deg2rad(v)
        cos, sin = torch.cos(rad), torch.sin(rad)
        cx, cy = w / 2.0, h / 2.0
        mats[:, 0, 0] = cos
        mats[:, 0, 1] = -sin
        mats[:, 1, 0] = sin
        mats[:, 1, 1] = cos
        mats[:, 0, 2] = cx - cos * cx + sin * cy
        mats[:, 1, 2] = cy - sin * cx - cos * cy
    return _warp(images, mats)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """``(m, 1, H, W)`` luma ``0.299 R + 0.587 G + 0.114 B`` (the image itself when C = 1)."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.unbind(dim=1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _smooth(images: torch.Tensor) -> torch.Tensor:
    """The 3x3 smoothing ``[[1,1,1],[1,5,1],[1,1,1]] / 13`` of every channel; border pixels unchanged."""
    m, c, h, w = images.shape
    out = images.clone()
    if h < 3 or w < 3:
        return out
    kernel = torch.ones(3, 3, dtype=images.dtype, device=images.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / 13.0).expand(c, 1, 3, 3)
    out[:, :, 1:-1, 1:-1] = F.conv2d(images, kernel, groups=c)
    return out


def _blend(images: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``degenerate + factor · (images - degenerate)`` clamped to ``[0, 1]`` (PIL ``ImageEnhance``)."""
    f = factor.view(-1, 1, 1, 1)
    return (degenerate + f * (images - degenerate)).clamp(0.0, 1.0)


def _to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """8-bit levels ``round(255 · clamp(x, 0, 1))`` (round half to even) as int64."""
    return torch.round(images.clamp(0.0, 1.0) * 255.0).to(torch.int64)


def _posterize(images: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    bits = (8 - torch.floor(value.to(torch.float64))).to(torch.int64).clamp(0, 8)
    mask = (255 << (8 - bits)) & 255  # keep the top `bits` bits
    levels = _to_uint8_levels(images) & mask.view(-1, 1, 1, 1)
    return levels.to(images.dtype) / 255.0


def _autocontrast(images: torch.Tensor) -> torch.Tensor:
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), high - low)
    out = ((images - low) / scale).clamp(0.0, 1.0)
    return torch.where(flat, images, out)


def _equalize(images: torch.Tensor) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per image and channel on the 8-bit levels, batched."""
    m, c, h, w = images.shape
    levels = _to_uint8_levels(images).reshape(m, c, h * w)
    hist = torch.zeros(m, c, 256, dtype=torch.int64, device=images.device)
    hist.scatter_add_(2, levels, torch.ones_like(levels))
    bins = torch.arange(256, device=images.device)
    last = torch.where(hist > 0, bins, torch.zeros_like(bins)).amax(dim=2, keepdim=True)  # last nonzero bin
    last_count = hist.gather(2, last)
    step = (h * w - last_count) // 255  # (m, c, 1)
    before = hist.cumsum(dim=2) - hist  # counts strictly below each bin
    lut = ((before + step // 2) // step.clamp(min=1)).clamp(max=255)
    out = lut.gather(2, levels).to(images.dtype).reshape(m, c, h, w) / 255.0
    return torch.where((step == 0).view(m, c, 1, 1), images, out)


def apply_op(images01: torch.Tensor, op: str, value: torch.Tensor) -> torch.Tensor:
    """Apply one RandAugment operation to every image, with a per-image value.

    ``value[k]`` is the (already signed) magnitude value for image ``k``:

    ======================================  ==================================================
    op                                      value and effect
    ======================================  ==================================================
    ``Identity``                            ignored; a copy
    ``ShearX`` / ``ShearY``                 shear factor ``v``; see the module docstring
    ``TranslateX`` / ``TranslateY``         shift in pixels (may be fractional); positive =
                                            right / down
    ``Rotate``                              degrees about the centre; positive =
                                            counter-clockwise
    ``Brightness``                          ``factor = 1 + v``; blend with black, i.e. ``x·factor``
    ``Color``                               ``factor = 1 + v``; blend with the grayscale image
    ``Contrast``                            ``factor = 1 + v``; blend with the mean of the
                                            grayscale image (one number per image)
    ``Sharpness``                           ``factor = 1 + v``; blend with the 3x3 smoothed image
                                            ``[[1,1,1],[1,5,1],[1,1,1]]/13`` (border unchanged)
    ``Posterize``                           ``v``: keep the top ``8 - floor(v)`` bits (``0 <= v
                                            <= 8``) of the 8-bit levels
    ``Solarize``                            threshold ``t``: pixels ``>= t`` become ``1 - x``
    ``AutoContrast``                        ignored; per image and channel, ``[min, max]`` ->
                                            ``[0, 1]`` (unchanged when ``max == min``)
    ``Equalize``                            ignored; PIL-style histogram equalisation per image
                                            and channel on the 8-bit levels
    ======================================  ==================================================

    Blends are ``degenerate + factor·(x - degenerate)`` clamped to ``[0, 1]``;
    grayscale is ``0.299 R + 0.587 G + 0.114 B`` (the image itself for one
    channel, so ``Color`` is then the identity).  8-bit levels are
    ``round(255·clamp(x, 0, 1))`` (half to even); ``Posterize`` and
    ``Equalize`` return ``level / 255`` (``Equalize`` leaves a channel
    unchanged, unquantised, when PIL would: ``step == 0``).  Geometric ops use
    nearest-neighbour sampling and fill with 0.

    Args:
        images01: floating-point tensor ``(n, C, H, W)`` with values in ``[0, 1]``
            (``C`` must be 1 or 3 for ``Color`` and ``Contrast``).
        op: one of :data:`OPS`.
        value: tensor of shape ``(n,)`` (any real dtype, any device).

    Returns:
        A new tensor with the shape, dtype and device of ``images01``.

    Raises:
        TypeError: if ``images01`` is not a floating-point tensor, ``op`` is
            not a str or ``value`` is not a tensor.
        ValueError: if ``images01`` is not 4-D, ``op`` is unknown, ``value`` does
            not have shape ``(n,)`` or is not finite, a ``Posterize`` value is
            outside ``[0, 8]`` or ``Color`` / ``Contrast`` get ``C`` not in {1, 3}.
    """
    name = "apply_op"
    _check_images(name, images01)
    if not isinstance(op, str):
        raise TypeError(f"{name}: op must be a str, got {type(op).__name__}")
    if op not in OPS:
        raise ValueError(f"{name}: op must be one of {', '.join(OPS)}; got {op!r}")
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: value must be a torch.Tensor, got {type(value).__name__}")
    n, c = images01.shape[:2]
    if tuple(value.shape) != (n,):
        raise ValueError(f"{name}: value must have shape ({n},), got {tuple(value.shape)}")
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{name}: value must be a real tensor, got {value.dtype}")
    if not bool(torch.isfinite(value.to(torch.float64)).all()):
        raise ValueError(f"{name}: value must be finite")
    if op == "Posterize" and n and not bool(((value >= 0) & (value <= 8)).all()):
        raise ValueError(f"{name}: Posterize values must be in [0, 8], got {value.tolist()}")
    if op in ("Color", "Contrast") and c not in (1, 3):
        raise ValueError(f"{name}: {op} needs images with 1 or 3 channels, got {c}")
    return _apply(images01, op, value)


def _apply(images: torch.Tensor, op: str, value: torch.Tensor) -> torch.Tensor:
    if images.shape[0] == 0 or op == "Identity":
        return images.clone()
    if op in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        return _geometric(images, op, value)
    v = value.to(device=images.device, dtype=images.dtype)
    if op == "Brightness":
        return _blend(images, torch.zeros_like(images), 1.0 + v)
    if op == "Color":
        return _blend(images, _grayscale(images).expand_as(images), 1.0 + v)
    if op == "Contrast":
        mean = _grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
        return _blend(images, mean.expand_as(images), 1.0 + v)
    if op == "Sharpness":
        return _blend(images, _smooth(images), 1.0 + v)
    if op == "Posterize":
        return _posterize(images, value.to(images.device))
    if op == "Solarize":
        return torch.where(images >= v.view(-1, 1, 1, 1), 1.0 - images, images)
    if op == "AutoContrast":
        return _autocontrast(images)
    return _equalize(images)


# ---------------------------------------------------------------------------
# RandAugment.


def _op_value(op: str, magnitude: int, bins: int, height: int, width: int) -> float:
    """``levels[magnitude]`` of ``op`` (before the sign), ``levels = linspace(0, max, bins)``."""
    if op == "Posterize":  # v = linspace(0, 4, bins)[magnitude]; pass int(v), computed exactly
        return float((4 * magnitude) // (bins - 1))
    if op == "Solarize":  # threshold = linspace(1, 0, bins)[magnitude]
        return 1.0 - magnitude / (bins - 1)
    if op not in _MAX_VALUE:
        return 0.0
    top = _MAX_VALUE[op]
    if op == "TranslateX":
        top *= width
    elif op == "TranslateY":
        top *= height
    return top * magnitude / (bins - 1)


def rand_augment(
    images: torch.Tensor,
    *,
    generator: torch.Generator,
    num_ops: int = 2,
    magnitude: int = 14,
    num_magnitude_bins: int = 31,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> torch.Tensor:
    """RandAugment (Cubuk et al. 2020) on a batch of images.

    With ``mean`` / ``std`` (the per-channel statistics the images were
    standardised with, ``stored = (pixel - mean) / std``) the images are first
    mapped to pixel space, ``clamp(x·std + mean, 0, 1)``, augmented, clamped to
    ``[0, 1]`` and standardised again; without them the images are taken to be
    in ``[0, 1]`` already (and are not clamped).

    Each of ``num_ops`` rounds draws, for every image independently, one
    operation uniformly from :data:`OPS` and a sign ``±1`` with probability 1/2
    each, and applies :func:`apply_op` with value ``sign · levels[magnitude]``
    (the sign only for the signed ops: shear, translate, rotate and the four
    enhance ops), where ``levels = linspace(0, max, num_magnitude_bins)``:

    * ShearX / ShearY: max 0.3 (shear factor);
    * TranslateX / TranslateY: max ``150/331 · W`` (resp. ``H``) pixels;
    * Rotate: max 30 degrees;
    * Brightness, Color, Contrast, Sharpness: max 0.9 (``factor = 1 + v``);
    * Posterize: ``v = linspace(0, 4, bins)[magnitude]``, keep ``8 - int(v)``
      bits (``int(v)`` computed exactly as ``4·magnitude // (bins - 1)``);
    * Solarize: threshold ``linspace(1, 0, bins)[magnitude]``;
    * Identity, AutoContrast, Equalize: no value.

    At ``magnitude = 0`` every op but Posterize (8 bits: quantisation to 8-bit
    levels), Solarize (threshold 1), AutoContrast and Equalize is the identity.

    All randomness comes from ``generator`` (on its device), per round in this
    order: the op indices as one ``torch.randint(0, 14, (n,))`` draw (indices
    into :data:`OPS`), then the signs as one ``torch.randint(0, 2, (n,))`` draw
    (1 = ``+``, 0 = ``-``; drawn for every image, used only by signed ops).  The
    work loops over the 14 ops, applying each to the subset of images that
    drew it in one batched call (geometric ops: one ``affine_grid`` /
    ``grid_sample`` call with per-image matrices).

    Args:
        images: floating-point tensor ``(n, C, H, W)`` with ``C`` 1 or 3.
        generator: the ``torch.Generator`` that drives every random choice.
        num_ops: number of rounds (``>= 0``; ``0`` returns a copy).
        magnitude: int in ``[0, num_magnitude_bins - 1]``.
        num_magnitude_bins: number of magnitude levels (``>= 2``).
        mean, std: per-channel statistics (``C`` floats each, ``std > 0``), both
            or neither.

    Returns:
        A new tensor with the shape, dtype and device of ``images``, in the
        same space as the input (stored values when ``mean`` / ``std`` are given).

    Raises:
        TypeError: if an argument has the wrong type.
        ValueError: if ``images`` is not 4-D or does not have 1 or 3 channels,
            ``num_ops < 0``, ``num_magnitude_bins < 2``, ``magnitude`` is out of
            range, only one of ``mean`` / ``std`` is given, they do not have
            ``C`` finite values, or some ``std <= 0``.
    """
    name = "rand_augment"
    _check_images(name, images)
    _check_generator(name, generator)
    _check_int(name, "num_ops", num_ops, 0)
    _check_int(name, "num_magnitude_bins", num_magnitude_bins, 2)
    _check_int(name, "magnitude", magnitude, 0, num_magnitude_bins - 1)
    n, c, h, w = images.shape
    if c not in (1, 3):
        raise ValueError(f"{name}: images must have 1 or 3 channels, got {c}")
    if (mean is None) != (std is None):
        raise ValueError(f"{name}: mean and std must be given together (got only {'mean' if std is None else 'std'})")
    stats = None
    if mean is not None:
        mean_t = _check_stats(name, "mean", mean, c)
        std_t = _check_stats(name, "std", std, c)
        if any(s <= 0 for s in std_t):
            raise ValueError(f"{name}: std must be > 0, got {std_t}")
        stats = (
            torch.tensor(mean_t, dtype=images.dtype, device=images.device).view(1, c, 1, 1),
            torch.tensor(std_t, dtype=images.dtype, device=images.device).view(1, c, 1, 1),
        )
    if n == 0 or num_ops == 0:
        return images.clone()

    x = (images * stats[1] + stats[0]).clamp(0.0, 1.0) if stats is not None else images.clone()
    levels = torch.tensor([_op_value(op, magnitude, num_magnitude_bins, h, w) for op in OPS], dtype=torch.float64)
    signed = torch.tensor([op in _SIGNED for op in OPS])
    for _ in range(num_ops):
        choice = torch.randint(0, len(OPS), (n,), generator=generator, device=generator.device).cpu()
        sign = torch.randint(0, 2, (n,), generator=generator, device=generator.device).cpu() * 2 - 1
        values = levels[choice] * torch.where(signed[choice], sign, 1).to(torch.float64)
        for k, op in enumerate(OPS):
            if op == "Identity":
                continue
            idx = (choice == k).nonzero().flatten()
            if idx.numel() == 0:
                continue
            idx_dev = idx.to(images.device)
            x[idx_dev] = _apply(x[idx_dev], op, values[idx])
    if stats is not None:
        x = (x.clamp(0.0, 1.0) - stats[0]) / stats[1]
    return x.contiguous()
