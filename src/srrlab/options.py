"""Validation shared by every configuration object (TrainConfig, MeasureSettings, study specs)."""
from __future__ import annotations

from collections.abc import Iterable

__all__ = ["check_keys"]


def check_keys(given: Iterable[str], valid: Iterable[str], what: str, *, prefix: str = "",
               error: type[Exception] = ValueError) -> None:
    """Raise one ``error`` naming every key of ``given`` that is not in ``valid``, and the valid ones.

    ``what`` names the kind of key ("training option", "top-level key"); ``prefix`` is prepended to
    each offending key as written in the file (``report.`` for keys of the ``[report]`` table).
    """
    valid = sorted(set(valid))
    unknown = sorted(set(given) - set(valid))
    if unknown:
        names = ", ".join(repr(prefix + k) for k in unknown)
        raise error(f"unknown {what}{'s' if len(unknown) > 1 else ''} {names}; valid: {', '.join(valid)}")
