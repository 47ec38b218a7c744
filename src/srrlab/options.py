"""Validation shared by every configuration object (TrainConfig, MeasureSettings, study specs)."""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Iterable
from typing import Any

from .names import RATE_CONVENTIONS, SPARSITY_FORMS

__all__ = ["check_keys", "is_none", "NONE_WORDS", "EXECUTION_SETTINGS", "option", "check_types", "parse_text",
           "parse_assignments", "add_flags", "SRR_SETTINGS", "srr_option"]

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


# -- typed fields -----------------------------------------------------------------------------
# Every configuration dataclass (TrainConfig, CRATEConfig, MeasureSettings) declares its fields once,
# with their type and, through :func:`option`, their help text. From that one declaration come: the
# type check of a value given in Python or TOML (:func:`check_types`), the parsing of command-line
# text (:func:`parse_text`, :func:`parse_assignments`) and the command-line flags (:func:`add_flags`).

def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           **cli: Any) -> Any:
    """A dataclass field carrying its documentation: ``help`` (the flag's help text) and any
    ``argparse`` keyword in ``cli`` (``choices``, ``metavar``, ``nargs``, ``const``; ``flag=False``
    keeps the field off the command line)."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **cli})


#: The settings of the SRR measure that training (the ``srr_every`` recording, the regulariser) and
#: the measures share: one default and one meaning each, declared here and used by
#: :class:`~srrlab.train.TrainConfig` (``srr_*`` fields), :class:`~srrlab.measures.MeasureSettings` and
#: :class:`~srrlab.rate.SRRProtocol` (its ``sparsity`` and ``rate`` defaults); also
#: ``srrlab.rate.protocol.SRR_SETTINGS``. Here, not in srrlab.rate, so that ``srrlab train --help``
#: builds without torch.
SRR_SETTINGS: dict[str, dict[str, Any]] = {
    "srr_images": dict(default=500, help="training images SRR is averaged over (a fixed random subset); none: all"),
    "srr_eps": dict(default=None, help="ε of the rates (default none: the rate convention's, gamma1: ε² = p/N)"),
    "srr_lam": dict(default=0.1, help="λ of μ = λ‖Z‖₀ + R^c − R (docs/theory.md §5)"),
    "sparsity": dict(default="count", choices=SPARSITY_FORMS,
                     help="‖Z‖₀ as the count of non-zero entries or their fraction"),
    "rate": dict(default="gamma1", choices=RATE_CONVENTIONS,
                 help="rate convention: gamma1 (raw tokens, ε² = p/N) or unit (unit-norm tokens, ε² = 0.01)"),
}


def srr_option(name: str) -> Any:
    """The dataclass field of shared SRR setting ``name`` (see :data:`SRR_SETTINGS`)."""
    return option(**SRR_SETTINGS[name])


@functools.cache
def _field_types(cls: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """``{field: (accepted base types, optional)}`` from the dataclass's annotations."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
            else (hint,)
        optional = type(None) in args
        bases = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
        out[f.name] = (bases, optional)
    return out


_WORDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", dict: "a table"}


def _describe(bases: tuple[type, ...], optional: bool) -> str:
    words = " or ".join(dict.fromkeys(_WORDS.get(b, b.__name__) for b in bases))
    return words + (" or none" if optional else "")


def _accepts(base: type, value: Any) -> bool:
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    return base is Any or isinstance(value, base)


def check_types(obj: Any) -> None:
    """Raise one ``ValueError`` naming the first field of the dataclass instance ``obj`` whose value
    is not of its declared type (``lr must be a finite number, got 'fast'``)."""
    for name, (bases, optional) in _field_types(type(obj)).items():
        value = getattr(obj, name)
        if value is None and optional:
            continue
        if not any(_accepts(b, value) for b in bases):
            raise ValueError(f"{name} must be {_describe(bases, optional)}, got {value!r}")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "0")


def parse_text(cls: type, name: str, text: str) -> Any:
    """Command-line ``text`` as the declared type of field ``name`` of dataclass ``cls``
    (numbers, true/false, a :data:`NONE_WORDS` word for an optional field); ``ValueError`` naming
    the field and the expected type otherwise."""
    bases, optional = _field_types(cls)[name]
    if optional and is_none(text):
        return None
    word = text.strip().lower()
    for base in bases:
        if base is bool and word in _TRUE + _FALSE:
            return word in _TRUE
        if base in (int, float):
            try:
                value = base(text)
            except ValueError:
                continue
            if math.isfinite(value):
                return value
        if base is str:
            return text
    raise ValueError(f"{name} must be {_describe(bases, optional)}, got {text!r}")


def parse_assignments(items: Iterable[str], cls: type, flag: str, what: str,
                      exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``["key=value", …]`` from a repeatable ``flag`` as ``{field: typed value}`` for dataclass
    ``cls``; keys may use ``-`` for ``_``; one ``ValueError`` naming a malformed item, an unknown key
    (``what`` names the kind) or a value of the wrong type."""
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in set(exclude)]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r} (e.g. {flag} {valid[0]}=…)")
        check_keys([key], valid, what)
        try:
            out[key] = parse_text(cls, key, value.strip())
        except ValueError as exc:
            raise ValueError(f"{flag} {exc}") from None
    return out


def add_flags(parser: argparse.ArgumentParser, cls: type) -> list[str]:
    """Add one ``--field-name`` flag per field of dataclass ``cls`` that carries help (see
    :func:`option`), typed by :func:`parse_text`, with its help text and default; boolean fields
    that default to false become switches. A flag left out is absent from the parsed namespace, so
    the dataclass's default applies. Returns the names of the fields given flags.

    The defaults shown are the fields' declared ones: ``cls`` is not instantiated, so that its
    validation (which may import torch) does not run when a parser is built."""
    added = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if "help" not in meta or not meta.pop("flag", True):
            continue
        text = meta.pop("help")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        flag = "--" + f.name.replace("_", "-")
        switch = _field_types(cls)[f.name][0] == (bool,) and default is False
        if "default" not in text and not switch:
            text += f" (default {'none' if default is None else default})"
        if switch:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=text)
        else:
            def parse(s: str, _name: str = f.name) -> Any:
                try:
                    return parse_text(cls, _name, s)
                except ValueError as exc:
                    raise argparse.ArgumentTypeError(str(exc)) from None
            parse.__name__ = f.name  # argparse names the type in some messages
            parser.add_argument(flag, type=parse, default=argparse.SUPPRESS, help=text, **meta)
        added.append(f.name)
    return added
