"""Training: :class:`TrainConfig`, :func:`train`, :func:`resume`, :func:`load_run`.

The names load on first use (PEP 562): :class:`TrainConfig` and ``AUGMENTATIONS`` from the light
:mod:`srrlab.train.config` (the command line builds ``srrlab train --help`` from it without torch),
the rest from :mod:`srrlab.train.trainer`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

__all__ = ["AUGMENTATIONS", "STATUSES", "RunResult", "TrainConfig", "evaluate", "load_run", "read_layerwise", "resume", "select_device", "train"]

_CONFIG = {"AUGMENTATIONS", "TrainConfig"}

if TYPE_CHECKING:  # pragma: no cover
    from .config import AUGMENTATIONS, TrainConfig
    from .trainer import STATUSES, RunResult, evaluate, load_run, read_layerwise, resume, select_device, train


__getattr__, __dir__ = lazy_attributes(__name__, {name: "config" if name in _CONFIG else "trainer" for name in __all__},
                                      globals())
