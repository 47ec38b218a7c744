"""Tidy tables as CSV: the one way the study report writes them (``runs.csv``, ``correlation.csv``,
``within.csv``). ``runs.csv`` is read back by :func:`srrlab.runs.read_tidy_table` (through
:func:`srrlab.study.transfer.read_results`), which returns the table that was written: floats bit for
bit, since pandas writes the shortest text that reads back to the same double."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..io import atomic_write

__all__ = ["csv_text", "write_csv"]


def csv_text(frame: pd.DataFrame) -> str:
    """``frame`` as CSV text: ``DataFrame.to_csv(index=False)`` with ``\\n`` line ends on every
    platform (missing values empty, floats in their shortest round-trip form)."""
    return frame.to_csv(index=False, lineterminator="\n")


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write :func:`csv_text` of ``frame`` to ``path`` atomically (UTF-8)."""
    data = csv_text(frame).encode("utf-8")
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
