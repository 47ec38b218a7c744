"""Running a study: every grid point trained exactly once, then measured; measures added later are
taken on the stored run folders without retraining; resumable; sequential, on a local Dask cluster
(CPU workers, or workers placed on the GPUs), on an existing Dask scheduler, or on a batch cluster's
jobs (:mod:`srrlab.study.cluster`). Only this (client) process writes the study database."""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import subprocess
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..runs import STATUS_OF_RUN, RunFolder
from .cluster import Execution, Plan, local_cluster, plan_execution, start_cluster
from .spec import StudySpec, load_spec
from .store import DB_NAME, StudyStore

__all__ = ["execute_point", "execute_group", "execute_measures", "plan_tasks", "run_study", "measure_study",
           "run_folder", "STATUS_OF_RUN"]


def run_folder(directory: str | os.PathLike, run_id: str) -> Path:
    return Path(directory) / "runs" / run_id


def execute_point(spec_source: str, point: dict[str, Any], run_dir: str, threads: int | None = None) -> dict[str, Any]:
    """Train one grid point (resuming its run folder if it was interrupted) and measure it.

    Runs in the client (sequential) or on a Dask worker; never touches the database. Returns
    ``{"status", "error", "summary", "measures", "warnings"}``; any exception becomes status
    ``failed`` with its message and traceback, so one failing run never stops the study. Warnings
    raised on the way are returned (and stored with the row) instead of printed.
    """
    with _torch_threads(threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = _execute(spec_source, point, run_dir)
    # warnings (e.g. a σ search that stopped short, a non-positive margin) are kept with the row
    result["warnings"] = _notes(caught)
    return result


def execute_measures(spec_source: str, point: dict[str, Any], run_dir: str, keys: list[str],
                     threads: int | None = None) -> dict[str, Any]:
    """Measure only ``keys`` (:attr:`StudySpec.measure_keys`) on the stored run folder of a finished grid
    point: its final and initial weights and the spec's training data; nothing is trained.

    Runs in the client or on a Dask worker; never touches the database. Returns ``{"measures": {key:
    value}, "error": None, "warnings"}``, or ``{"measures": None, "error": "<one line>", "warnings"}``
    when the folder cannot be measured (the row is left as it is).
    """
    with _torch_threads(threads), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            spec, _, splits = _setup(spec_source, point)
            values, _ = _measure_keys(spec, RunFolder(run_dir), splits.train, keys)
            result = {"measures": values, "error": None}
        except Exception as exc:  # noqa: BLE001 - reported by the client, never raised
            result = {"measures": None, "error": f"{type(exc).__name__}: {exc}"}
    result["warnings"] = _notes(caught)
    return result


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: unchanged), restoring the count after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _notes(caught: list[warnings.WarningMessage]) -> list[str] | None:
    """The distinct messages of the warnings ``caught`` (deprecations left out), or None."""
    notes = list(dict.fromkeys(str(w.message) for w in caught if not issubclass(w.category, DeprecationWarning)))
    return notes or None


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
    """The study row of a trained run: its status, summary and measures (every measure key of the spec)."""
    status = STATUS_OF_RUN[run_status]
    measures = None
    if status != "diverged" and spec.measure_keys:
        measures, record = _measure_keys(spec, folder, splits.train, spec.measure_keys)
        summary = {**summary, **record}  # how the primary reading was measured travels with the run's summary
    return {"status": status, "error": None, "summary": summary, "measures": measures}


def _measure_keys(spec: StudySpec, folder: RunFolder, data, keys: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """The values of the measure ``keys`` on a run folder's final model (initial weights and ``data``
    given): one :func:`~srrlab.measures.compute_measures` per network reading (its shared quantities
    computed once), with that reading's settings. Returns the values in the order of ``keys`` and the
    primary reading's record (how it was measured; empty when no primary key was asked)."""
    from ..measures import compute_measures

    model, init = folder.load_model("final"), folder.load_model("init")
    values: dict[str, float] = {}
    record: dict[str, Any] = {}
    for network, names in spec.keys_by_network(keys):
        got: dict[str, Any] = {}
        out = compute_measures(model, init=init, data=data, measures=names, settings=spec.reading_settings(network),
                               record=got)
        values.update({spec.reading_key(name, network): value for name, value in out.items()})
        if network == spec.primary_network:
            record = got
    return {key: values[key] for key in keys}, record


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

    out = []
    with _torch_threads(threads), warnings.catch_warnings(record=True) as caught:
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
            row["warnings"] = _notes(training + caught)
            out.append((run_id, row))
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


_local_cluster = local_cluster  # the CPU workers' cluster (srrlab.study.cluster.local_cluster)


@dataclass(frozen=True)
class _Job:
    """One task of a study call: training a point or a group (``kind="train"``: :func:`execute_point`,
    :func:`execute_group`), or measuring a finished point's missing keys (``"measure"``:
    :func:`execute_measures`). ``fn(*args, threads)`` runs it, in the client or on a Dask worker."""

    kind: str
    fn: Callable[..., Any]
    args: tuple
    ids: tuple[str, ...]
    key: str  # the Dask task key

    def rows(self, result: Any) -> list[tuple[str, dict[str, Any]]]:
        """``(id, row result)`` of each point of the job, from what ``fn`` returned."""
        return list(result) if self.fn is execute_group else [(self.ids[0], result)]

    def lost(self, exc: BaseException) -> Any:
        """What ``fn`` would have returned had it reported ``exc`` (a dead worker, a task that could not run)."""
        error = f"{type(exc).__name__}: {exc}"
        if self.kind == "measure":
            return {"measures": None, "error": error, "warnings": None}
        row = {"status": "failed", "error": error, "summary": None, "measures": None}
        failed = [(run_id, dict(row)) for run_id in self.ids]
        return failed if self.fn is execute_group else failed[0][1]


def _train_job(source: str, members: list[tuple[str, dict[str, Any], str]]) -> _Job:
    if len(members) == 1:
        run_id, point, run_dir = members[0]
        return _Job("train", execute_point, (source, point, run_dir), (run_id,), f"srrlab-{run_id}")
    return _Job("train", execute_group, (source, members), tuple(m[0] for m in members),
                f"srrlab-group-{members[0][0]}")


def _measure_job(source: str, run_id: str, point: dict[str, Any], run_dir: str, keys: list[str]) -> _Job:
    return _Job("measure", execute_measures, (source, point, run_dir, keys), (run_id,), f"srrlab-measure-{run_id}")


def _sequential(jobs: list[_Job], threads: int | None,
                on_start: Callable[[str], None]) -> Iterator[tuple[_Job, Any]]:
    for job in jobs:
        if job.kind == "train":
            for run_id in job.ids:
                on_start(run_id)
        yield job, job.fn(*job.args, threads)


def _dask(jobs: list[_Job], plan: Plan, on_start: Callable[[str], None], *, directory: str | os.PathLike,
          name: str) -> Iterator[tuple[_Job, Any]]:
    from dask.distributed import Client, as_completed

    per_worker = plan.threads
    cluster = start_cluster(plan, directory=directory, name=name)
    try:
        client = Client(cluster) if cluster is not None else Client(plan.execution.scheduler, timeout="30s")
    except BaseException:
        if cluster is not None:
            cluster.close()
        raise
    try:
        futures = {}
        for job in jobs:
            if job.kind == "train":
                for run_id in job.ids:
                    on_start(run_id)
            futures[client.submit(job.fn, *job.args, per_worker, key=job.key, pure=False)] = job
        for fut in as_completed(futures):
            job = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died or the task could not run
                result = job.lost(exc)
            yield job, result
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _git_commit() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout srrlab is imported from, or ``(None, None)`` when it is not
    a checkout (an installed package) or git is unavailable; never raises."""
    package = Path(__file__).resolve().parent.parent

    def git(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=20,
                                  check=False)
        except (OSError, subprocess.SubprocessError):
            return None

    tracked = git("ls-files", "--error-unmatch", "--", "__init__.py")  # the package itself is under git
    head = git("rev-parse", "HEAD") if tracked is not None and tracked.returncode == 0 else None
    if head is None or head.returncode != 0 or not head.stdout.strip():
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".")
    dirty = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return head.stdout.strip(), dirty


def _device_setting(spec: StudySpec) -> str:
    """The training device setting of the spec's first grid point ("auto", "cuda", "cpu", …)."""
    return str(spec.train_config(spec.points()[0]).device)


def _device(spec: StudySpec) -> str:
    """The training device of the spec's first grid point as resolved on this machine (its setting when
    it cannot be resolved here)."""
    from ..train import select_device

    device = _device_setting(spec)
    try:
        return str(select_device(device))
    except (ValueError, RuntimeError):
        return str(device)


def _environment(spec: StudySpec, plan: Plan, *, trained: int,
                 measured: list[tuple[str, dict[str, Any], list[str]]]) -> dict[str, Any]:
    """The entry :meth:`StudyStore.log_environment` records for one :func:`run_study` call: where and
    with what it runs, and what it sets out to do."""
    from .. import __version__

    commit, dirty = _git_commit()
    scheduler = plan.execution.scheduler
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "srrlab": __version__, "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__,
        "threads": plan.threads if plan.threads or scheduler else torch.get_num_threads(),
        "scheduler": scheduler, **plan.record(), "device": _device(spec),
        "points_trained": trained, "rows_measured": len(measured),
        "measure_keys_added": list(dict.fromkeys(k for _, _, keys in measured for k in keys)),
    }


def run_study(spec: StudySpec | str | os.PathLike, directory: str | os.PathLike, *, workers: int = 0,
              scheduler: str | None = None, threads: int | None = None, extend: bool = False,
              progress: bool | None = None, group: str | None = None, train: bool = True,
              execution: Execution | None = None, reuse: Sequence[str | os.PathLike] = ()) -> pd.DataFrame:
    """Run (or continue) the study ``spec`` in ``directory`` and return its tidy table.

    ``workers=0`` (default) trains in this process, one point after another; ``workers=N``
    starts a local Dask cluster of N single-threaded worker processes (torch threads per worker
    = cores // N unless ``threads`` is given); ``scheduler="tcp://host:port"`` uses an existing
    Dask cluster. ``execution`` (:class:`srrlab.study.cluster.Execution`, instead of those three) holds
    every execution option: workers placed on the GPUs (one per visible GPU, or ``workers_per_gpu``
    each) when the spec trains on CUDA, or a batch cluster's jobs (``cluster="slurm"``, ``jobs``,
    ``gpus_per_job``, …); docs/study.md, "Multi-GPU machines and clusters". Running the same command
    again continues where it stopped: finished points are
    kept, interrupted ones resume their run folder (or restart it cleanly). A spec that differs
    from the stored one is refused; ``extend=True`` accepts added grid values. ``group`` ("auto",
    "on", "off"; default: the spec's ``group``) says whether points that can share one stacked
    program are trained as a group (:func:`plan_tasks`, :mod:`srrlab.train.group`); a group is one
    task, and the progress bar still counts models.

    A spec that adds measures or network readings (:attr:`StudySpec.measure_keys`) is accepted: the
    finished, measured rows get only the keys they lack, measured on their stored run folders (one
    task per row, nothing retrained; the progress bar counts these tasks too), merged into their
    stored measures; a row that cannot be measured is left as it is, with a warning. ``train=False``
    only measures (points still to train stay pending). ``reuse`` names other studies' folders whose
    finished runs of the same training settings fill this study's pending points instead of being
    trained again (:func:`srrlab.study.reuse.reuse_runs`: same measure settings required). Every call
    appends its environment to the store (:meth:`StudyStore.environments`).
    """
    from .spec import GROUP_MODES

    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    plan = plan_execution(Execution.of(execution, workers=workers, scheduler=scheduler, threads=threads),
                          _device_setting(spec))
    if group is not None and group not in GROUP_MODES:
        raise ValueError(f"group must be one of {', '.join(map(repr, GROUP_MODES))}, got {group!r}")
    with StudyStore(directory) as store:
        store.attach(spec, extend=extend)
        if reuse and train:
            from .reuse import reuse_runs

            reuse_runs(store, reuse)
        stored = store.spec()
        source = stored.source
        unfinished = store.unfinished()
        finished = sum(store.counts().values()) - len(unfinished)
        points = [(run_id, point, str(run_folder(directory, run_id))) for run_id, point, _ in unfinished if train]
        measured = store.missing_measures(stored.measure_keys)
        jobs = [_measure_job(source, run_id, point, str(run_folder(directory, run_id)), keys)
                for run_id, point, keys in measured]
        jobs += [_train_job(source, members) for members in plan_tasks(spec, points, group or spec.group)]
        store.log_environment(_environment(stored, plan, trained=len(points), measured=measured))
        show = progress if progress is not None else os.isatty(2)
        bar = tqdm(total=finished + len(points) + len(measured), initial=finished, desc=f"study {spec.name}",
                   unit="task" if measured else "model", disable=not show, dynamic_ncols=True)
        unmeasured: list[str] = []
        try:
            if plan.parallel:
                results = _dask(jobs, plan, store.mark_running, directory=directory,
                                name=Path(directory).resolve().name)
            else:
                results = _sequential(jobs, plan.threads, store.mark_running)
            for job, result in results:
                for run_id, row in job.rows(result):
                    if job.kind == "train":
                        store.record(run_id, row)
                    elif row["error"] is None:
                        store.update_measures(run_id, row["measures"], row["warnings"])
                    else:
                        unmeasured.append(f"{run_id}: {row['error']}")
                    bar.update(1)
                bar.set_postfix(store.counts(), refresh=False)
        finally:
            bar.close()
        if unmeasured:
            warnings.warn(f"{len(unmeasured)} of the {len(measured)} stored run(s) could not be measured and keep "
                          f"their missing measures (the next call retries them): {'; '.join(unmeasured)}", stacklevel=2)
        return store.table()


def measure_study(directory: str | os.PathLike, names: Sequence[str] = (), networks: Sequence[str] = (), *,
                  workers: int = 0, scheduler: str | None = None, threads: int | None = None,
                  progress: bool | None = None, execution: Execution | None = None) -> pd.DataFrame:
    """Add the measures ``names`` (``"all"``: every one) and the network readings ``networks`` to the
    study in ``directory`` and measure what its finished rows lack, on their stored run folders
    (nothing is trained; points still to train stay pending). The stored spec's ``[measures]`` tables
    are rewritten (:meth:`StudySpec.with_measures`); with neither argument, only the keys the stored spec
    already names and some rows lack are measured (e.g. after an interrupted call). Returns the tidy
    table; execution options as :func:`run_study` (``srrlab study measure DIR --add NAMES``)."""
    if not (Path(directory) / DB_NAME).exists():
        raise FileNotFoundError(f"{directory} holds no study (no {DB_NAME}); "
                                f"run `srrlab study run SPEC --dir {directory}`")
    with StudyStore(directory) as store:
        spec = store.spec()
    return run_study(spec.with_measures(list(names), list(networks)), directory, workers=workers,
                     scheduler=scheduler, threads=threads, progress=progress, train=False, execution=execution)
