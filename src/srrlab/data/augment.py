"""Batched, reproducible data augmentation: random crop with zero padding and horizontal flip."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .randaugment import _check_generator, _check_images

__all__ = ["augment"]


def augment(
    images: torch.Tensor,
    *,
    generator: torch.Generator,
    crop_padding: int = 4,
    flip: bool = True,
) -> torch.Tensor:
    """Randomly crop (with zero padding) and horizontally flip a batch of images.

    For each image independently:

    * **crop** (when ``crop_padding = p > 0``): pad the image with ``p`` zero
      pixels on every side and take the ``H × W`` window whose top-left corner
      is at ``(dy, dx)``, with ``dy`` and ``dx`` uniform integers in ``[0, 2p]``;
      ``(p, p)`` returns the original image.  Padding is applied to the stored
      (already normalised) values, so padded pixels are ``0`` in that space.
    * **flip** (when ``flip`` is true): with probability 1/2, mirror the
      result left-right.

    All randomness comes from ``generator``, in this order: the offsets as one
    ``torch.randint(0, 2p + 1, (n, 2))`` draw (column 0 is ``dy``, column 1 is
    ``dx``; skipped when ``p == 0``), then the flip decisions as one
    ``torch.randint(0, 2, (n,))`` draw (1 = flip; skipped when ``flip`` is false).
    The same generator state therefore gives the same output.  The work is two
    ``gather`` calls on the whole batch (no Python loop over images), on the
    images' device; random numbers are drawn on the generator's device.

    Args:
        images: tensor of shape ``(n, C, H, W)``, any dtype and device.
        generator: the ``torch.Generator`` that drives every random choice.
        crop_padding: ``p >= 0``; ``0`` disables cropping.
        flip: whether to apply random horizontal flips.

    Returns:
        A new tensor with the shape, dtype and device of ``images`` (never a
        view of the input, even when both augmentations are disabled).

    Raises:
        TypeError: if ``images`` is not a tensor, ``generator`` is not a
            ``torch.Generator``, ``crop_padding`` is not an int or ``flip`` is
            not a bool.
        ValueError: if ``images`` is not 4-D or ``crop_padding`` is negative.
    """
    _check_images("augment", images, floating=False)
    _check_generator("augment", generator)
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int):
        raise TypeError(f"augment: crop_padding must be an int, got {type(crop_padding).__name__}")
    if crop_padding < 0:
        raise ValueError(f"augment: crop_padding must be >= 0, got {crop_padding}")
    if not isinstance(flip, bool):
        raise TypeError(f"augment: flip must be a bool, got {type(flip).__name__}")

    n, c, h, w = images.shape
    if n == 0 or (crop_padding == 0 and not flip):
        return images.clone()

    device = images.device
    p = crop_padding
    if p > 0:
        offsets = torch.randint(0, 2 * p + 1, (n, 2), generator=generator, device=generator.device).to(device)
        dy, dx = offsets[:, 0], offsets[:, 1]
        source = F.pad(images, (p, p, p, p))
    else:
        dy = dx = torch.zeros(n, dtype=torch.int64, device=device)
        source = images
    rows = dy[:, None] + torch.arange(h, device=device)  # (n, H) rows of `source`
    cols = dx[:, None] + torch.arange(w, device=device)  # (n, W) columns of `source`
    if flip:
        flips = torch.randint(0, 2, (n,), generator=generator, device=generator.device).to(device).bool()
        cols = torch.where(flips[:, None], cols.flip(1), cols)

    width = source.shape[3]
    out = source.gather(2, rows[:, None, :, None].expand(n, c, h, width))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    return out.contiguous()
