"""Fashion-MNIST (Zalando Research): grey-scale 28×28 images of clothing in 10 balanced classes.

The official release is four files in the IDX format (60,000 train / 10,000 test images):

* ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``
* ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``

each either gzip-compressed (``.gz``, as distributed) or raw.  Compression is detected from the
gzip magic bytes, not from the file name.

Where the files are looked for (:func:`locate_fashion_mnist`), in order:

1. the data directory (``data_dir`` / ``--data-dir``, else ``$SRRLAB_DATA``): the files directly
   in it or in a ``fashion-mnist/`` subfolder.  A data directory without them is an error, not a
   fall-through;
2. :data:`DEBIAN_DIR`, where Debian's ``dataset-fashion-mnist`` package installs them
   (``make data``);
3. the embedded subset shipped with srrlab (5,000 train / 1,000 test images, 500 / 100 per class,
   the same IDX files; see ``fashion_mnist/README.md``), with a one-time
   :class:`EmbeddedSubsetWarning` per process.

``subset="embedded"`` always uses the embedded subset (and warns nothing); ``subset="full"``
never does and raises :class:`~srrlab.data.base.DatasetError` when no full copy is found.
"""

from __future__ import annotations

import gzip
import os
import struct
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from .base import (
    DECOMPRESS_ERRORS,
    DatasetError,
    Splits,
    check_label_range,
    existing_data_dir,
    read_file,
    standardized_splits,
)

if TYPE_CHECKING:  # importlib.resources.abc is Python >= 3.11
    from importlib.resources.abc import Traversable

__all__ = [
    "DEBIAN_DIR",
    "EMBEDDED_COUNTS",
    "EmbeddedSubsetWarning",
    "FASHION_CLASSES",
    "FASHION_FILES",
    "FASHION_MAX_VALUE",
    "FASHION_SUBSETS",
    "FashionSource",
    "embedded_dir",
    "first_per_class",
    "load_fashion_mnist",
    "locate_fashion_mnist",
    "parse_idx",
    "read_fashion_raw",
    "read_idx_file",
]

#: The ten official class names; ``FASHION_CLASSES[k]`` is the name of label ``k``.
FASHION_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: Largest pixel value (8-bit images).
FASHION_MAX_VALUE = 255
_SIDE = 28

#: Folder of Debian's ``dataset-fashion-mnist`` package.  Read at call time, so tests may
#: monkeypatch it.
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Subfolder of a data directory that may hold the files.
FASHION_SUBFOLDER = "fashion-mnist"
#: Values of the ``subset`` option.
FASHION_SUBSETS: tuple[str, ...] = ("auto", "embedded", "full")
#: (train, test) sizes of the embedded subset.
EMBEDDED_COUNTS = (5000, 1000)
_EMBEDDED_PACKAGE_DIR = "fashion_mnist"

#: The official file names (without ``.gz``), by role.
FASHION_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_ALL_NAMES = tuple(n for stem in FASHION_FILES.values() for n in (stem + ".gz", stem))
_EXPECTED = ", ".join(FASHION_FILES.values()) + " (each optionally .gz)"
_GET_FULL = (
    "run `make data` (installs Debian's dataset-fashion-mnist package into "
    "/usr/share/datasets/fashion-mnist), or download the four files from "
    "https://github.com/zalandoresearch/fashion-mnist and pass --data-dir (data_dir=...) or set SRRLAB_DATA"
)

_GZIP_MAGIC = b"\x1f\x8b"
_UNSIGNED_BYTE = 0x08
_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32",
              0x0E: "float64"}
#: IDX magic numbers: unsigned bytes, 3 dimensions (images) / 1 dimension (labels).
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

Kind = Literal["images", "labels"]


class EmbeddedSubsetWarning(UserWarning):
    """Emitted once per process when ``subset="auto"`` falls back to the embedded subset."""


_embedded_notice_shown = False


# ---------------------------------------------------------------------------
# The IDX format.


def parse_idx(data: bytes, display: str, kind: Kind) -> np.ndarray:
    """Parse one uncompressed IDX file of Fashion-MNIST images or labels.

    Args:
        data: the file's bytes (already decompressed).
        display: the file's name for error messages.
        kind: ``"images"`` (magic ``0x00000803``: unsigned bytes, dimensions ``n, 28, 28``) or
            ``"labels"`` (magic ``0x00000801``: unsigned bytes, dimension ``n``; values 0..9).

    Returns:
        A read-only ``uint8`` view of ``data``: shape ``(n, 28, 28)`` or ``(n,)``.

    Raises:
        DatasetError: naming ``display`` and what was expected, for a wrong magic number, type code
            or number of dimensions, an image size other than 28×28, a payload whose length is not
            exactly the product of the header's dimensions, no items, or a label above 9.
    """
    ndim = 3 if kind == "images" else 1
    expected_magic = IDX_IMAGES_MAGIC if kind == "images" else IDX_LABELS_MAGIC
    what = f"an IDX {kind} file (magic 0x{expected_magic:08X}: unsigned bytes, {ndim} dimension{'s' * (ndim > 1)})"
    if len(data) < 4:
        raise DatasetError(f"{display}: {len(data)} bytes, too short for an IDX header; expected {what}")
    magic = struct.unpack(">I", data[:4])[0]
    if data[:2] != b"\0\0":
        raise DatasetError(f"{display}: magic number 0x{magic:08X} is not an IDX header; expected {what}")
    type_code, dims = data[2], data[3]
    if type_code != _UNSIGNED_BYTE:
        type_name = _IDX_TYPES.get(type_code, "unknown")
        raise DatasetError(
            f"{display}: IDX data type code 0x{type_code:02X} ({type_name}, magic 0x{magic:08X}); "
            f"expected 0x08 (unsigned byte) — {what}"
        )
    if dims != ndim:
        raise DatasetError(
            f"{display}: IDX header declares {dims} dimension(s) (magic 0x{magic:08X}); expected {what}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{display}: the file ends inside the {header}-byte IDX header ({len(data)} bytes); "
            f"expected {what} — the file is truncated"
        )
    shape = struct.unpack(">" + "I" * ndim, data[4:header])
    n = shape[0]
    if kind == "images" and shape[1:] != (_SIDE, _SIDE):
        raise DatasetError(
            f"{display}: images are {shape[1]}×{shape[2]}; expected {_SIDE}×{_SIDE} (Fashion-MNIST)"
        )
    if n == 0:
        raise DatasetError(f"{display}: the header declares 0 {kind}; expected at least one")
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(data) - header
    if found != expected:
        problem = "the file is truncated" if found < expected else f"{found - expected} bytes too many"
        items = f"{n} images of {_SIDE}×{_SIDE} = {expected} bytes" if kind == "images" else f"{n} labels"
        raise DatasetError(f"{display}: expected {items} after the header, found {found} bytes — {problem}")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    if kind == "labels":
        check_label_range(array, len(FASHION_CLASSES), display, item="item")
    return array


def _read_bytes(location: Path | Traversable, display: str, missing: str | None = None) -> bytes:
    """The file's bytes, gunzipped when they start with the gzip magic (``missing``: see :func:`read_file`)."""
    data = read_file(location, display, missing)
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except DECOMPRESS_ERRORS as exc:
            raise DatasetError(
                f"{display}: gzip data is truncated or corrupt ({exc}); expected a gzip-compressed IDX file"
            ) from None
    return data


def read_idx_file(path: str | os.PathLike[str], kind: Kind) -> np.ndarray:
    """Read one IDX file (gzip or raw) of Fashion-MNIST ``kind`` (see :func:`parse_idx`)."""
    path = Path(os.fspath(path))
    return parse_idx(_read_bytes(path, str(path), f"expected an IDX {kind} file"), str(path), kind)


# ---------------------------------------------------------------------------
# Locating the files.


@dataclass(frozen=True)
class FashionSource:
    """Where Fashion-MNIST was found.

    Attributes:
        folder: the folder holding the four files (a :class:`~pathlib.Path`, or the package
            resource folder of the embedded subset).
        embedded: whether this is the embedded subset.
    """

    folder: Path | Traversable
    embedded: bool

    @property
    def label(self) -> str:
        """What :attr:`ImageDataset.name` shows in parentheses: ``embedded subset`` or the folder."""
        return "embedded subset" if self.embedded else str(self.folder)


def embedded_dir() -> Traversable:
    """The package folder of the embedded subset (``srrlab/data/fashion_mnist``)."""
    return resources.files(__package__).joinpath(_EMBEDDED_PACKAGE_DIR)


def _holds_fashion(folder: Path) -> bool:
    return folder.is_dir() and any((folder / name).is_file() for name in _ALL_NAMES)


def _check_subset(subset: object) -> None:
    if subset not in FASHION_SUBSETS:
        raise ValueError(
            f"fashion-mnist: subset must be one of {', '.join(repr(s) for s in FASHION_SUBSETS)}, got {subset!r}"
        )


def _notice_embedded() -> None:
    global _embedded_notice_shown
    if _embedded_notice_shown:
        return
    _embedded_notice_shown = True
    warnings.warn(
        f"fashion-mnist: no full copy found (no data directory given and nothing in {DEBIAN_DIR}); "
        f"using the embedded subset of {EMBEDDED_COUNTS[0]:,} train / {EMBEDDED_COUNTS[1]:,} test images "
        f"(500 / 100 per class). For the full 60,000 / 10,000: {_GET_FULL}. "
        "Pass subset='embedded' (--data-option subset=embedded) to choose the subset without this message.",
        EmbeddedSubsetWarning,
        stacklevel=5,  # the caller of load_dataset
    )


def locate_fashion_mnist(
    data_dir: str | os.PathLike[str] | None = None, subset: str = "auto"
) -> FashionSource:
    """Find Fashion-MNIST (see the module docstring for the search order).

    Args:
        data_dir: folder holding the four files, or a folder with a ``fashion-mnist/``
            subfolder holding them; ``None``: look in :data:`DEBIAN_DIR`, then the embedded subset.
        subset: ``"auto"``, ``"embedded"`` (always the embedded subset; ``data_dir`` is ignored)
            or ``"full"`` (never the embedded subset).

    Raises:
        DatasetError: ``data_dir`` does not exist or holds no Fashion-MNIST file, or
            ``subset="full"`` and no full copy was found.
        ValueError: an unknown ``subset``.
    """
    _check_subset(subset)
    if subset == "embedded":
        return FashionSource(embedded_dir(), True)
    if data_dir is not None:
        where = f"expected the Fashion-MNIST files {_EXPECTED} in this folder or in its {FASHION_SUBFOLDER}/ subfolder"
        root = existing_data_dir(data_dir, where)
        if not root.is_dir():
            raise DatasetError(f"{root}: not a folder; {where}")
        for folder in (root, root / FASHION_SUBFOLDER):
            if _holds_fashion(folder):
                return FashionSource(folder, False)
        raise DatasetError(
            f"{root}: no Fashion-MNIST files found; {where}. Put them there, or give no data directory "
            f"(drop --data-dir, unset SRRLAB_DATA) to use {DEBIAN_DIR} or the embedded subset"
        )
    debian = Path(DEBIAN_DIR)
    if _holds_fashion(debian):
        return FashionSource(debian, False)
    if subset == "full":
        raise DatasetError(
            f"fashion-mnist (subset='full'): no full copy found — no data directory given "
            f"(--data-dir / data_dir=... / SRRLAB_DATA) and no Fashion-MNIST files in {debian}; {_GET_FULL}"
        )
    _notice_embedded()
    return FashionSource(embedded_dir(), True)


# ---------------------------------------------------------------------------
# Reading and assembling.


def _file(source: FashionSource, stem: str) -> tuple[Path | Traversable, str]:
    for name in (stem + ".gz", stem):
        location = source.folder.joinpath(name)
        if location.is_file():
            return location, str(location)
    missing = source.folder.joinpath(stem + ".gz")
    raise DatasetError(
        f"{missing}: file not found (nor {stem} without .gz); a complete Fashion-MNIST folder holds {_EXPECTED}"
    )


def read_fashion_raw(source: FashionSource) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read a located Fashion-MNIST without normalising it.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``: images ``uint8``
        ``(n, 1, 28, 28)``, labels ``int64`` ``(n,)``, in file order (the official split).

    Raises:
        DatasetError: a missing or malformed file, or image and label counts that differ.
    """
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        images_at, images_display = _file(source, FASHION_FILES[f"{split}_images"])
        labels_at, labels_display = _file(source, FASHION_FILES[f"{split}_labels"])
        images = parse_idx(_read_bytes(images_at, images_display), images_display, "images")
        labels = parse_idx(_read_bytes(labels_at, labels_display), labels_display, "labels")
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{labels_display}: {labels.shape[0]} labels but {images_display} holds "
                f"{images.shape[0]} images; expected one label per image"
            )
        # Writable copies: the parsed arrays are read-only views of the file's bytes.
        out += [images.reshape(-1, 1, _SIDE, _SIDE).copy(), labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first ``per_class`` images of every class, in file order (sorted).

    Raises:
        ValueError: ``per_class`` is not a positive integer, or a class has fewer images.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"train_per_class must be a positive integer or None (all), got {per_class!r}")
    chosen = []
    for k in range(len(FASHION_CLASSES)):
        idx = np.flatnonzero(labels == k)
        if len(idx) < per_class:
            raise ValueError(f"train_per_class={per_class}: class {k} ({FASHION_CLASSES[k]}) has only {len(idx)} "
                             f"training images here; use at most {len(idx)} or the full set (make data)")
        chosen.append(idx[:per_class])
    return np.sort(np.concatenate(chosen))


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None, *, subset: str = "auto",
                       train_per_class: int | None = None) -> Splits:
    """Load Fashion-MNIST (official train / test split) and standardise it.

    Pixels are scaled to ``[0, 1]`` (``/ 255``) and standardised with the train split's mean and
    population std (one channel); the test split gets the same transform.

    Args:
        data_dir: see :func:`locate_fashion_mnist`.
        subset: ``"auto"`` (default), ``"embedded"`` or ``"full"``.
        train_per_class: keep only the first ``k`` training images of each class (file order) —
            a smaller, balanced training set for studies that train many models to a low loss;
            the statistics are those of the kept images; the test split is unchanged. ``None``: all.

    Returns:
        :class:`Splits` with images ``(n, 1, 28, 28)`` and :data:`FASHION_CLASSES`; the splits are
        named ``"fashion-mnist/train (<folder>)"`` or ``"fashion-mnist/train (embedded subset)"``.
    """
    source = locate_fashion_mnist(data_dir, subset)
    train_x, train_y, test_x, test_y = read_fashion_raw(source)
    if train_per_class is not None:
        keep = first_per_class(train_y, train_per_class)
        train_x, train_y = train_x[keep], train_y[keep]
    kept = f", first {train_per_class} per class" if train_per_class else ""
    names = (f"fashion-mnist/train ({source.label}{kept})", f"fashion-mnist/test ({source.label})")
    return standardized_splits((train_x, train_y), (test_x, test_y), FASHION_MAX_VALUE, FASHION_CLASSES, names)
