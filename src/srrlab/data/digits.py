"""scikit-learn's bundled 8×8 handwritten digits (no download needed).

1797 grey-scale images of shape ``1×8×8`` with integer values ``0..16`` in 10
classes.  :func:`load_digits_splits` makes a fixed stratified 80/20 split
(1437 train / 360 test) from a seed and standardises both splits with the
train split's statistics.
"""

from __future__ import annotations

import numpy as np

from .base import Splits, standardized_splits

__all__ = ["DIGITS_MAX_VALUE", "load_digits_splits", "raw_digits"]

#: Largest pixel value in the digits images.
DIGITS_MAX_VALUE = 16
_TEST_FRACTION = 0.2


def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return the raw digits as ``(images uint8 (1797, 1, 8, 8), labels int64 (1797,))``.

    Pixel values are the original integers ``0..16``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = np.asarray(bunch.data)
    images = data.reshape(-1, 1, 8, 8)
    if not np.array_equal(images, np.round(images)) or images.min() < 0 or images.max() > DIGITS_MAX_VALUE:
        raise ValueError(
            "sklearn.datasets.load_digits returned values outside the integers 0..16; "
            "the installed scikit-learn is not supported"
        )
    return images.astype(np.uint8), np.asarray(bunch.target, dtype=np.int64)


def split_indices(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified 80/20 split of ``range(len(labels))`` (sklearn ``train_test_split``).

    Returns ``(train_indices, test_indices)`` in the order chosen by sklearn.
    """
    from sklearn.model_selection import train_test_split

    indices = np.arange(labels.shape[0])
    train_idx, test_idx = train_test_split(
        indices, test_size=_TEST_FRACTION, stratify=labels, random_state=seed, shuffle=True
    )
    return np.asarray(train_idx), np.asarray(test_idx)


def load_digits_splits(seed: int = 0) -> Splits:
    """Load the digits with a stratified 80/20 split and train-split standardisation.

    Args:
        seed: ``random_state`` of the split; the same seed always gives the
            same split.  Must be in ``[0, 2**32 - 1]``.

    Returns:
        :class:`Splits` with 1437 train and 360 test images of shape
        ``(1, 8, 8)``.  Pixels are divided by 16 and then standardised with
        the train split's scalar mean and population std; classes are
        ``("0", ..., "9")``.
    """
    images, labels = raw_digits()
    train_idx, test_idx = split_indices(labels, seed)
    classes = tuple(str(k) for k in range(10))
    return standardized_splits((images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx]),
                               DIGITS_MAX_VALUE, classes, ("digits/train", "digits/test"))
