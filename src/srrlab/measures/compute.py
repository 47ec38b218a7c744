"""Computing measures on models and run folders."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from .context import MeasureContext, MeasureSettings
from .registry import MEASURES, get_measure

__all__ = ["compute_measures", "measure_run", "measure_runs"]


def _names(measures: str | Iterable[str] | None) -> list[str]:
    if measures is None:
        return list(MEASURES)
    if isinstance(measures, str):
        measures = [m.strip() for m in measures.split(",") if m.strip()]
    names = list(dict.fromkeys(measures))
    for name in names:
        get_measure(name)  # one clear error for an unknown name
    if not names:
        raise ValueError(f"no measures given; available: {', '.join(MEASURES)}")
    return names


def compute_measures(model, *, init: Any = None, data: Any = None, measures: str | Iterable[str] | None = None,
                     settings: MeasureSettings | None = None, progress: bool = False,
                     timings: dict[str, float] | None = None, record: dict[str, Any] | None = None) -> dict[str, float]:
    """Evaluate ``measures`` (names, a comma-separated string, or None for all) on one model.

    ``init``: the initial weights (model or state dict), needed by distance and ``-init``
    measures; ``data``: the training data (ImageDataset, Splits or ``(images, labels)``), needed by
    data-dependent measures. Missing requirements are reported before anything is computed.
    Shared quantities are computed once (:class:`MeasureContext`). ``timings``, if given, receives
    the seconds each measure took; ``record``, if given, receives how the values were measured
    (:meth:`MeasureContext.record`: the SRR protocol, the network the other measures evaluated, and the
    evaluated network's training accuracy ``protocol_train_acc`` when SRR was measured).
    """
    names = _names(measures)
    missing = [n for n in names if (MEASURES[n].needs_init and init is None) or (MEASURES[n].needs_data and data is None)]
    if missing:
        needs = {n: [w for w, f in (("init=", MEASURES[n].needs_init and init is None),
                                    ("data=", MEASURES[n].needs_data and data is None)) if f] for n in missing}
        raise ValueError("missing inputs: " + "; ".join(f"{n} needs {' and '.join(v)}" for n, v in needs.items()))
    ctx = MeasureContext(model, init=init, data=data, settings=settings)
    out = {}
    for name in tqdm(names, desc="measures", disable=not progress, leave=False):
        t0 = time.perf_counter()
        out[name] = MEASURES[name](ctx)
        if timings is not None:
            timings[name] = time.perf_counter() - t0
    if record is not None:
        record.update(ctx.record())
    return out


def measure_run(run_dir: str | os.PathLike, measures: str | Iterable[str] | None = None,
                settings: MeasureSettings | None = None, splits: Any = None, device: str = "cpu") -> dict[str, Any]:
    """Measures of a finished training run: its final model, initial weights and training data.

    Returns one tidy row (:func:`srrlab.runs.tidy_row`): ``run``, ``hp.*`` (training and model
    options), ``gen.*`` (status, gaps, accuracies and wall time from the run's summary, and how the
    row was measured: ``gen.protocol``, ``gen.measure_network``, ``gen.protocol_train_acc``,
    ``gen.protocol_images``) and ``measure.*``.
    """
    from ..data import load_dataset_cached
    from ..runs import RunFolder, run_hparams, tidy_row

    folder = RunFolder(run_dir)
    config = folder.config()
    summary = folder.summary() or {"status": "running"}
    if summary.get("status") == "running":
        raise ValueError(f"{run_dir} has not finished (status running); resume it with `srrlab train --resume {run_dir}`")
    train = config["train"]
    if splits is None:
        splits = load_dataset_cached(train["dataset"], data_dir=train["data_dir"], seed=train["data_seed"],
                                     **train["data_options"])
    model = folder.load_model("final", device=device)
    init = folder.load_model("init", device=device)
    record: dict[str, Any] = {}
    values = compute_measures(model, init=init, data=splits.train, measures=measures, settings=settings,
                              record=record)
    return tidy_row(run_hparams(config), {**summary, **record}, values, run=str(run_dir))


def measure_runs(run_dirs: Sequence[str | os.PathLike], measures: str | Iterable[str] | None = None,
                 settings: MeasureSettings | None = None, progress: bool = False) -> pd.DataFrame:
    """:func:`measure_run` for several runs, as one tidy table (one row per run)."""
    names = _names(measures)
    rows = [measure_run(d, names, settings) for d in tqdm(list(run_dirs), desc="runs", disable=not progress)]
    return pd.DataFrame(rows)
