"""Running a study: every grid point trained exactly once, then measured; resumable; sequential,
on a local Dask cluster, or on an existing Dask scheduler. Only this (client) process writes the
study database."""
from __future__ import annotations

import logging
import os
import shutil
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..runs import STATUS_OF_RUN, RunFolder
from .spec import StudySpec, load_spec
from .store import StudyStore

__all__ = ["execute_point", "run_study", "run_folder", "STATUS_OF_RUN"]


def run_folder(directory: str | os.PathLike, run_id: str) -> Path:
    return Path(directory) / "runs" / run_id


def execute_point(spec_source: str, point: dict[str, Any], run_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Train one grid point (resuming its run folder if it was interrupted) and measure it.

    Runs in the client (sequential) or on a Dask worker; never touches the database. Returns
    ``{"status", "error", "summary", "measures", "warnings"}``; any exception becomes status
    ``failed`` with its message and traceback, so one failing run never stops the study. Warnings
    raised on the way are returned (and stored with the row) instead of printed.
    """
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _execute(spec_source, point, run_dir)
    finally:
        torch.set_num_threads(before)
    # warnings (e.g. a σ search that stopped short, a non-positive margin) are kept with the row
    notes = list(dict.fromkeys(str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)))
    result["warnings"] = notes or None
    return result


def _execute(spec_source: str, point: dict[str, Any], run_dir: str) -> dict[str, Any]:
    from ..data import load_dataset_cached
    from ..measures import MeasureSettings, compute_measures
    from ..train import resume, train

    try:
        spec = StudySpec.from_toml(spec_source)
        cfg = spec.train_config(point)
        splits = load_dataset_cached(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.data_seed, **cfg.data_options)
        folder = RunFolder(run_dir)
        if folder.has_checkpoint():
            result = resume(folder.path, quiet=True, splits=splits)
        else:
            if folder.path.exists():  # interrupted before its first checkpoint: restart cleanly
                shutil.rmtree(folder.path)
            result = train(cfg, folder.path, quiet=True, splits=splits)
        summary = result.summary
        status = STATUS_OF_RUN[result.status]
        measures = None
        if status != "diverged" and spec.measures:
            settings = MeasureSettings.from_dict(spec.measure_settings)
            model = folder.load_model("final")
            init = folder.load_model("init")
            record: dict[str, Any] = {}
            measures = compute_measures(model, init=init, data=splits.train, measures=spec.measures,
                                        settings=settings, record=record)
            summary = {**summary, **record}  # how it was measured travels with the run's summary
        return {"status": status, "error": None, "summary": summary, "measures": measures}
    except Exception as exc:  # noqa: BLE001 - recorded, never raised
        tb = traceback.format_exc(limit=6)
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{tb}", "summary": None, "measures": None}


def _local_cluster(workers: int):
    """A local Dask cluster of ``workers`` single-threaded worker processes for training runs.

    Dask presets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers' environment. Any explicit glibc
    malloc threshold freezes the mmap threshold at 128 KiB, so every activation tensor of a training
    step is mapped and unmapped again: ~280k page faults/s and half the CPU in the kernel (measured:
    2.6-4.4 s per Fashion-MNIST epoch against 1.0-1.6 s outside Dask). Workers keep glibc's adaptive
    defaults; Dask's thread limits (OMP/MKL/OPENBLAS_NUM_THREADS=1) stay.
    """
    import dask
    from dask.distributed import LocalCluster

    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    # LocalCluster also writes those variables into *this* process's environment; restore it once the
    # workers are spawned, so that later subprocesses (and this process) keep their thread defaults.
    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                silence_logs=logging.ERROR)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _dask(tasks, spec_source: str, workers: int | None, scheduler: str | None, threads: int | None,
          on_start: Callable[[str], None]) -> Iterator[tuple[str, dict[str, Any]]]:
    from dask.distributed import Client, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
        per_worker = threads
    else:
        cores = os.cpu_count() or 1
        per_worker = threads or max(1, cores // workers)
        cluster = _local_cluster(workers)
        client = Client(cluster)
    try:
        futures = {}
        for run_id, point, run_dir in tasks:
            on_start(run_id)
            fut = client.submit(execute_point, spec_source, point, run_dir, per_worker, key=f"srrlab-{run_id}",
                                pure=False)
            futures[fut] = run_id
        for fut in as_completed(futures):
            run_id = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died or the task could not run
                result = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "summary": None, "measures": None}
            yield run_id, result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_study(spec: StudySpec | str | os.PathLike, directory: str | os.PathLike, *, workers: int = 0,
              scheduler: str | None = None, threads: int | None = None, extend: bool = False,
              progress: bool | None = None) -> pd.DataFrame:
    """Run (or continue) the study ``spec`` in ``directory`` and return its tidy table.

    ``workers=0`` (default) trains in this process, one point after another; ``workers=N``
    starts a local Dask cluster of N single-threaded worker processes (torch threads per worker
    = cores // N unless ``threads`` is given); ``scheduler="tcp://host:port"`` uses an existing
    Dask cluster. Running the same command again continues where it stopped: finished points are
    kept, interrupted ones resume their run folder (or restart it cleanly). A spec that differs
    from the stored one is refused; ``extend=True`` accepts added grid values.
    """
    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    if workers < 0:
        raise ValueError(f"workers must be >= 0 (0: sequential in this process), got {workers}")
    if workers and scheduler:
        raise ValueError("give either --workers (a local cluster) or --scheduler (an existing one), not both")
    with StudyStore(directory) as store:
        store.attach(spec, extend=extend)
        source = store.spec().source
        todo = store.unfinished()
        total = sum(store.counts().values())
        tasks = [(run_id, point, str(run_folder(directory, run_id))) for run_id, point, _ in todo]
        show = progress if progress is not None else os.isatty(2)
        bar = tqdm(total=total, initial=total - len(tasks), desc=f"study {spec.name}", unit="model",
                   disable=not show, dynamic_ncols=True)
        try:
            if workers or scheduler:
                results = _dask(tasks, source, workers, scheduler, threads, store.mark_running)
            else:
                def seq():
                    for run_id, point, run_dir in tasks:
                        store.mark_running(run_id)
                        yield run_id, execute_point(source, point, run_dir, threads)
                results = seq()
            for run_id, result in results:
                store.record(run_id, result)
                bar.update(1)
                bar.set_postfix(store.counts(), refresh=False)
        finally:
            bar.close()
        return store.table()
