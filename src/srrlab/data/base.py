"""Core containers shared by every dataset loader.

:class:`ImageDataset` holds one split (images, labels, class names) and
:class:`Splits` pairs a train split with a test split.  :class:`DatasetError`
is the single exception type raised for missing, truncated or malformed data
files.  The helpers at the bottom, shared by the loaders, check files (each
error names the file and what was expected) and standardise both splits with
per-channel statistics of the train split.
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["DatasetError", "ImageDataset", "Splits"]


class DatasetError(ValueError):
    """A dataset could not be located or its files are missing or malformed.

    The message always names the offending file (or folder) and says what was
    expected, so that it can be shown to a user as is.
    """


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """One split of an image-classification dataset, fully in memory.

    Attributes:
        images: ``float32`` tensor of shape ``(n, C, H, W)`` with ``H == W``,
            already normalised (see ``mean`` / ``std``).
        labels: ``int64`` tensor of shape ``(n,)`` with values in
            ``[0, num_classes)``.
        classes: class names; ``classes[k]`` is the name of label ``k``.
        name: human-readable identifier such as ``"digits/train"``.
        mean: per-channel mean that was subtracted, or ``None`` if unknown.
            Pixels were first scaled to ``[0, 1]`` (digits: ``/ 16``,
            CIFAR: ``/ 255``) and then standardised, so
            ``images[:, c] = (scaled[:, c] - mean[c]) / std[c]``.
        std: per-channel standard deviation that was divided by, or ``None``.

    The class is a frozen dataclass with identity equality (``eq=False``):
    comparing tensors element-wise is ambiguous, so two datasets are only
    ``==`` when they are the same object.  The tensors themselves are not
    copied or write-protected; treat them as read-only.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        where = f"ImageDataset {self.name!r}"
        if not isinstance(self.images, torch.Tensor) or self.images.dim() != 4:
            raise ValueError(
                f"{where}: images must be a 4-D tensor (n, C, H, W), got {_describe(self.images)}"
            )
        if self.images.dtype != torch.float32:
            raise ValueError(f"{where}: images must be float32, got {self.images.dtype}")
        n, c, h, w = self.images.shape
        if h != w:
            raise ValueError(f"{where}: images must be square, got H={h}, W={w}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dim() != 1:
            raise ValueError(f"{where}: labels must be a 1-D tensor (n,), got {_describe(self.labels)}")
        if self.labels.dtype != torch.int64:
            raise ValueError(f"{where}: labels must be int64, got {self.labels.dtype}")
        if self.labels.shape[0] != n:
            raise ValueError(
                f"{where}: {n} images but {self.labels.shape[0]} labels; expected one label per image"
            )
        if not isinstance(self.classes, tuple) or not all(isinstance(s, str) for s in self.classes):
            raise ValueError(f"{where}: classes must be a tuple of str, got {self.classes!r}")
        if len(self.classes) == 0:
            raise ValueError(f"{where}: classes must not be empty")
        if n > 0:
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= len(self.classes):
                raise ValueError(
                    f"{where}: labels span [{lo}, {hi}] but there are {len(self.classes)} "
                    f"classes; expected labels in [0, {len(self.classes) - 1}]"
                )
        for field in ("mean", "std"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, tuple) or len(value) != c):
                raise ValueError(
                    f"{where}: {field} must be None or a tuple of {c} floats (one per channel), got {value!r}"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(classes)``."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Number of image channels ``C``."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length ``H`` (``== W``) of the square images."""
        return int(self.images.shape[2])

    def denormalize(self, images: torch.Tensor | None = None) -> torch.Tensor:
        """Undo the standardisation: return pixels on the ``[0, 1]`` scale.

        Args:
            images: tensor ``(..., C, H, W)`` in this dataset's normalised space;
                defaults to ``self.images``.

        Returns:
            A new tensor ``images * std[c] + mean[c]`` (per channel).

        Raises:
            ValueError: if this dataset carries no ``mean`` / ``std``.
        """
        if self.mean is None or self.std is None:
            raise ValueError(f"ImageDataset {self.name!r} records no mean/std to undo")
        x = self.images if images is None else images
        shape = (self.channels, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        return x * std + mean


@dataclass(frozen=True, eq=False)
class Splits:
    """A train split and a test split of the same dataset.

    Both splits share ``classes``, channel count and image size, and the test
    split is normalised with the train split's statistics.
    """

    train: ImageDataset
    test: ImageDataset

    def __post_init__(self) -> None:
        for field in ("train", "test"):
            if not isinstance(getattr(self, field), ImageDataset):
                raise TypeError(f"Splits.{field} must be an ImageDataset")
        a, b = self.train, self.test
        if a.classes != b.classes:
            raise ValueError(f"Splits: {a.name} and {b.name} have different classes")
        if a.images.shape[1:] != b.images.shape[1:]:
            raise ValueError(
                f"Splits: {a.name} images are {tuple(a.images.shape[1:])} but "
                f"{b.name} images are {tuple(b.images.shape[1:])}"
            )


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    return type(x).__name__


# ---------------------------------------------------------------------------
# Checks shared by the file-backed loaders; each error names the file and what was expected.

#: What reading a damaged gzip stream can raise (tar archives add ``tarfile.TarError``).
DECOMPRESS_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)


def existing_data_dir(data_dir: str | os.PathLike[str], expected: str) -> Path:
    """``data_dir`` as an expanded :class:`~pathlib.Path`, which must exist (else ``expected`` says what was)."""
    root = Path(os.fspath(data_dir)).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: data directory does not exist; {expected}")
    return root


def read_file(location: Any, display: str, missing: str | None = None) -> bytes:
    """The bytes of ``location`` (a path or package resource), shown as ``display`` in errors.

    With ``missing`` (what a complete dataset holds), a ``location`` that is not a file is an error too.
    """
    if missing is not None and not location.is_file():
        raise DatasetError(f"{display}: file not found; {missing}")
    try:
        return location.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{display}: cannot read the file ({exc})") from None


def check_label_range(labels: np.ndarray, num_classes: int, display: str, item: str = "image") -> None:
    """A :class:`DatasetError` naming ``display`` and the first label outside ``[0, num_classes)``, if any."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DatasetError(
            f"{display}: label {int(labels[i])} of {item} {i} is outside [0, {num_classes - 1}] "
            f"({num_classes} classes); {bad.size} label(s) out of range — the file is corrupt"
        )


# ---------------------------------------------------------------------------
# Normalisation (numpy side, used by the loaders).


def integer_channel_stats(pixels: np.ndarray, max_value: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and population std of integer pixels, on the ``[0, 1]`` scale.

    Uses one histogram per channel (values ``0..max_value``), so it needs no
    floating-point copy of the data and is exact up to float64 rounding
    (the float64 sums of ``counts * value`` involve at most 256 terms).

    Args:
        pixels: integer-valued array ``(n, C, H, W)`` (any numeric dtype) with
            values in ``[0, max_value]``; ``n`` must be positive.
        max_value: the largest representable pixel value (16 for digits, 255 for CIFAR).

    Returns:
        ``(mean, std)``, tuples of ``C`` floats for ``pixels / max_value``.
        A channel whose std is zero (constant channel) gets ``std = 1.0`` so
        that standardising only centres it.
    """
    if pixels.shape[0] == 0:
        raise ValueError("cannot compute normalisation statistics of an empty split")
    values = np.arange(max_value + 1, dtype=np.float64) / max_value
    means: list[float] = []
    stds: list[float] = []
    for c in range(pixels.shape[1]):
        channel = pixels[:, c].reshape(-1)
        if channel.dtype != np.uint8:
            channel = channel.astype(np.int64)
        if channel.min() < 0 or channel.max() > max_value:
            raise ValueError(f"pixel values must lie in [0, {max_value}]")
        # torch.bincount counts uint8 directly (numpy would first widen to intp).
        histogram = torch.bincount(torch.from_numpy(np.ascontiguousarray(channel)), minlength=max_value + 1)
        counts = histogram.numpy().astype(np.float64)
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        var = float((counts * (values - mean) ** 2).sum() / total)
        std = math.sqrt(var)
        means.append(mean)
        stds.append(std if std > 0.0 else 1.0)
    return tuple(means), tuple(stds)


def standardized_splits(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    max_value: int,
    classes: tuple[str, ...],
    names: tuple[str, str],
) -> Splits:
    """:class:`Splits` of integer ``(images (n, C, H, W), labels)`` pairs, standardised with the train split's stats.

    Pixels become the contiguous ``float32`` ``(pixels / max_value - mean[c]) / std[c]`` with ``(mean, std)``
    from :func:`integer_channel_stats` of the train images; ``names`` are the train and test split names.
    """
    mean, std = integer_channel_stats(train[0], max_value)
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(shape)
    std_t = torch.tensor(std, dtype=torch.float32).reshape(shape)

    def make(pixels: np.ndarray, labels: np.ndarray, name: str) -> ImageDataset:
        pixels = np.ascontiguousarray(pixels)
        if not pixels.flags.writeable:  # e.g. a view of an immutable bytes buffer
            pixels = pixels.copy()
        images = torch.from_numpy(pixels).to(torch.float32).div_(float(max_value)).sub_(mean_t).div_(std_t)
        y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        return ImageDataset(images=images, labels=y, classes=classes, name=name, mean=mean, std=std)

    return Splits(train=make(*train, names[0]), test=make(*test, names[1]))
