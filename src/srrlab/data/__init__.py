"""Datasets, augmentation and synthetic generators for srrlab.

Public API::

    DATASETS                      names accepted by load_dataset
    load_dataset(name, ...)       -> Splits(train=ImageDataset, test=ImageDataset)
    ImageDataset, Splits          in-memory containers
    DatasetError                  one clear error per missing / malformed data file
    augment(images, generator=)   batched random crop + horizontal flip
    random_resized_crop(...)      batched Inception-style random resized crop
    rand_augment(...)             batched RandAugment(N, M) (14 ops, tensor code)
    synthetic_tokens(...)         token batches from a mixture of subspaces
    synthetic_images(...)         the "synthetic" dataset together with its class bases

See ``docs/data.md`` for file layouts, formats and normalisation.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from .augment import augment
from .randaugment import OPS as RANDAUGMENT_OPS
from .randaugment import rand_augment, random_resized_crop
from .base import DatasetError, ImageDataset, Splits
from .cifar import _SPECS as _CIFAR_SPECS
from .cifar import load_cifar
from .digits import load_digits_splits
from .fashion import load_fashion_mnist
from .synthetic import SYNTHETIC_DEFAULTS, synthetic_images, synthetic_tokens
from ..names import DATASETS  # names accepted by load_dataset; there for the command line (no numpy)

__all__ = [
    "DATASETS",
    "DATA_ENV_VAR",
    "DatasetError",
    "ImageDataset",
    "RANDAUGMENT_OPS",
    "Splits",
    "augment",
    "load_dataset",
    "load_dataset_cached",
    "rand_augment",
    "random_resized_crop",
    "resolve_data_dir",
    "synthetic_images",
    "synthetic_tokens",
]


#: Environment variable read when ``data_dir`` is not given.
DATA_ENV_VAR = "SRRLAB_DATA"

_OPTIONS: dict[str, tuple[str, ...]] = {
    "digits": (),
    "cifar10": (),
    "cifar100": ("label_mode",),
    "synthetic": tuple(SYNTHETIC_DEFAULTS),
    "fashion-mnist": ("subset", "train_per_class"),
}

_CIFAR_FILES = {name: f"{spec.python.archive} (or {spec.python.folder}/)" for name, spec in _CIFAR_SPECS.items()}


def resolve_data_dir(data_dir: str | os.PathLike[str] | None, dataset: str = "cifar10") -> Path:
    """Return ``data_dir``, else ``$SRRLAB_DATA``, as a :class:`~pathlib.Path`.

    An empty ``SRRLAB_DATA`` counts as unset.

    Raises:
        DatasetError: if neither is given.
    """
    if data_dir is not None:
        if not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"data_dir must be a str or os.PathLike, got {type(data_dir).__name__}")
        return Path(os.fspath(data_dir)).expanduser()
    env = os.environ.get(DATA_ENV_VAR, "")
    if env:
        return Path(env).expanduser()
    where = _CIFAR_FILES.get(dataset, "the dataset files")
    raise DatasetError(
        f"{dataset}: no data directory given; pass --data-dir (data_dir=... in Python) or set the "
        f"{DATA_ENV_VAR} environment variable to the folder holding {where}"
    )


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    **options: Any,
) -> Splits:
    """Load a dataset by name as normalised in-memory train / test splits.

    Args:
        name: one of :data:`DATASETS`.
        data_dir: folder with the CIFAR files (or the archive / extracted
            folder itself), or with the Fashion-MNIST files; defaults to
            ``$SRRLAB_DATA``.  Ignored by ``digits`` (bundled with
            scikit-learn) and ``synthetic``.  Optional for ``fashion-mnist``:
            without one it reads Debian's copy or the embedded subset.
        seed: for ``digits``, the ``random_state`` of the stratified 80/20
            split; for ``synthetic``, the generation seed.  Ignored for CIFAR
            and Fashion-MNIST, whose train / test split is the official one.
        **options: dataset-specific options:

            * ``cifar100``: ``label_mode="fine"`` (100 classes, default) or ``"coarse"`` (20).
            * ``synthetic``: ``num_train=1000, num_test=200, num_classes=10,
              image_size=8, channels=1, subspace_dim=4, noise=0.1``.
            * ``fashion-mnist``: ``subset="auto"`` (default: the data directory,
              else Debian's copy, else the embedded 5,000/1,000 subset),
              ``"embedded"`` (always the subset) or ``"full"`` (never the subset);
              ``train_per_class=None`` (all) or k: only the first k training
              images of each class (file order), a smaller balanced training set.

    Returns:
        :class:`Splits` whose test split is normalised with the train split's statistics.

    Raises:
        ValueError: unknown ``name`` (the message lists :data:`DATASETS`).
        TypeError: an option the dataset does not accept (the message names it).
        DatasetError: CIFAR or Fashion-MNIST files missing or malformed, or no
            data directory (CIFAR; Fashion-MNIST with ``subset="full"``).
    """
    if not isinstance(name, str):
        raise TypeError(f"load_dataset: name must be a str, got {type(name).__name__}")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"load_dataset: seed must be an int, got {type(seed).__name__}")
    allowed = _OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepts = f"accepts {', '.join(allowed)}" if allowed else "accepts no options"
        raise TypeError(f"load_dataset({name!r}): unknown option(s) {', '.join(unknown)}; {name} {accepts}")

    if name == "digits":
        if not 0 <= seed < 2**32:
            raise ValueError(f"load_dataset('digits'): seed must be in [0, 2**32), got {seed}")
        return load_digits_splits(seed)
    if name == "synthetic":
        splits, _ = synthetic_images(seed=seed, **options)
        return splits
    if name == "fashion-mnist":
        given = data_dir is not None or bool(os.environ.get(DATA_ENV_VAR, ""))
        return load_fashion_mnist(resolve_data_dir(data_dir, name) if given else None, **options)
    return load_cifar(name, resolve_data_dir(data_dir, name), **options)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, data_dir: str | None, seed: int, options: str) -> Splits:
    return load_dataset(name, data_dir=data_dir, seed=seed, **json.loads(options))


def load_dataset_cached(name: str, *, data_dir: str | os.PathLike[str] | None = None, seed: int = 0,
                        **options: Any) -> Splits:
    """:func:`load_dataset`, memoised per process (the 4 most recent distinct calls).

    For callers that load the same data for many runs (a study's worker, ``measure_runs``). The
    returned tensors are shared between callers: do not modify them in place.
    """
    key_dir = None if data_dir is None else os.fspath(data_dir)
    return _load_cached(name, key_dir, seed, json.dumps(options, sort_keys=True))
