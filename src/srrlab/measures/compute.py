"""Computing measures on models and run folders."""
from __future__ import annotations

import dataclasses
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


def _check_measure_names(measures: Any) -> list[str]:
    """The measure names of ``measures`` (None: all), or one ValueError naming every unknown one."""
    if measures is not None and not isinstance(measures, str):
        measures = list(measures) if isinstance(measures, Iterable) else measures
        if not isinstance(measures, list) or not all(isinstance(m, str) for m in measures):
            raise ValueError(f"measures must be None (all), a comma-separated string or a list of measure names, "
                             f"got {measures!r}; e.g. measures=\"srr,l2-dist\" (see srrlab.measures.MEASURES)")
    if isinstance(measures, str):
        measures = [m.strip() for m in measures.split(",") if m.strip()]
    unknown = [m for m in measures or () if m not in MEASURES]
    if unknown:
        raise ValueError(f"measures: unknown measure{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join(map(repr, unknown))}; available: {', '.join(MEASURES)}")
    return _names(measures)


def _check_settings(settings: Any) -> MeasureSettings | None:
    """``settings`` re-validated (a field assigned after construction is checked too), or one ValueError."""
    if settings is None:
        return None
    if not isinstance(settings, MeasureSettings):
        raise ValueError(f"settings must be a MeasureSettings or None, got {type(settings).__name__}; "
                         f"build one with MeasureSettings(max_images=500, ...) or MeasureSettings.from_dict(d)")
    try:
        dataclasses.replace(settings)  # runs MeasureSettings' validation again
    except (TypeError, ValueError) as exc:
        raise ValueError(f"settings: {exc}") from None
    return settings


def _run_problem(run_dir: Any, index: int) -> str | None:
    """Why ``run_dir`` cannot be measured (one sentence with the fix), or None when it can."""
    from ..data import DATASETS
    from ..runs import RunFolder

    if not isinstance(run_dir, (str, os.PathLike)):
        return (f"run_dirs[{index}] is {run_dir!r} ({type(run_dir).__name__}), not a folder path: list the run "
                f"folders themselves, e.g. [\"runs/t\", \"runs/n\"]")
    folder = RunFolder(run_dir)
    try:  # no folder, no config.json, or a damaged config.json / summary.json: the message says what to do
        train = folder.config()["train"]
        summary = folder.summary() or {"status": "running"}
    except (OSError, ValueError) as exc:
        return str(exc)
    if train.get("dataset") not in DATASETS:
        return (f"{run_dir}: config.json names the dataset {train.get('dataset')!r}, not one of "
                f"{', '.join(DATASETS)}: the file is damaged; restore it, or delete the folder and train again")
    if summary.get("status") == "running":
        return f"{run_dir} has not finished (status running); resume it with `srrlab train --resume {run_dir}`"
    missing = [folder.weights_path(w).name for w in ("final", "init") if not folder.has_weights(w)]
    if missing:
        return (f"{run_dir} lacks {' and '.join(missing)}: the folder is incomplete; resume it with "
                f"`srrlab train --resume {run_dir}`, or delete it and train again")
    return None


def _check_run_dirs(run_dirs: Any) -> list[str | os.PathLike]:
    """The run folders as a list, or one ValueError listing every folder that cannot be measured."""
    if isinstance(run_dirs, (str, bytes, os.PathLike)):
        raise ValueError(f"run_dirs must be a list of run folders, got the single path {run_dirs!r}; "
                         f"pass [{str(run_dirs)!r}]")
    if not isinstance(run_dirs, Iterable):
        raise ValueError(f"run_dirs must be a list of run folders, got {type(run_dirs).__name__}")
    run_dirs = list(run_dirs)
    if not run_dirs:
        raise ValueError("run_dirs is empty: give the folders of one or more finished runs (`srrlab train --out DIR`)")
    problems = [p for i, d in enumerate(run_dirs) if (p := _run_problem(d, i)) is not None]
    if len(problems) == 1:
        raise ValueError(problems[0])
    if problems:  # one line (the CLI prints one error line), every bad folder numbered
        raise ValueError(f"{len(problems)} of the {len(run_dirs)} run folders cannot be measured: "
                         + " ".join(f"({i}) {p}" for i, p in enumerate(problems, 1)))
    return run_dirs


def measure_runs(run_dirs: Sequence[str | os.PathLike], measures: str | Iterable[str] | None = None,
                 settings: MeasureSettings | None = None, progress: bool = False) -> pd.DataFrame:
    """:func:`measure_run` for several runs, as one tidy table (one row per run).

    Every input is checked before anything is computed: each run folder exists, holds a readable
    ``config.json``, has finished (final and initial weights), the measure names are known and the
    settings are valid. A problem raises one ``ValueError`` naming the argument or every bad folder
    and how to fix it.
    """
    names = _check_measure_names(measures)
    settings = _check_settings(settings)
    run_dirs = _check_run_dirs(run_dirs)
    rows = [measure_run(d, names, settings) for d in tqdm(run_dirs, desc="runs", disable=not progress)]
    return pd.DataFrame(rows)
