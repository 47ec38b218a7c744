"""Where a study runs (srrlab.study.cluster), tested without a GPU or a batch cluster: the placement of
workers on GPUs, the execution plan and its errors, the per-worker environment of a local GPU cluster,
the job scripts dask-jobqueue writes for the documented settings, and a job script run by bash against
a local scheduler (its workers reach the scheduler, import srrlab and get one GPU each)."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from srrlab.study.cluster import (Execution, gpu_placement, gpu_worker_specs, job_gpu, job_script, parse_visible,
                                  plan_execution)


# -- placement: pure ----------------------------------------------------------------------------------------------
def test_gpu_placement_one_per_gpu_k_per_gpu_and_round_robin():
    assert gpu_placement(["0", "1", "2"]) == ["0", "1", "2"]
    assert gpu_placement(["0", "1"], workers_per_gpu=2) == ["0", "1", "0", "1"]
    assert gpu_placement(["0", "1"], workers=3) == ["0", "1", "0"]  # --workers 3 on 2 GPUs
    assert gpu_placement(["0", "1"], workers_per_gpu=3, workers=4) == ["0", "1", "0", "1"]
    uuids = ["GPU-8f2c", "MIG-1a2b"]  # CUDA_VISIBLE_DEVICES may name devices by UUID: kept as given
    assert gpu_placement(uuids, workers_per_gpu=2) == uuids * 2
    with pytest.raises(ValueError, match=r"--workers 5 is more than --workers-per-gpu 2 x 2 visible GPU\(s\) = 4"):
        gpu_placement(["0", "1"], workers_per_gpu=2, workers=5)
    with pytest.raises(ValueError, match="no visible GPU"):
        gpu_placement([])


def test_parse_visible_follows_cuda_visible_devices():
    assert parse_visible(None, 3) == ["0", "1", "2"]
    assert parse_visible("4,6", 2) == ["4", "6"]
    assert parse_visible(" GPU-aa , GPU-bb ", 2) == ["GPU-aa", "GPU-bb"]
    assert parse_visible("2,5,7", 2) == ["2", "5"]  # only as many as CUDA reports
    assert parse_visible("1,-1,3", 3) == ["1"]  # CUDA stops at the first invalid entry
    assert parse_visible("", 4) == [] and parse_visible("-1", 4) == []
    assert parse_visible("0,1", 0) == []


def test_job_gpu_gives_each_process_of_a_job_its_gpu():
    slurm = {"SRRLAB_GPUS_PER_JOB": "2", "CUDA_VISIBLE_DEVICES": "3,5"}  # SLURM names the allocated GPUs
    assert [job_gpu(slurm, slot) for slot in range(4)] == ["3", "5", "3", "5"]  # 2 per GPU
    assert [job_gpu({"SRRLAB_GPUS_PER_JOB": "2"}, slot) for slot in range(2)] == ["0", "1"]  # unset: 0..G-1
    assert job_gpu({}, 0) is None and job_gpu({"SRRLAB_GPUS_PER_JOB": "0"}, 0) is None
    assert job_gpu({"SRRLAB_GPUS_PER_JOB": "2", "CUDA_VISIBLE_DEVICES": ""}, 0) is None


# -- the plan ------------------------------------------------------------------------------------------------------
def test_plan_places_local_workers_on_gpus_with_threads_per_worker():
    eight = [str(i) for i in range(8)]
    plan = plan_execution(Execution(workers=8), "cuda", cores=64, visible=eight)
    assert (plan.kind, plan.gpus, plan.workers, plan.threads) == ("gpu", tuple(eight), 8, 8)
    plan = plan_execution(Execution(workers_per_gpu=3), "auto", cores=16, visible=["1", "3"])
    assert (plan.gpus, plan.threads) == (("1", "3", "1", "3", "1", "3"), 2)
    assert plan.record() == {"workers": 6, "gpus": ["1", "3", "1", "3", "1", "3"], "cluster": None}
    assert plan_execution(Execution(workers=2, threads=5), "auto", cores=16, visible=["0"]).threads == 5
    # CPU: as before, cores // workers
    for device, visible in (("cpu", ["0"]), ("auto", []), ("cuda:1", ["0", "1"])):
        plan = plan_execution(Execution(workers=2), device, cores=16, visible=visible)
        assert (plan.kind, plan.gpus, plan.threads) == ("local", None, 8)
    assert plan_execution(Execution(), "cuda", cores=16, visible=["0"]).kind == "sequential"
    assert plan_execution(Execution(scheduler="tcp://h:1"), "cuda").kind == "scheduler"


@pytest.mark.parametrize("execution, device, visible, match", [
    (Execution(workers_per_gpu=2), "auto", [], r"--workers-per-gpu needs CUDA.*use --workers N"),
    (Execution(workers_per_gpu=2), "cpu", ["0"], r"--workers-per-gpu needs the spec's device.*'cpu'.*device = \"cuda\""),
    (Execution(workers_per_gpu=2), "cuda:1", ["0"], r"--workers-per-gpu.*'cuda:1'"),
    (Execution(workers_per_gpu=0), "cuda", ["0"], "--workers-per-gpu must be >= 1"),
    (Execution(workers_per_gpu=1, scheduler="tcp://h:1"), "cuda", ["0"], "drop --workers-per-gpu"),
    (Execution(workers=2, scheduler="tcp://h:1"), "cpu", [], "either --workers"),
    (Execution(cluster="slurm", scheduler="tcp://h:1"), "cpu", [], "either --cluster"),
    (Execution(queue="gpu", walltime="1:00:00"), "cpu", [], r"--queue, --walltime .*add --cluster slurm\|pbs"),
    (Execution(cluster="slurm", workers=4, cores_per_job=4, memory_per_job="8GB"), "cpu", [], "drop --workers"),
    (Execution(cluster="slurm", workers_per_gpu=2, cores_per_job=4, memory_per_job="8GB"), "cuda", [],
     "needs --gpus-per-job"),
    (Execution(cluster="slurm", gpus_per_job=2, workers_per_job=3, cores_per_job=4, memory_per_job="8GB"), "cuda",
     [], "drop --workers-per-job"),
    (Execution(cluster="slurm", gpus_per_job=1, cores_per_job=4, memory_per_job="8GB"), "cpu", [],
     r"--gpus-per-job 1: the spec trains on device 'cpu'"),
    (Execution(cluster="slurm", memory_per_job="8GB"), "cpu", [], r"needs --cores-per-job C \(e.g."),
    (Execution(cluster="slurm", cores_per_job=4, memory_per_job="lots"), "cpu", [], "--memory-per-job must be"),
    (Execution(cluster="condor"), "cpu", [], "--cluster must be one of slurm, pbs, lsf, sge"),
    (Execution(jobs=0, cluster="slurm"), "cpu", [], "--jobs must be >= 1"),
])
def test_plan_refuses_bad_combinations_naming_the_flag(execution, device, visible, match):
    with pytest.raises(ValueError, match=match):
        plan_execution(execution, device, cores=8, visible=visible)


def test_cluster_without_dask_jobqueue_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # import fails as if not installed
    with pytest.raises(ValueError, match="--cluster slurm needs dask-jobqueue.*pip install dask-jobqueue"):
        plan_execution(Execution(cluster="slurm", cores_per_job=4, memory_per_job="8GB"), "auto")


def test_plan_of_batch_jobs_threads_and_record():
    ex = Execution(cluster="slurm", jobs=3, gpus_per_job=4, workers_per_gpu=2, cores_per_job=32,
                   memory_per_job="64GiB", queue="gpu")
    plan = plan_execution(ex, "auto")
    assert (plan.kind, plan.workers, plan.threads, plan.cores, plan.memory) == ("jobqueue", 8, 4, 32, "64GiB")
    assert plan.record()["cluster"] == {"cluster": "slurm", "jobs": 3, "queue": "gpu", "gpus_per_job": 4,
                                        "cores_per_job": 32, "memory_per_job": "64GiB", "workers_per_job": 8}
    cpu = plan_execution(Execution(cluster="pbs", cores_per_job=16, memory_per_job="32GB", workers_per_job=4), "cpu")
    assert (cpu.workers, cpu.threads) == (4, 4)


def test_execution_of_keyword_arguments():
    assert Execution.of(None, workers=2, threads=3) == Execution(workers=2, threads=3)
    with pytest.raises(ValueError, match="not both"):
        Execution.of(Execution(workers_per_gpu=1), workers=2)


# -- local GPU workers: specs and a real SpecCluster ----------------------------------------------------------------
def test_gpu_worker_specs():
    from dask.distributed import Nanny

    specs = gpu_worker_specs(["0", "1", "0"], memory_limit=1000)
    assert list(specs) == [0, 1, 2]
    assert all(s["cls"] is Nanny and s["options"]["nthreads"] == 1 and s["options"]["memory_limit"] == 1000
               for s in specs.values())
    assert [s["options"]["env"]["CUDA_VISIBLE_DEVICES"] for s in specs.values()] == ["0", "1", "0"]


def test_gpu_cluster_workers_see_their_own_environment():
    """The per-worker env of the SpecCluster reaches each worker process (here on a CPU: nothing reads it)."""
    from dask.distributed import Client

    from srrlab.study.cluster import gpu_cluster

    before = dict(os.environ)
    with gpu_cluster(["7", "GPU-test"], env={"SRRLAB_TEST_MARK": "m"}) as cluster, Client(cluster) as client:
        assert dict(os.environ) == before
        # a lambda travels by value: the workers need not import this module (nor srrlab, torch)
        seen = sorted(client.run(lambda: {k: os.environ.get(k) for k in (
            "CUDA_VISIBLE_DEVICES", "SRRLAB_TEST_MARK", "MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}).values(),
            key=lambda e: e["CUDA_VISIBLE_DEVICES"])
    assert seen == [{"CUDA_VISIBLE_DEVICES": gpu, "SRRLAB_TEST_MARK": "m", "MALLOC_TRIM_THRESHOLD_": None,
                     "OMP_NUM_THREADS": "1"} for gpu in ("7", "GPU-test")]


# -- batch jobs: the job scripts, and one run by bash ------------------------------------------------------------
DOCUMENTED = dict(jobs=4, queue="gpu", account="proj", walltime="12:00:00", gpus_per_job=4, cores_per_job=32,
                  memory_per_job="128GiB", job_extra=("--constraint=a100",), job_prologue=("module load cuda",))


@pytest.mark.parametrize("system, expected", [
    ("slurm", ["#SBATCH -J srrlab-c10", "#SBATCH -p gpu", "#SBATCH -A proj", "#SBATCH --cpus-per-task=32",
               "#SBATCH --mem=128G", "#SBATCH -t 12:00:00", "#SBATCH --gres=gpu:4", "#SBATCH --constraint=a100",
               "#SBATCH -e {logs}/srrlab-c10-%J.err"]),
    ("pbs", ["#PBS -q gpu", "#PBS -A proj", "#PBS -l select=1:ncpus=32:ngpus=4:mem=128GB",
             "#PBS -l walltime=12:00:00", "#PBS --constraint=a100"]),
    ("lsf", ["#BSUB -q gpu", '#BSUB -P "proj"', "#BSUB -n 32", "#BSUB -W 12:00:00", '#BSUB -gpu "num=4"']),
    ("sge", ["#$ -q gpu", "#$ -P proj", "#$ -l h_rt=12:00:00", "#$ -pe smp 32", "#$ -l gpu=4"]),
])
def test_job_script_of_the_documented_settings(system, expected, tmp_path):
    study = tmp_path / "c10"
    text = job_script(Execution(cluster=system, **DOCUMENTED), directory=study)
    lines = text.splitlines()
    for line in expected:
        assert line.format(logs=study / "dask-jobs") in lines, (line, text)
    assert f"cd {Path.cwd()}" in lines and "export SRRLAB_GPUS_PER_JOB=4" in lines and "module load cuda" in lines
    (worker,) = [line for line in lines if "distributed.cli.dask_worker" in line]
    assert worker.startswith(f"{sys.executable} -m distributed.cli.dask_worker tcp://")
    assert re.search(r"--nthreads 1 .*--nworkers 4 .*--preload-nanny srrlab.study.worker_setup", worker)
    assert not study.exists()  # printing a job script writes nothing


FAKE_SBATCH = """#!/bin/bash
# SLURM's sbatch, played by bash: keep a copy of the job script (as sbatch does), run it in its own session
script=$(mktemp "$FAKE_SLURM/job-XXXXXX.sh"); cp "$1" "$script"
setsid bash "$script" > "$script.log" 2>&1 < /dev/null &
echo $! >> "$FAKE_SLURM/submitted"
echo "Submitted batch job $!"
"""
FAKE_SCANCEL = """#!/bin/bash
kill -TERM -- "-$1" 2>/dev/null; echo "$1" >> "$FAKE_SLURM/cancelled"
"""


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _environ_of_workers(client) -> list[tuple]:
    return sorted(client.run(lambda: (__import__("srrlab").__name__, os.environ.get("CUDA_VISIBLE_DEVICES"),
                                      os.environ.get("MALLOC_TRIM_THRESHOLD_"))).values())


def test_job_script_run_by_bash_one_worker_per_gpu_and_an_ended_job_replaced(tmp_path, monkeypatch):
    """What SLURM does with the job script, done by bash (a stand-in sbatch and scancel on PATH): the
    job's two worker processes reach this process's scheduler, import srrlab and get one of the job's GPUs
    each (CUDA_VISIBLE_DEVICES as SLURM sets it for --gres=gpu:2); a job that ends (killed, as at its
    walltime) is replaced by a new one; closing the cluster cancels the jobs."""
    from dask.distributed import Client

    import srrlab
    from srrlab.study.cluster import start_cluster

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM", str(tmp_path))
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("PYTHONPATH", str(Path(srrlab.__file__).parents[1]))
    plan = plan_execution(Execution(cluster="slurm", jobs=1, gpus_per_job=2, cores_per_job=2, memory_per_job="2GB"),
                          "auto")
    cluster = start_cluster(plan, directory=tmp_path / "study", name="t")
    try:
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=90)
            assert _environ_of_workers(client) == [("srrlab", "3", None), ("srrlab", "5", None)]
            (first,) = _lines(tmp_path / "submitted")
            time.sleep(1.5)  # the cluster notes the job's workers (every second)
            os.killpg(int(first), signal.SIGKILL)  # the job ends
            deadline = time.monotonic() + 90
            while len(_lines(tmp_path / "submitted")) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
            assert _environ_of_workers(client) == [("srrlab", "3", None), ("srrlab", "5", None)]
    finally:
        cluster.close()
        for pid in _lines(tmp_path / "submitted"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid), signal.SIGKILL)
    submitted = _lines(tmp_path / "submitted")
    assert len(submitted) == 2 and set(submitted) <= set(_lines(tmp_path / "cancelled"))
    assert (tmp_path / "study" / "dask-jobs").is_dir()


# -- the command line: one set of flags for study run, study measure and regularize run ---------------------------
def test_execution_flags_of_every_study_command(tmp_path):
    from srrlab.cli import build_parser
    from srrlab.cli_study import _execution

    flags = ["--cluster", "slurm", "--jobs", "2", "--queue", "gpu", "--walltime", "12:00:00", "--gpus-per-job", "4",
             "--workers-per-gpu", "2", "--cores-per-job", "32", "--memory-per-job", "128GiB",
             "--job-extra=--constraint=a100", "--job-prologue", "module load cuda"]
    expected = Execution(cluster="slurm", jobs=2, queue="gpu", walltime="12:00:00", gpus_per_job=4, workers_per_gpu=2,
                         cores_per_job=32, memory_per_job="128GiB", job_extra=("--constraint=a100",),
                         job_prologue=("module load cuda",))
    for command in (["study", "run", "demo", "--dir", "d"], ["study", "measure", "d"],
                    ["regularize", "run", "demo", "--dir", "d"]):
        assert _execution(build_parser().parse_args(command + flags)) == expected, command


def test_print_job_script(tmp_path, capsys):
    from srrlab.cli import main

    study = tmp_path / "c10"
    assert main(["study", "run", "demo", "--dir", str(study), "--cluster", "slurm", "--gpus-per-job", "4",
                 "--cores-per-job", "32", "--memory-per-job", "128GiB", "--print-job-script"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:4" in out and "--nworkers 4" in out and not study.exists()
