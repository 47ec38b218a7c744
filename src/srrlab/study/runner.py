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

__all__ = ["execute_point", "execute_group", "plan_tasks", "run_study", "run_folder", "STATUS_OF_RUN"]


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
    from ..train import resume, train

    try:
        spec, cfg, splits = _setup(spec_source, point)
        folder = RunFolder(run_dir)
        if folder.has_checkpoint():
            result = resume(folder.path, quiet=True, splits=splits)
        else:
            if folder.path.exists():  # interrupted before its first checkpoint: restart cleanly
                shutil.rmtree(folder.path)
            result = train(cfg, folder.path, quiet=True, splits=splits)
        return _measure(spec, folder, result.status, result.summary, splits)
    except Exception as exc:  # noqa: BLE001 - recorded, never raised
        return _failed(exc)


def _setup(spec_source: str, point: dict[str, Any]):
    from ..data import load_dataset_cached

    spec = StudySpec.from_toml(spec_source)
    cfg = spec.train_config(point)
    splits = load_dataset_cached(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.data_seed, **cfg.data_options)
    return spec, cfg, splits


def _measure(spec: StudySpec, folder: RunFolder, run_status: str, summary: dict[str, Any], splits) -> dict[str, Any]:
    """The study row of a trained run: its status, summary and measures."""
    from ..measures import MeasureSettings, compute_measures

    status = STATUS_OF_RUN[run_status]
    measures = None
    if status != "diverged" and spec.measures:
        settings = MeasureSettings.from_dict(spec.measure_settings)
        record: dict[str, Any] = {}
        measures = compute_measures(folder.load_model("final"), init=folder.load_model("init"), data=splits.train,
                                    measures=spec.measures, settings=settings, record=record)
        summary = {**summary, **record}  # how it was measured travels with the run's summary
    return {"status": status, "error": None, "summary": summary, "measures": measures}


def _failed(exc: BaseException) -> dict[str, Any]:
    tb = traceback.format_exc(limit=6)
    return {"status": "failed", "error": f"{type(exc).__name__}: {exc}\n{tb}", "summary": None, "measures": None}


def execute_group(spec_source: str, members: list[tuple[str, dict[str, Any], str]],
                  threads: int | None = None) -> list[tuple[str, dict[str, Any]]]:
    """Train the grid points ``members`` (``(id, point, run_dir)``, one :func:`srrlab.train.group.group_key`)
    as one stacked program (:func:`srrlab.train.group.train_group`, resuming their folders), then
    measure each; returns ``(id, result)`` per member as :func:`execute_point` would. A failure of the
    group's training fails its members that have not ended, with the message."""
    from ..train.group import train_group

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    out = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                spec, _, splits = _setup(spec_source, members[0][1])
                cfgs = [spec.train_config(point) for _, point, _ in members]
                folders = [RunFolder(run_dir) for _, _, run_dir in members]
                for folder in folders:  # interrupted before its first checkpoint: restart cleanly
                    if folder.path.exists() and not folder.has_checkpoint():
                        shutil.rmtree(folder.path)
                trained = train_group(cfgs, [f.path for f in folders], splits=splits)
            except Exception as exc:  # noqa: BLE001 - recorded, never raised
                return [(run_id, _failed(exc)) for run_id, _, _ in members]
            training = list(caught)  # the group's training warnings belong to every member, as alone
            for (run_id, _, _), folder, result in zip(members, folders, trained):
                caught.clear()
                try:
                    row = _measure(spec, folder, result.status, result.summary, splits)
                except Exception as exc:  # noqa: BLE001
                    row = _failed(exc)
                notes = list(dict.fromkeys(str(w.message) for w in training + caught
                                           if not issubclass(w.category, DeprecationWarning)))
                row["warnings"] = notes or None
                out.append((run_id, row))
    finally:
        torch.set_num_threads(before)
    return out


def plan_tasks(spec: StudySpec, tasks: list[tuple[str, dict[str, Any], str]], group: str,
               max_group: int = 16) -> list[list[tuple[str, dict[str, Any], str]]]:
    """Split the unfinished points into tasks: groups of points that can share one stacked program
    (same :func:`~srrlab.train.group.group_key`, no :func:`~srrlab.train.group.group_blocker`; at most
    ``max_group`` each) and single points. ``group``: "on", "off", or "auto" (on where the points'
    device is CUDA). Grid order is kept within and across tasks as far as grouping allows."""
    from ..train import select_device
    from ..train.group import group_blocker, group_key

    if group == "off":
        return [[t] for t in tasks]
    buckets: dict[str, list] = {}
    plan: list[list] = []
    for task in tasks:
        cfg = spec.train_config(task[1])
        use = group == "on" or (group == "auto" and select_device(cfg.device).type == "cuda")
        if not use or group_blocker(cfg) is not None:
            plan.append([task])
            continue
        key = group_key(cfg)
        if key not in buckets or len(buckets[key]) >= max_group:
            buckets[key] = []
            plan.append(buckets[key])
        buckets[key].append(task)
    return plan


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
        for members in tasks:
            for run_id, _, _ in members:
                on_start(run_id)
            if len(members) == 1:
                run_id, point, run_dir = members[0]
                fut = client.submit(execute_point, spec_source, point, run_dir, per_worker, key=f"srrlab-{run_id}",
                                    pure=False)
            else:
                fut = client.submit(execute_group, spec_source, members, per_worker,
                                    key=f"srrlab-group-{members[0][0]}", pure=False)
            futures[fut] = members
        for fut in as_completed(futures):
            members = futures[fut]
            try:
                result = fut.result()
                rows = [(members[0][0], result)] if len(members) == 1 else result
            except Exception as exc:  # noqa: BLE001 - a worker died or the task could not run
                failed = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "summary": None, "measures": None}
                rows = [(run_id, dict(failed)) for run_id, _, _ in members]
            yield from rows
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_study(spec: StudySpec | str | os.PathLike, directory: str | os.PathLike, *, workers: int = 0,
              scheduler: str | None = None, threads: int | None = None, extend: bool = False,
              progress: bool | None = None, group: str | None = None) -> pd.DataFrame:
    """Run (or continue) the study ``spec`` in ``directory`` and return its tidy table.

    ``workers=0`` (default) trains in this process, one point after another; ``workers=N``
    starts a local Dask cluster of N single-threaded worker processes (torch threads per worker
    = cores // N unless ``threads`` is given); ``scheduler="tcp://host:port"`` uses an existing
    Dask cluster. Running the same command again continues where it stopped: finished points are
    kept, interrupted ones resume their run folder (or restart it cleanly). A spec that differs
    from the stored one is refused; ``extend=True`` accepts added grid values. ``group`` ("auto",
    "on", "off"; default: the spec's ``group``) says whether points that can share one stacked
    program are trained as a group (:func:`plan_tasks`, :mod:`srrlab.train.group`); a group is one
    task, and the progress bar still counts models.
    """
    from .spec import GROUP_MODES

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
        if group is not None and group not in GROUP_MODES:
            raise ValueError(f"group must be one of {', '.join(map(repr, GROUP_MODES))}, got {group!r}")
        points = [(run_id, point, str(run_folder(directory, run_id))) for run_id, point, _ in todo]
        tasks = plan_tasks(spec, points, group or spec.group)
        show = progress if progress is not None else os.isatty(2)
        bar = tqdm(total=total, initial=total - len(points), desc=f"study {spec.name}", unit="model",
                   disable=not show, dynamic_ncols=True)
        try:
            if workers or scheduler:
                results = _dask(tasks, source, workers, scheduler, threads, store.mark_running)
            else:
                def seq():
                    for members in tasks:
                        for run_id, _, _ in members:
                            store.mark_running(run_id)
                        if len(members) == 1:
                            run_id, point, run_dir = members[0]
                            yield run_id, execute_point(source, point, run_dir, threads)
                        else:
                            yield from execute_group(source, members, threads)
                results = seq()
            for run_id, result in results:
                store.record(run_id, result)
                bar.update(1)
                bar.set_postfix(store.counts(), refresh=False)
        finally:
            bar.close()
        return store.table()
