"""Training: :class:`TrainConfig`, :func:`train`, :func:`resume`, :func:`load_run`.

The names load on first use (PEP 562): :class:`TrainConfig` and ``AUGMENTATIONS`` from the light
:mod:`srrlab.train.config` (the command line builds ``srrlab train --help`` from it without torch),
the rest from :mod:`srrlab.train.trainer`.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["AUGMENTATIONS", "STATUSES", "RunResult", "TrainConfig", "evaluate", "load_run", "read_layerwise", "resume", "select_device", "train"]

_CONFIG = {"AUGMENTATIONS", "TrainConfig"}

if TYPE_CHECKING:  # pragma: no cover
    from .config import AUGMENTATIONS, TrainConfig
    from .trainer import STATUSES, RunResult, evaluate, load_run, read_layerwise, resume, select_device, train


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = importlib.import_module(".config" if name in _CONFIG else ".trainer", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    if not name.startswith("_"):  # a module of the package: srrlab.train.group, …
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
