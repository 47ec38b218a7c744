"""Training: :class:`TrainConfig`, :func:`train`, :func:`resume`, :func:`load_run`."""
from .trainer import AUGMENTATIONS, STATUSES, RunResult, TrainConfig, evaluate, load_run, read_layerwise, resume, select_device, train

__all__ = ["AUGMENTATIONS", "STATUSES", "RunResult", "TrainConfig", "evaluate", "load_run", "read_layerwise", "resume", "select_device", "train"]
