"""The registry of complexity measures: one signature, ``measure(ctx) -> float``."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MeasureInfo", "MEASURES", "register", "get_measure", "measure_names"]


@dataclass(frozen=True)
class MeasureInfo:
    """A registered measure and its metadata.

    Every measure follows the convention that **larger means more complex** (a predicted larger
    generalisation gap). ``reference`` names the paper and equation the definition follows;
    ``needs_data``/``needs_init`` say whether the training data or the initial weights are used.
    """

    name: str
    fn: Callable[["MeasureContext"], float]  # noqa: F821 - see srrlab.measures.context
    reference: str
    needs_data: bool
    needs_init: bool
    description: str
    network_free: bool = False

    def __call__(self, ctx) -> float:
        return float(self.fn(ctx))


#: All measures by name, in registration order (the order of the paper's Table 1 where it has one).
MEASURES: dict[str, MeasureInfo] = {}


def register(name: str, *, reference: str, needs_data: bool = False, needs_init: bool = False,
             network_free: bool = False):
    """Decorator registering ``fn(ctx) -> float`` under ``name``; its docstring's first line is the description.
    ``network_free=True`` declares that the value is the same whichever ``MeasureSettings.network`` is set
    (tested for every measure in tests/test_study_measures.py)."""

    def wrap(fn: Callable) -> Callable:
        if name in MEASURES:
            raise ValueError(f"measure {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        MEASURES[name] = MeasureInfo(name, fn, reference, needs_data, needs_init, doc[0] if doc else "",
                                     network_free)
        return fn

    return wrap


def measure_names() -> list[str]:
    return list(MEASURES)


def get_measure(name: str) -> MeasureInfo:
    try:
        return MEASURES[name]
    except KeyError:
        raise ValueError(f"unknown measure {name!r}; available: {', '.join(MEASURES)}") from None
