"""Where a study call runs: in this process, on a local Dask cluster (CPU workers, or one or more
workers per GPU), on an existing Dask scheduler, or on a batch cluster's jobs (SLURM, PBS, LSF, SGE
through dask-jobqueue). docs/study.md, "Multi-GPU machines and clusters".

Three steps, each testable without a GPU or a cluster:

* :class:`Execution` holds what the caller asked for (the ``srrlab study run`` flags) and checks that
  the combination makes sense (:meth:`Execution.check`: every error names the flag and the fix);
* :func:`plan_execution` turns it into a :class:`Plan` for one spec on this machine: which kind of
  cluster, how many worker processes, the ``CUDA_VISIBLE_DEVICES`` of each local worker
  (:func:`gpu_placement`, a pure function of the visible GPUs) and the torch threads of each task;
* :func:`start_cluster` starts the plan's cluster (``None`` for sequential or an external scheduler).

GPU workers are Dask ``Nanny`` processes of a :class:`distributed.SpecCluster`, each with its own
``env={"CUDA_VISIBLE_DEVICES": <one GPU>}``, so a worker sees exactly one GPU as ``cuda:0``; k workers
per GPU share it. In a batch job the job's G x k worker processes are started by ``dask worker
--nworkers``, which cannot give each process its own environment: the nanny preload
:mod:`srrlab.study.worker_setup` gives each one its GPU (:func:`job_gpu`).

Nothing here imports torch at module level: the command line imports this module to check flags.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["JOBQUEUE_SYSTEMS", "Execution", "Plan", "plan_execution", "start_cluster", "gpu_placement",
           "parse_visible", "visible_gpus", "job_gpu", "job_script", "local_cluster", "gpu_cluster",
           "gpu_worker_specs", "jobqueue_cluster", "keep_jobs"]

#: the batch systems ``--cluster`` accepts: dask-jobqueue's SLURMCluster, PBSCluster, LSFCluster, SGECluster
JOBQUEUE_SYSTEMS = ("slurm", "pbs", "lsf", "sge")
#: the environment variable that tells :mod:`srrlab.study.worker_setup` how many GPUs a job requested
GPUS_PER_JOB_ENV = "SRRLAB_GPUS_PER_JOB"
#: the nanny preload of every batch-job worker (its GPU, glibc's malloc defaults)
WORKER_SETUP = "srrlab.study.worker_setup"
#: the folder of a study that holds the batch jobs' scripts' output (``D/dask-jobs``)
JOB_LOGS = "dask-jobs"

_JOB_FIELDS = ("jobs", "queue", "account", "walltime", "gpus_per_job", "cores_per_job", "memory_per_job",
               "workers_per_job", "job_extra", "job_prologue")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Execution:
    """Where and how a study call runs: the execution options of ``srrlab study run``, ``study
    measure`` and ``regularize run`` (each field is the flag of the same name, ``--workers-per-gpu``
    for ``workers_per_gpu``).

    ``workers``: local Dask worker processes (0 and nothing else: sequential in this process); on a
    machine where the spec trains on CUDA they are spread over the visible GPUs, round-robin.
    ``workers_per_gpu``: k local workers on each visible GPU (alone: k x GPUs workers; with
    ``workers``: at most k per GPU). ``scheduler``: the address of an existing Dask scheduler.
    ``threads``: torch threads per task (default: cores // workers; on a batch cluster cores per job
    // workers per job). ``cluster``: a batch system (:data:`JOBQUEUE_SYSTEMS`), with ``jobs`` jobs
    (default 1) each asking for ``queue``, ``account``, ``walltime``, ``gpus_per_job`` GPUs,
    ``cores_per_job`` cores, ``memory_per_job`` memory (e.g. "16GB"), the extra directives
    ``job_extra`` and the shell lines ``job_prologue``; a job runs one worker per GPU (x
    ``workers_per_gpu``), or ``workers_per_job`` workers (default 1) when it asks for no GPU.
    """

    workers: int = 0
    scheduler: str | None = None
    threads: int | None = None
    workers_per_gpu: int | None = None
    cluster: str | None = None
    jobs: int | None = None
    queue: str | None = None
    account: str | None = None
    walltime: str | None = None
    gpus_per_job: int | None = None
    cores_per_job: int | None = None
    memory_per_job: str | None = None
    workers_per_job: int | None = None
    job_extra: tuple[str, ...] = ()
    job_prologue: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("job_extra", "job_prologue"):  # lists from Python callers are kept as tuples
            object.__setattr__(self, name, tuple(getattr(self, name) or ()))

    @classmethod
    def of(cls, execution: Execution | None, *, workers: int = 0, scheduler: str | None = None,
           threads: int | None = None) -> Execution:
        """``execution``, or one built from the plain keyword arguments of :func:`run_study`; both at
        once is refused."""
        if execution is None:
            return cls(workers=workers, scheduler=scheduler, threads=threads)
        if workers or scheduler or threads:
            raise ValueError("give the execution options either as execution=Execution(...) or as "
                             "workers=/scheduler=/threads=, not both")
        return execution

    def given(self) -> dict[str, Any]:
        """The options set to something other than their default."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def check(self) -> None:
        """Refuse a combination that cannot run, naming the flag and the fix (ValueError)."""
        for name in ("workers", "threads", "workers_per_gpu", "jobs", "gpus_per_job", "cores_per_job",
                     "workers_per_job"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"{_flag(name)} must be an integer, got {value!r}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0 (0: sequential in this process), got {self.workers}")
        for name, least in (("threads", 1), ("workers_per_gpu", 1), ("jobs", 1), ("gpus_per_job", 0),
                            ("cores_per_job", 1), ("workers_per_job", 1)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{_flag(name)} must be >= {least}, got {value}")
        if self.scheduler and self.cluster:
            raise ValueError("give either --cluster (srrlab submits the jobs) or --scheduler (an existing Dask "
                             "cluster), not both")
        if self.workers and self.scheduler:
            raise ValueError("give either --workers (a local cluster) or --scheduler (an existing one), not both")
        if self.workers_per_gpu and self.scheduler:
            raise ValueError("--workers-per-gpu places the workers srrlab starts on this machine; the workers of "
                             "--scheduler run where they were started (start each with CUDA_VISIBLE_DEVICES set to "
                             "its GPU): drop --workers-per-gpu")
        if self.cluster is None:
            extra = [_flag(name) for name in _JOB_FIELDS if getattr(self, name) not in (None, ())]
            if extra:
                raise ValueError(f"{', '.join(extra)} {'sets' if len(extra) == 1 else 'set'} the batch jobs of "
                                 f"--cluster: add --cluster "
                                 f"{'|'.join(JOBQUEUE_SYSTEMS)}, or drop {', '.join(extra)}")
            return
        if self.cluster not in JOBQUEUE_SYSTEMS:
            raise ValueError(f"--cluster must be one of {', '.join(JOBQUEUE_SYSTEMS)}, got {self.cluster!r}")
        if self.workers:
            raise ValueError("--workers starts workers on this machine; with --cluster the workers are the jobs' "
                             "(--jobs N, each with one worker per GPU of --gpus-per-job): drop --workers")
        gpus = self.gpus_per_job or 0
        if self.workers_per_gpu and not gpus:
            raise ValueError("--workers-per-gpu with --cluster needs --gpus-per-job G (each job then runs G x k "
                             "workers); for CPU jobs use --workers-per-job")
        if self.workers_per_job and gpus:
            raise ValueError(f"with --gpus-per-job {gpus} a job runs one worker per GPU (x --workers-per-gpu): "
                             "drop --workers-per-job")

    def record(self) -> dict[str, Any]:
        """The batch-job options for the study's environment log (:func:`run_study`)."""
        return {name: (list(v) if isinstance(v, tuple) else v) for name, v in self.given().items()
                if name == "cluster" or name in _JOB_FIELDS}


@dataclass(frozen=True)
class Plan:
    """What one study call runs on (:func:`plan_execution`).

    ``kind``: "sequential", "local" (CPU worker processes), "gpu" (worker processes placed on GPUs),
    "scheduler" (an existing Dask cluster) or "jobqueue" (batch jobs). ``workers``: local worker
    processes ("local", "gpu"), or worker processes per job ("jobqueue"). ``threads``: torch threads
    of each task (None: the process's own count). ``gpus``: the ``CUDA_VISIBLE_DEVICES`` value of each
    local GPU worker. ``cores``, ``memory``: of each job ("jobqueue").
    """

    kind: str
    execution: Execution
    workers: int = 0
    threads: int | None = None
    gpus: tuple[str, ...] | None = None
    cores: int | None = None
    memory: str | None = None

    @property
    def parallel(self) -> bool:
        return self.kind != "sequential"

    def record(self) -> dict[str, Any]:
        """The keys :func:`run_study` adds to its environment log entry: ``workers`` (local worker
        processes), ``gpus`` (each local worker's GPU) and ``cluster`` (the batch jobs' settings)."""
        cluster = None
        if self.kind == "jobqueue":
            cluster = {**self.execution.record(), "jobs": self.execution.jobs or 1, "cores_per_job": self.cores,
                       "memory_per_job": self.memory, "workers_per_job": self.workers}
        return {"workers": self.workers if self.kind in ("local", "gpu") else self.execution.workers,
                "gpus": list(self.gpus) if self.gpus is not None else None, "cluster": cluster}


# -- GPUs ------------------------------------------------------------------------------------------------------
def parse_visible(value: str | None, count: int) -> list[str]:
    """The GPUs a process sees, as the ``CUDA_VISIBLE_DEVICES`` entries that name them (indices,
    ``GPU-<uuid>`` or ``MIG-<uuid>``), given the variable's ``value`` (None: unset, every GPU) and the
    ``count`` of GPUs CUDA reports. As CUDA does, the list ends at the first empty or negative entry
    ("-1" or "" hide every GPU), and only the first ``count`` entries are devices."""
    if value is None:
        return [str(i) for i in range(count)]
    visible: list[str] = []
    for entry in value.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        visible.append(entry)
    return visible[:count]


def visible_gpus(environ: dict[str, str] | None = None) -> list[str]:
    """:func:`parse_visible` of this process: its ``CUDA_VISIBLE_DEVICES`` and torch's device count."""
    import torch

    environ = os.environ if environ is None else environ
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return parse_visible(environ.get("CUDA_VISIBLE_DEVICES"), count)


def gpu_placement(visible: Sequence[str], workers_per_gpu: int | None = None, workers: int | None = None) -> list[str]:
    """The ``CUDA_VISIBLE_DEVICES`` value of each worker: ``workers`` workers (default: ``workers_per_gpu``
    (default 1) per GPU) over the ``visible`` GPUs, round-robin, so that worker i runs on GPU
    i mod len(visible) and no GPU holds more than ``workers_per_gpu`` when it is given."""
    visible = list(visible)
    if not visible:
        raise ValueError("no visible GPU to place workers on")
    if workers_per_gpu is not None and workers_per_gpu < 1:
        raise ValueError(f"--workers-per-gpu must be >= 1, got {workers_per_gpu}")
    n = len(visible)
    if workers:
        if workers_per_gpu and workers > n * workers_per_gpu:
            raise ValueError(f"--workers {workers} is more than --workers-per-gpu {workers_per_gpu} x {n} visible "
                             f"GPU(s) = {n * workers_per_gpu}: lower --workers or raise --workers-per-gpu")
        count = workers
    else:
        count = n * (workers_per_gpu or 1)
    return [visible[i % n] for i in range(count)]


def job_gpu(environ: dict[str, str], slot: int) -> str | None:
    """The GPU (a ``CUDA_VISIBLE_DEVICES`` value) of worker process number ``slot`` of a batch job that
    asked for ``$SRRLAB_GPUS_PER_JOB`` GPUs: the job's GPUs are those its ``CUDA_VISIBLE_DEVICES`` names
    (SLURM, PBS and LSF set it to the allocated ones), or 0..G-1 when it is unset; the processes take
    them round-robin (:func:`gpu_placement`). None when the job asked for no GPU or sees none."""
    try:
        gpus = int(environ.get(GPUS_PER_JOB_ENV) or 0)
    except ValueError:
        return None
    visible = parse_visible(environ.get("CUDA_VISIBLE_DEVICES"), gpus) if gpus > 0 else []
    return gpu_placement(visible, workers=slot + 1)[slot] if visible else None


# -- the plan ----------------------------------------------------------------------------------------------------
def plan_execution(execution: Execution, device: str, *, cores: int | None = None,
                   visible: Sequence[str] | None = None) -> Plan:
    """The :class:`Plan` of ``execution`` for a spec whose training ``device`` setting is ``device``
    ("auto", "cuda", "cuda:1", "cpu", …) on this machine (``cores``: its CPU count; ``visible``: its
    visible GPUs, :func:`visible_gpus` when None and needed). Local workers go on GPUs when the device
    is "cuda" or "auto" and a GPU is visible. Raises ValueError naming the flag when the combination
    cannot run here (e.g. ``--workers-per-gpu`` without CUDA, ``--cluster`` without dask-jobqueue)."""
    ex = execution
    ex.check()
    cores = cores or os.cpu_count() or 1
    if ex.cluster:
        return _plan_jobqueue(ex, device)
    if ex.scheduler:
        return Plan("scheduler", ex, threads=ex.threads)
    if not (ex.workers or ex.workers_per_gpu):
        return Plan("sequential", ex, threads=ex.threads)
    spreadable = device in ("auto", "cuda")
    if spreadable and visible is None:
        visible = visible_gpus()
    if spreadable and visible:
        gpus = gpu_placement(visible, ex.workers_per_gpu, ex.workers or None)
        return Plan("gpu", ex, workers=len(gpus), threads=ex.threads or max(1, cores // len(gpus)), gpus=tuple(gpus))
    if ex.workers_per_gpu:
        if not spreadable:
            why = (f"the spec trains on device {device!r}, one GPU for every worker" if device.startswith("cuda")
                   else f"the spec trains on device {device!r}")
            raise ValueError(f"--workers-per-gpu needs the spec's device to be \"cuda\" or \"auto\": {why}; set "
                             "device = \"cuda\" under [fixed] (choose the GPUs with CUDA_VISIBLE_DEVICES), or use "
                             "--workers N for CPU workers")
        raise ValueError("--workers-per-gpu needs CUDA, and this machine has no visible GPU (torch.cuda.is_available() "
                         "is False or CUDA_VISIBLE_DEVICES hides them all): use --workers N for CPU workers")
    return Plan("local", ex, workers=ex.workers, threads=ex.threads or max(1, cores // ex.workers))


def _plan_jobqueue(ex: Execution, device: str) -> Plan:
    import dask

    try:
        import dask_jobqueue  # noqa: F401
    except ImportError as exc:
        raise ValueError(f"--cluster {ex.cluster} needs dask-jobqueue ({exc}): pip install dask-jobqueue") from exc
    gpus = ex.gpus_per_job or 0
    if gpus and device not in ("auto", "cuda"):
        raise ValueError(f"--gpus-per-job {gpus}: the spec trains on device {device!r}; set device = \"cuda\" (or "
                         "\"auto\") under [fixed] so that each worker trains on its GPU, or drop --gpus-per-job")
    config = f"jobqueue.{ex.cluster}"
    cores = ex.cores_per_job or dask.config.get(f"{config}.cores", None)
    memory = ex.memory_per_job or dask.config.get(f"{config}.memory", None)
    missing = [flag for flag, value in (("--cores-per-job C", cores), ("--memory-per-job M", memory)) if not value]
    if missing:
        raise ValueError(f"--cluster {ex.cluster} needs {' and '.join(missing)} (e.g. --cores-per-job 8 "
                         f"--memory-per-job 32GB), or {config}.cores / {config}.memory in the Dask configuration")
    if not re.fullmatch(r"\s*[0-9.]+\s*[A-Za-z]*\s*", str(memory)):
        raise ValueError(f"--memory-per-job must be an amount like 16GB or 500MB, got {memory!r}")
    workers = gpus * (ex.workers_per_gpu or 1) if gpus else (ex.workers_per_job or 1)
    return Plan("jobqueue", ex, workers=workers, threads=ex.threads or max(1, int(cores) // workers),
                cores=int(cores), memory=str(memory).replace(" ", ""))


# -- starting the clusters ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _glibc_malloc_defaults() -> Iterator[None]:
    """Start local Dask workers without Dask's ``MALLOC_TRIM_THRESHOLD_`` and leave this process's
    environment as it was.

    Dask presets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers' environment. Any explicit glibc
    malloc threshold freezes the mmap threshold at 128 KiB, so every activation tensor of a training
    step is mapped and unmapped again: ~280k page faults/s and half the CPU in the kernel (measured:
    2.6-4.4 s per Fashion-MNIST epoch against 1.0-1.6 s outside Dask). Workers keep glibc's adaptive
    defaults; Dask's thread limits (OMP/MKL/OPENBLAS_NUM_THREADS=1) stay. The nannies also write those
    variables into *this* process's environment; it is restored once the workers are spawned, so that
    later subprocesses (and this process) keep their thread defaults.
    """
    import dask

    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    saved = dict(os.environ)
    try:
        with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def local_cluster(workers: int):
    """A local Dask cluster of ``workers`` single-threaded worker processes for training runs on the CPU
    (glibc's malloc defaults kept: :func:`_glibc_malloc_defaults`)."""
    from dask.distributed import LocalCluster

    with _glibc_malloc_defaults():
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                            silence_logs=logging.ERROR)


def gpu_worker_specs(gpus: Sequence[str], memory_limit: int | str = "auto",
                     env: dict[str, str] | None = None) -> dict[int, dict[str, Any]]:
    """The worker specs of :func:`gpu_cluster`: worker i is a ``Nanny`` with one Dask thread (one task at
    a time), ``memory_limit`` and the environment ``env`` plus ``CUDA_VISIBLE_DEVICES=gpus[i]``."""
    from dask.distributed import Nanny

    return {i: {"cls": Nanny, "options": {"nthreads": 1, "memory_limit": memory_limit, "host": "127.0.0.1",
                                          "dashboard": False, "silence_logs": logging.ERROR,
                                          "env": {**(env or {}), "CUDA_VISIBLE_DEVICES": gpu}}}
            for i, gpu in enumerate(gpus)}


def gpu_cluster(gpus: Sequence[str], env: dict[str, str] | None = None):
    """A local Dask ``SpecCluster`` of one worker process per entry of ``gpus`` (:func:`gpu_placement`),
    each seeing only its GPU (``CUDA_VISIBLE_DEVICES``, set before the worker process starts, so before
    CUDA is initialised in it) and an equal share of this machine's memory; ``env`` adds variables to
    every worker's environment (used by the tests)."""
    from dask.distributed import Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard": False, "dashboard_address": ":0"}}
    specs = gpu_worker_specs(gpus, memory_limit=MEMORY_LIMIT // max(1, len(gpus)), env=env)
    with _glibc_malloc_defaults():
        return SpecCluster(workers=specs, scheduler=scheduler, silence_logs=logging.ERROR)


def _job_name(name: str) -> str:
    return "srrlab-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "study")


def jobqueue_cluster(plan: Plan, *, directory: str | os.PathLike | None = None, name: str = "study"):
    """The dask-jobqueue cluster of a "jobqueue" :class:`Plan` (not yet scaled: no job is submitted).

    Each job asks for the plan's cores, memory and GPUs and runs ``plan.workers`` single-threaded
    worker processes (``dask worker --nworkers P --nthreads 1``; the job's cores go to the batch
    system's CPU request, and each task runs ``plan.threads`` torch threads), starts in this
    process's working directory (so relative paths of the spec and the study mean the same there),
    and loads the nanny preload :mod:`srrlab.study.worker_setup`, which gives each worker process of a
    GPU job its own GPU. Job output goes to ``directory/dask-jobs`` when ``directory`` is given. What
    the flags leave unset comes from the Dask configuration (``jobqueue.<system>.*``: interface,
    local-directory, python, scheduler-options, …); lists from there (directives, prologue, worker
    arguments) are kept and srrlab's are added.
    """
    import dask
    import dask_jobqueue
    from dask.utils import parse_bytes

    ex = plan.execution
    system = ex.cluster
    config = f"jobqueue.{system}"
    gpus = ex.gpus_per_job or 0
    cores, memory = plan.cores, plan.memory
    directives = list(dask.config.get(f"{config}.job-extra-directives", None) or [])
    prologue = [f"cd {shlex.quote(os.getcwd())}"]
    if gpus:
        prologue.append(f"export {GPUS_PER_JOB_ENV}={gpus}")
    prologue += list(dask.config.get(f"{config}.job-script-prologue", None) or []) + list(ex.job_prologue)
    kwargs: dict[str, Any] = {}
    if system == "slurm":
        kwargs["job_cpu"] = cores
        if gpus:
            directives.append(f"--gres=gpu:{gpus}")
        kwargs["account"] = ex.account
    elif system == "pbs":
        from dask_jobqueue.pbs import pbs_format_bytes_ceil

        kwargs["resource_spec"] = (f"select=1:ncpus={cores}" + (f":ngpus={gpus}" if gpus else "")
                                   + f":mem={pbs_format_bytes_ceil(parse_bytes(memory))}")
        kwargs["account"] = ex.account
    elif system == "lsf":
        kwargs["ncpus"] = cores
        if gpus:
            directives.append(f'-gpu "num={gpus}"')
        kwargs["project"] = ex.account
    else:  # sge: the parallel environment and GPU resource names are the site's (check the job script)
        if cores > 1:
            directives.append(f"-pe smp {cores}")
        if gpus:
            directives.append(f"-l gpu={gpus}")
        kwargs["project"] = ex.account
    directives += list(ex.job_extra)
    worker_args = list(dask.config.get(f"{config}.worker-extra-args", None) or []) + ["--preload-nanny", WORKER_SETUP]
    if directory is not None:
        kwargs["log_directory"] = str(Path(directory).resolve() / JOB_LOGS)
    if dask.config.get(f"{config}.name", None) in (None, "dask-worker"):
        kwargs["job_name"] = _job_name(name)
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster, "lsf": dask_jobqueue.LSFCluster,
           "sge": dask_jobqueue.SGECluster}[system]
    return cls(cores=plan.workers, processes=plan.workers, memory=memory, queue=ex.queue, walltime=ex.walltime,
               job_extra_directives=directives, job_script_prologue=prologue, worker_extra_args=worker_args,
               silence_logs=logging.ERROR, **{k: v for k, v in kwargs.items() if v is not None})


def job_script(execution: Execution, device: str = "auto", *, directory: str | os.PathLike | None = None) -> str:
    """The job script that ``execution`` (with ``cluster``) would submit for the study in ``directory``
    (a spec training on ``device``): what ``srrlab study run ... --print-job-script`` prints. Submits
    nothing and writes nothing (the job log folder is named, not created)."""
    import tempfile

    plan = plan_execution(execution, device)
    if plan.kind != "jobqueue":
        raise ValueError("--print-job-script shows the job script of --cluster: add --cluster "
                         f"{'|'.join(JOBQUEUE_SYSTEMS)}")
    real = Path(directory).resolve() if directory is not None else None
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "Port 8787 is already in use": this scheduler lives for a moment
        cluster = jobqueue_cluster(plan, directory=tmp if real else None, name=real.name if real else "study")
        try:
            text = cluster.job_script()
        finally:
            cluster.close()
    return text.replace(str(Path(tmp).resolve() / JOB_LOGS), str(real / JOB_LOGS)) if real else text


def keep_jobs(cluster, jobs: int, every: float = 1.0) -> None:
    """Keep ``jobs`` jobs of the dask-jobqueue ``cluster`` submitted: every ``every`` seconds, a job whose
    workers had all arrived and have all left (it ended: its walltime, a node failure, scancel) is
    dropped and a new one submitted in its place.

    dask-jobqueue does not do this for a job of several worker processes (its workers are named
    ``<job>-0``, ``<job>-1``, … and the cluster looks for ``<job>``), and ``scale(jobs=N)`` alone never
    resubmits. The tasks an ended job was running go back to the scheduler, and restart on another
    worker from their run folder's last checkpoint.
    """
    import asyncio

    from tornado.ioloop import PeriodicCallback

    seen: set[str] = set()
    closing: set = set()

    def check() -> None:
        present = {str(w.get("name")) for w in cluster.scheduler_info.get("workers", {}).values()}
        ended = []
        for name, spec in list(cluster.worker_spec.items()):
            if {f"{name}{suffix}" for suffix in spec.get("group", [""])} & present:
                seen.add(name)
            elif name in seen:
                ended.append(name)
        for name in ended:
            seen.discard(name)
            job = cluster.workers.pop(name, None)
            if job is not None:  # cancels the job: a no-op for one that ended
                task = asyncio.ensure_future(job.close())
                closing.add(task)
                task.add_done_callback(closing.discard)
        if ended:
            logging.getLogger(__name__).warning("batch job(s) %s ended; submitting replacements", ", ".join(ended))
            cluster.scale(jobs=jobs)  # opens every spec without a running job: the ended ones

    def install() -> None:
        callback = PeriodicCallback(check, every * 1000)
        cluster.periodic_callbacks["srrlab-keep-jobs"] = callback
        callback.start()

    cluster.loop.add_callback(install)


def start_cluster(plan: Plan, *, directory: str | os.PathLike | None = None, name: str = "study"):
    """Start the Dask cluster of ``plan`` (None for "sequential" and "scheduler"); a "jobqueue" cluster
    is scaled to ``jobs`` jobs and keeps that many (:func:`keep_jobs`)."""
    if plan.kind == "local":
        return local_cluster(plan.workers)
    if plan.kind == "gpu":
        return gpu_cluster(plan.gpus or ())
    if plan.kind == "jobqueue":
        cluster = jobqueue_cluster(plan, directory=directory, name=name)
        jobs = plan.execution.jobs or 1
        cluster.scale(jobs=jobs)
        keep_jobs(cluster, jobs)
        return cluster
    return None
