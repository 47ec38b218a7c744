"""Build srrlab's embedded Fashion-MNIST subset from the official files.

Usage::

    .venv/bin/python tools/make_fashion_subset.py [SOURCE_FOLDER] [--out FOLDER]

``SOURCE_FOLDER`` holds the four official IDX files (gzip or raw); the default is
``/usr/share/datasets/fashion-mnist``, where Debian's ``dataset-fashion-mnist`` package (``make
data``) installs them.  ``--out`` defaults to ``src/srrlab/data/fashion_mnist``.

How the subset is chosen (deterministic):

* one generator, ``numpy.random.default_rng(0)``, used for the train split first, then the test split;
* for each class ``k = 0, ..., 9`` in turn, the official indices of class ``k`` in that split, in
  increasing order (``numpy.flatnonzero(labels == k)``), and
  ``rng.choice(indices, size=count, replace=False)`` with ``count = 500`` (train) or ``100`` (test);
* the chosen indices of the ten classes together, sorted increasingly, so that the subset keeps
  the official file order.

Written into ``--out``: the four files under their official names (``train-images-idx3-ubyte.gz``,
``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``) in the
same IDX format, gzip level 9 with ``mtime=0`` and no file name in the gzip header, so that
rebuilding from the same source gives identical bytes (with the same zlib); and the chosen
0-based official indices, one per line, in ``train-indices.txt`` and ``t10k-indices.txt``.  The
``LICENSE`` and ``README.md`` next to them are written by hand and left alone.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import struct
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from srrlab.data.fashion import DEBIAN_DIR, FASHION_FILES, FashionSource, read_fashion_raw  # noqa: E402

SEED = 0
PER_CLASS = {"train": 500, "t10k": 100}
DEFAULT_OUT = REPO / "src" / "srrlab" / "data" / "fashion_mnist"


def choose(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of each class (classes in order 0..9), all sorted increasingly."""
    picked = [rng.choice(np.flatnonzero(labels == k), size=per_class, replace=False) for k in range(10)]
    return np.sort(np.concatenate(picked))


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file of ``array`` (magic ``0x000008`` + number of dimensions)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.tobytes()


def gzip_bytes(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as f:
        f.write(data)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", default=str(DEBIAN_DIR), help=f"default {DEBIAN_DIR}")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="default src/srrlab/data/fashion_mnist")
    args = parser.parse_args(argv)

    train_x, train_y, test_x, test_y = read_fashion_raw(FashionSource(Path(args.source), False))
    if (len(train_y), len(test_y)) != (60000, 10000):
        parser.error(f"{args.source}: {len(train_y)} / {len(test_y)} images; expected the official 60000 / 10000")
    rng = np.random.default_rng(SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, prefix, images, labels in (("train", "train", train_x, train_y), ("test", "t10k", test_x, test_y)):
        chosen = choose(labels, PER_CLASS[prefix], rng)
        files = {FASHION_FILES[f"{split}_images"]: images[chosen, 0], FASHION_FILES[f"{split}_labels"]: labels[chosen]}
        for stem, array in files.items():
            data = gzip_bytes(idx_bytes(array))
            (out / f"{stem}.gz").write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()[:16]
            print(f"{out / (stem + '.gz')}: {array.shape}, {len(data):,} bytes, sha256 {digest}")
        lines = [f"# 0-based official indices into {prefix}-*-ubyte of the embedded subset, in file order",
                 *(str(i) for i in chosen)]
        (out / f"{prefix}-indices.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
