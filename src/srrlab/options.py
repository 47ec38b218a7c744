"""Validation shared by every configuration object (TrainConfig, MeasureSettings, study specs)."""
from __future__ import annotations

from collections.abc import Iterable

__all__ = ["check_keys", "is_none", "NONE_WORDS", "EXECUTION_SETTINGS"]

#: TrainConfig fields that say how a run executes, not what it computes (its numbers are equal up to
#: floating-point reassociation): they are not hyperparameters (no ``hp.*`` column) and a study's
#: fingerprint ignores them, so a study can be continued on another device or batch size for evaluation.
EXECUTION_SETTINGS = ("device", "compile", "eval_batch_size")

#: How "no value" is written wherever a value is text (command-line flags, ``--set``, TOML, which has
#: no null): any of these, in any case, unsets an optional setting.
NONE_WORDS = ("none", "null", "off")


def is_none(value: object) -> bool:
    """Whether ``value`` is one of :data:`NONE_WORDS` (a string, any case)."""
    return isinstance(value, str) and value.strip().lower() in NONE_WORDS


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
