"""CIFAR-10 and CIFAR-100 readers (official python and binary formats).

No download is provided: point ``data_dir`` (or the ``SRRLAB_DATA``
environment variable) at a folder holding one of the official files, at the
archive itself, or at the extracted folder.  Archives are read member by member
with :mod:`tarfile` in a single streaming pass; nothing is extracted to disk.

Where a folder holds several layouts, they are tried in this order (the first
one present is used, and an incomplete one is an error, not a fall-through):

1. extracted python-format folder (``cifar-10-batches-py/``, ``cifar-100-python/``)
2. python-format archive (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``)
3. extracted binary-format folder (``cifar-10-batches-bin/``, ``cifar-100-binary/``)
4. binary-format archive (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``)

The python-format files are Python-2 pickles.  They are read with
:class:`RestrictedUnpickler`, which resolves only the three numpy globals such
files contain (array reconstruction, ``numpy.ndarray``, ``numpy.dtype``) and
refuses every other global *before* anything is called, so a tampered file
cannot run code.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

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

__all__ = [
    "CIFAR_MAX_VALUE",
    "CifarSource",
    "RestrictedUnpickler",
    "load_cifar",
    "load_restricted_pickle",
    "locate_cifar",
    "read_cifar_raw",
]

#: Largest pixel value (8-bit images).
CIFAR_MAX_VALUE = 255
_IMAGE_BYTES = 3 * 32 * 32
_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_HOW_TO_FIX = f"re-download the official archive from {_URL}"
_HOW_TO_FIX_SENTENCE = f"Re-download the official archive from {_URL}"

Format = Literal["python", "binary"]
_FORMATS: tuple[Format, ...] = ("python", "binary")


@dataclass(frozen=True)
class _Layout:
    """File names of one dataset in one format.

    ``marker`` is the class-names file (CIFAR-100 binary: the fine names); it also identifies a renamed folder.
    """

    folder: str
    archive: str
    train: tuple[str, ...]
    test: str
    marker: str


@dataclass(frozen=True)
class _Spec:
    title: str
    python: _Layout
    binary: _Layout


_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_SPECS: dict[str, _Spec] = {
    "cifar10": _Spec(
        title="CIFAR-10",
        python=_Layout("cifar-10-batches-py", "cifar-10-python.tar.gz", _BATCHES, "test_batch", "batches.meta"),
        binary=_Layout("cifar-10-batches-bin", "cifar-10-binary.tar.gz", tuple(f"{b}.bin" for b in _BATCHES),
                       "test_batch.bin", "batches.meta.txt"),
    ),
    "cifar100": _Spec(
        title="CIFAR-100",
        python=_Layout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "meta"),
        binary=_Layout("cifar-100-binary", "cifar-100-binary.tar.gz", ("train.bin",), "test.bin",
                       "fine_label_names.txt"),
    ),
}


# ---------------------------------------------------------------------------
# Locating the files.


@dataclass(frozen=True)
class CifarSource:
    """Where a CIFAR dataset was found.

    Attributes:
        dataset: ``"cifar10"`` or ``"cifar100"``.
        format: ``"python"`` (pickled batches) or ``"binary"`` (raw records).
        path: the extracted folder, or the ``.tar.gz`` archive.
        is_archive: whether ``path`` is an archive.
        folder: the top-level folder name inside the archive (equal to
            ``path.name`` for an extracted folder).
    """

    dataset: str
    format: Format
    path: Path
    is_archive: bool
    folder: str


def locate_cifar(dataset: str, data_dir: str | os.PathLike[str]) -> CifarSource:
    """Find the CIFAR files for ``dataset`` under ``data_dir``.

    ``data_dir`` may be a folder holding the official archive(s) or extracted
    folder(s), an archive, or an extracted folder.  See the module docstring
    for the preference order.

    Raises:
        DatasetError: if ``data_dir`` does not exist or holds none of the
            accepted layouts.
    """
    spec = _spec(dataset)
    root = existing_data_dir(
        data_dir,
        f"expected a folder holding {spec.python.archive} or {spec.python.folder}/ "
        f"(or the binary-format {spec.binary.archive} / {spec.binary.folder}/)",
    )
    if root.is_file():
        return _source_from_archive(dataset, root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a regular file or folder; expected a CIFAR archive or folder")

    # The folder itself is an extracted folder (by its official name).
    for fmt in _FORMATS:
        layout = _layout(spec, fmt)
        if root.name == layout.folder:
            return CifarSource(dataset, fmt, root, False, root.name)
    # The folder holds the official files, in preference order.
    for fmt in _FORMATS:
        layout = _layout(spec, fmt)
        if (root / layout.folder).is_dir():
            return CifarSource(dataset, fmt, root / layout.folder, False, layout.folder)
        if (root / layout.archive).is_file():
            return CifarSource(dataset, fmt, root / layout.archive, True, layout.folder)
    # A renamed extracted folder, recognised by its metadata file.
    for fmt in _FORMATS:
        if (root / _layout(spec, fmt).marker).is_file():
            return CifarSource(dataset, fmt, root, False, root.name)
    expected = f"{spec.python.folder}/, {spec.python.archive}, {spec.binary.folder}/, {spec.binary.archive}"
    raise DatasetError(
        f"{root}: no {spec.title} data found; expected one of {expected} in this folder "
        f"(or data_dir pointing at one of them). No download is provided; get the official archive from {_URL}"
    )


def _source_from_archive(dataset: str, archive: Path) -> CifarSource:
    """Identify the format of an archive from its top-level folder."""
    spec = _spec(dataset)
    wanted: dict[str, Format] = {spec.python.folder: "python", spec.binary.folder: "binary"}
    top: str | None = None
    try:
        with tarfile.open(archive, mode="r|*") as tf:
            for member in tf:
                name = _member_name(member.name)
                if name:
                    top = name.split("/", 1)[0]
                    break
    except _ARCHIVE_ERRORS as exc:
        raise DatasetError(f"{archive}: cannot read as a tar archive ({exc}); {_HOW_TO_FIX}") from None
    if top not in wanted:
        raise DatasetError(
            f"{archive}: the archive's top-level folder is {top!r}; expected "
            f"{spec.python.folder!r} (python format) or {spec.binary.folder!r} (binary format) "
            f"for {spec.title}"
        )
    return CifarSource(dataset, wanted[top], archive, True, top)


# ---------------------------------------------------------------------------
# Reading files (folder or archive) into bytes.

_ARCHIVE_ERRORS = (tarfile.TarError, *DECOMPRESS_ERRORS)


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/")


def _read_files(source: CifarSource, names: Iterable[str], parse: Callable[[str, bytes, str], None]) -> None:
    """Call ``parse(name, data, display_name)`` for each file in ``names``.

    For an archive all members are read in one streaming pass (in archive
    order); a missing file or member raises :class:`DatasetError`.
    """
    wanted = list(names)
    title = _spec(source.dataset).title
    complete = f"a complete {title} {source.format}-format {source.folder}/ holds {', '.join(wanted)}"
    if not source.is_archive:
        for name in wanted:
            path = source.path / name
            parse(name, read_file(path, str(path), f"{complete}. {_HOW_TO_FIX_SENTENCE}"), str(path))
        return

    prefix = source.folder + "/"
    remaining = {prefix + name: name for name in wanted}
    try:
        with tarfile.open(source.path, mode="r|*") as tf:
            for member in tf:
                key = _member_name(member.name)
                if key not in remaining:
                    continue
                display = f"{key} in {source.path}"
                if not member.isfile():
                    raise DatasetError(f"{display}: not a regular file; {complete}")
                handle = tf.extractfile(member)
                assert handle is not None  # regular file
                data = handle.read()
                parse(remaining.pop(key), data, display)
                if not remaining:
                    break
    except _ARCHIVE_ERRORS as exc:
        raise DatasetError(
            f"{source.path}: cannot read the archive ({exc}); it looks truncated or corrupt — {_HOW_TO_FIX}"
        ) from None
    if remaining:
        missing = ", ".join(sorted(remaining))
        raise DatasetError(
            f"{source.path}: archive has no member {missing}; {complete}. {_HOW_TO_FIX_SENTENCE}"
        )


# ---------------------------------------------------------------------------
# Python format (restricted unpickling).


def _numpy_reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2 (and the forward-compatibility alias in late numpy 1.x)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x without the alias
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return _reconstruct


class _RefusedGlobal(Exception):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that admits only the globals found in official CIFAR pickles.

    Allowed: ``numpy.core.multiarray._reconstruct`` (and its numpy-2 name
    ``numpy._core.multiarray._reconstruct``), ``numpy.ndarray`` and
    ``numpy.dtype``.  Any other global raises before it is imported or
    called.  Use :func:`load_restricted_pickle` rather than this class directly.
    """

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(module, name) from None


def load_restricted_pickle(data: bytes, display: str) -> Any:
    """Unpickle ``data`` (Python-2 pickle, ``encoding="bytes"``) with :class:`RestrictedUnpickler`.

    Raises:
        DatasetError: naming ``display`` if the pickle references a refused
            global or cannot be unpickled.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise DatasetError(
            f"{display}: refused to unpickle global {exc.qualname!r}; official CIFAR pickles "
            "reference only numpy's array reconstruction, numpy.ndarray and numpy.dtype. "
            "The file is not an official CIFAR file and was not loaded"
        ) from None
    except Exception as exc:  # any failure inside unpickling means a corrupt file
        raise DatasetError(
            f"{display}: cannot unpickle ({type(exc).__name__}: {exc}); expected a CIFAR "
            f"python-format pickle — the file looks truncated or corrupt, {_HOW_TO_FIX}"
        ) from None


def _as_str_keys(obj: Any, display: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DatasetError(f"{display}: unpickled a {type(obj).__name__}; expected a dict")
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out[key.decode("latin-1") if isinstance(key, bytes) else str(key)] = value
    return out


def _require_key(d: dict[str, Any], key: str, display: str) -> Any:
    if key not in d:
        found = ", ".join(repr(k.encode("latin-1")) for k in d) or "none"
        raise DatasetError(f"{display}: pickled dict has no key {key.encode()!r}; found keys: {found}")
    return d[key]


def _decode_names(value: Any, key: str, expected: int, display: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (bytes, str)) for v in value):
        raise DatasetError(
            f"{display}: {key.encode()!r} is {type(value).__name__}; expected a list of strings"
        )
    names = tuple(v.decode("utf-8") if isinstance(v, bytes) else v for v in value)
    if len(names) != expected:
        raise DatasetError(f"{display}: {key.encode()!r} has {len(names)} class names; expected {expected}")
    return names


def _parse_pickled_batch(data: bytes, display: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _as_str_keys(load_restricted_pickle(data, display), display)
    images = _require_key(batch, "data", display)
    labels = _require_key(batch, label_key, display)
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.ndim != 2
        or images.shape[1] != _IMAGE_BYTES
    ):
        got = (
            f"a {images.dtype} array of shape {images.shape}"
            if isinstance(images, np.ndarray)
            else f"a {type(images).__name__}"
        )
        raise DatasetError(
            f"{display}: b'data' is {got}; expected a uint8 array of shape (n, {_IMAGE_BYTES}) "
            "(n images of 3×32×32 bytes, channel-major) — the file looks truncated or corrupt"
        )
    if images.shape[0] == 0:
        raise DatasetError(f"{display}: b'data' holds no images; expected at least one")
    label_array = _as_label_array(labels, label_key, display)
    if label_array.shape[0] != images.shape[0]:
        raise DatasetError(
            f"{display}: {images.shape[0]} images but {label_array.shape[0]} entries in "
            f"{label_key.encode()!r}; expected one label per image"
        )
    return images.reshape(-1, 3, 32, 32), label_array


def _as_label_array(labels: Any, key: str, display: str) -> np.ndarray:
    try:
        arr = np.asarray(labels)
    except Exception:  # pragma: no cover - ragged or exotic objects
        arr = np.asarray([], dtype=object)
    if arr.ndim != 1 or (arr.size > 0 and not np.issubdtype(arr.dtype, np.integer)):
        raise DatasetError(
            f"{display}: {key.encode()!r} is {type(labels).__name__} of dtype {arr.dtype}, "
            f"shape {arr.shape}; expected a flat list of integer labels"
        )
    return arr.astype(np.int64)


# ---------------------------------------------------------------------------
# Binary format.


def _parse_binary_batch(
    data: bytes, display: str, label_bytes: int, label_index: int, label_desc: str
) -> tuple[np.ndarray, np.ndarray]:
    record = label_bytes + _IMAGE_BYTES
    what = f"{record}-byte record ({label_desc} + 3×32×32 image)"
    if len(data) == 0:
        raise DatasetError(f"{display}: the file is empty; expected {what}s — {_HOW_TO_FIX}")
    if len(data) % record:
        raise DatasetError(
            f"{display}: size {len(data)} is not a multiple of the {what}; "
            f"the file looks truncated — {_HOW_TO_FIX}"
        )
    rows = np.frombuffer(data, dtype=np.uint8).reshape(-1, record)
    labels = rows[:, label_index].astype(np.int64)
    images = np.ascontiguousarray(rows[:, label_bytes:]).reshape(-1, 3, 32, 32)
    return images, labels


def _parse_names_txt(data: bytes, expected: int, display: str) -> tuple[str, ...]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{display}: not UTF-8 text ({exc}); expected one class name per line") from None
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != expected:
        raise DatasetError(f"{display}: {len(names)} class names; expected {expected}, one per line")
    return names


# ---------------------------------------------------------------------------
# Assembling a dataset.


def read_cifar_raw(
    source: CifarSource, label_mode: str = "fine"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Read a located CIFAR dataset without normalising it.

    Args:
        source: from :func:`locate_cifar`.
        label_mode: CIFAR-100 only: ``"fine"`` (100 classes) or ``"coarse"`` (20).

    Returns:
        ``(train_images, train_labels, test_images, test_labels, classes)``:
        images are ``uint8`` arrays ``(n, 3, 32, 32)`` (official order: train
        batches 1..5 concatenated), labels ``int64`` arrays ``(n,)``.

    Raises:
        DatasetError: for a missing, truncated or malformed file, a refused
            pickle global, or a label outside ``[0, num_classes)``.
    """
    _check_label_mode(source.dataset, label_mode)
    layout = _layout(_spec(source.dataset), source.format)
    fine = label_mode == "fine"
    if source.dataset == "cifar10":
        num_classes, label_key, label_bytes, label_index, label_desc = 10, "labels", 1, 0, "1 label byte"
    else:
        num_classes, label_key = (100, "fine_labels") if fine else (20, "coarse_labels")
        label_bytes, label_index, label_desc = 2, int(fine), "coarse label byte + fine label byte"
    names_key = label_key[:-1] + "_names"  # label_names, fine_label_names or coarse_label_names
    meta_name = layout.marker if fine or source.format == "python" else "coarse_label_names.txt"
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    classes: list[tuple[str, ...]] = []

    def parse(name: str, data: bytes, display: str) -> None:
        if name == meta_name and source.format == "python":
            meta = _as_str_keys(load_restricted_pickle(data, display), display)
            classes.append(_decode_names(_require_key(meta, names_key, display), names_key, num_classes, display))
        elif name == meta_name:
            classes.append(_parse_names_txt(data, num_classes, display))
        else:
            if source.format == "python":
                images, labels = _parse_pickled_batch(data, display, label_key)
            else:
                images, labels = _parse_binary_batch(data, display, label_bytes, label_index, label_desc)
            check_label_range(labels, num_classes, display)
            batches[name] = (images, labels)

    _read_files(source, [*layout.train, layout.test, meta_name], parse)

    train = [batches[name] for name in layout.train]
    train_images = (
        np.concatenate([b[0] for b in train]) if len(train) > 1 else np.ascontiguousarray(train[0][0])
    )
    train_labels = np.concatenate([b[1] for b in train])
    test_images, test_labels = batches[layout.test]
    return train_images, train_labels, np.ascontiguousarray(test_images), test_labels, classes[0]


def load_cifar(dataset: str, data_dir: str | os.PathLike[str], *, label_mode: str = "fine") -> Splits:
    """Load CIFAR-10 or CIFAR-100 from ``data_dir`` and standardise it.

    Pixels are scaled to ``[0, 1]`` (``/ 255``) and standardised per channel
    with the train split's mean and population std; the same statistics are
    applied to the test split.  The split is the official one.

    Args:
        dataset: ``"cifar10"`` or ``"cifar100"``.
        data_dir: see :func:`locate_cifar`.
        label_mode: CIFAR-100 only: ``"fine"`` (100 classes, default) or
            ``"coarse"`` (20 superclasses).

    Returns:
        :class:`Splits` with images ``(n, 3, 32, 32)``; names ``"cifar10/train"``,
        ``"cifar100/test"``, or ``"cifar100-coarse/train"`` for coarse labels.
    """
    _check_label_mode(dataset, label_mode)
    source = locate_cifar(dataset, data_dir)
    train_x, train_y, test_x, test_y, classes = read_cifar_raw(source, label_mode)
    stem = dataset if label_mode == "fine" else f"{dataset}-coarse"
    names = (f"{stem}/train", f"{stem}/test")
    return standardized_splits((train_x, train_y), (test_x, test_y), CIFAR_MAX_VALUE, classes, names)


def _check_label_mode(dataset: str, label_mode: str) -> None:
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if dataset == "cifar10" and label_mode != "fine":
        raise ValueError("label_mode='coarse' applies to cifar100 only (CIFAR-10 has one label set)")


def _spec(dataset: str) -> _Spec:
    try:
        return _SPECS[dataset]
    except KeyError:
        raise ValueError(f"unknown CIFAR dataset {dataset!r}; expected 'cifar10' or 'cifar100'") from None


def _layout(spec: _Spec, fmt: str) -> _Layout:
    return spec.python if fmt == "python" else spec.binary
