"""The nanny preload of the Dask workers of a batch job (``dask worker ... --preload-nanny
srrlab.study.worker_setup``, written into the job script by :func:`srrlab.study.cluster.jobqueue_cluster`).

A job runs its P worker processes with ``dask worker --nworkers P``, which gives them one environment.
This preload runs in each worker's nanny before the nanny spawns its worker process and edits that
process's environment:

* ``CUDA_VISIBLE_DEVICES``: in a job that asked for G GPUs (``$SRRLAB_GPUS_PER_JOB``), the nannies of
  the job number themselves 0..P-1 in the order they start, and nanny i gives its worker the job's GPU
  i mod G (:func:`srrlab.study.cluster.job_gpu`): one worker per GPU, or k per GPU when P = G x k; each
  worker sees exactly its GPU, as ``cuda:0``;
* ``MALLOC_TRIM_THRESHOLD_`` is removed, as for local workers (glibc's adaptive malloc thresholds:
  :func:`srrlab.study.cluster._glibc_malloc_defaults`).

The environment is set before the worker process starts, so before CUDA is initialised in it.
"""
from __future__ import annotations

import itertools
import logging
import os

from .cluster import job_gpu

logger = logging.getLogger(__name__)
_slots = itertools.count()  # one per nanny of this `dask worker` process: the nannies share this module


def dask_setup(server) -> None:
    env = getattr(server, "env", None)
    if env is None:  # loaded with --preload (a worker) instead of --preload-nanny: nothing to set here
        return
    for name in ("env", "pre_spawn_env"):
        getattr(server, name, {}).pop("MALLOC_TRIM_THRESHOLD_", None)
    slot = next(_slots)
    gpu = job_gpu(dict(os.environ), slot)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
        logger.info("srrlab worker %d of this job: CUDA_VISIBLE_DEVICES=%s", slot, gpu)
