"""The ``srrlab study`` and ``srrlab regularize`` commands: a thin layer over :mod:`srrlab.study`."""
from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["add_study_commands", "group_options"]


# -- study -----------------------------------------------------------------------------
def cmd_study_run(args: argparse.Namespace) -> int:
    from .study import run_study

    if args.print_job_script:
        return _print_job_script(args)
    t0 = time.perf_counter()
    table = run_study(args.spec, args.dir, execution=_execution(args), extend=args.extend, reuse=args.reuse,
                      progress=False if args.quiet else None, group=args.group)
    counts = table["status"].value_counts().to_dict()
    print(f"study {args.dir}: {len(table)} grid points; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"; this call took {time.perf_counter() - t0:.0f} s")
    print(f"next    srrlab study report {args.dir}")
    return 0


def cmd_study_report(args: argparse.Namespace) -> int:
    from .study import check_report, report_study

    options = dict(by=args.by, include_not_converged=args.include_not_converged or None,
                   permutations=args.permutations, bootstrap=args.bootstrap, seed=args.seed)
    if args.check:
        problems = check_report(args.dir, **options)
        for line in problems:
            print(f"{args.dir}: {line}")
        print(f"check   {args.dir}: " + ("correlation.csv and within.csv differ from the table's; rerun "
                                         f"`srrlab study report {args.dir}` with the options they were written with"
                                         if problems else "correlation.csv and within.csv re-derive exactly"))
        return 1 if problems else 0
    report = report_study(args.dir, **options)
    print(report.headline())
    print(f"report  {report.path}")
    return 0


def cmd_study_measure(args: argparse.Namespace) -> int:
    from .study import StudyStore, measure_study

    if args.print_job_script:
        return _print_job_script(args)
    t0 = time.perf_counter()
    names = [n.strip() for item in args.add for n in item.split(",") if n.strip()]
    table = measure_study(args.dir, names, args.network, execution=_execution(args),
                          progress=False if args.quiet else None)
    with StudyStore(args.dir) as store:
        done = store.environments()[-1]
        networks = store.spec().networks
    added = done["measure_keys_added"]
    print(f"study {args.dir}: {len(table)} grid points; measured {', '.join(added) or 'nothing new'} on "
          f"{done['rows_measured']} stored run(s); readings: {', '.join(networks)}; this call took "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"next    srrlab study report {args.dir}")
    return 0


# -- study export / import ------------------------------------------------------------
def _export_line(manifest: dict[str, Any]) -> str:
    size = sum(f["size"] for f in manifest["files"])
    runs = len({f["path"].split("/")[1] for f in manifest["files"] if "/" in f["path"]})
    return (f"study {manifest['study']!r}: {manifest['points']} grid points ("
            + ", ".join(f"{k} {v}" for k, v in manifest["statuses"].items()) + f"), {runs} run folders, "
            f"{len(manifest['files'])} files, {size / 1e6:.1f} MB"
            f"{'' if manifest.get('weights', True) else ' (without weights)'}; exported {manifest['created']} by srrlab "
            f"{manifest['srrlab']}, torch {manifest['torch']}")


def cmd_study_export(args: argparse.Namespace) -> int:
    from .study import export_study

    manifest = export_study(args.dir, args.out, weights=not args.no_weights)
    print(_export_line(manifest))
    print(f"export  {args.out}")
    print(f"next    copy it to the other machine, then: srrlab study import {args.out} DIR")
    return 0


def cmd_study_verify(args: argparse.Namespace) -> int:
    from .study import verify_export

    manifest = verify_export(args.export)
    print(_export_line(manifest))
    print(f"verified  every file of {args.export} matches its size and sha256 in the manifest")
    return 0


def cmd_study_import(args: argparse.Namespace) -> int:
    from .study import StudyStore, import_study

    path = import_study(args.export, args.dir)
    with StudyStore(path) as store:
        counts = store.counts()
    print(f"imported  {args.export} -> {path}: {sum(counts.values())} grid points ("
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "); every file matched the manifest")
    print(f"next    srrlab study report {path}   (or srrlab regularize report {path})")
    return 0


# -- regularize -------------------------------------------------------------------------
def _print_regularize(report: dict[str, Any]) -> None:
    import pandas as pd

    table = report["table"]
    if not table.empty:
        with pd.option_context("display.max_columns", None, "display.width", 200):
            print("test accuracy (%), mean ± std over seeds")
            print(table.to_string())
        print()
    for sentence in report["sentences"]:
        print(f"- {sentence}")
    print(f"report  {report['path']}")


def cmd_regularize_run(args: argparse.Namespace) -> int:
    from .study import run_regularize

    if args.print_job_script:
        return _print_job_script(args)
    t0 = time.perf_counter()
    report = run_regularize(args.spec, args.dir, execution=_execution(args), extend=args.extend, reuse=args.reuse,
                            progress=False if args.quiet else None, group=args.group)
    counts = report["runs"]["status"].value_counts().to_dict()
    print(f"experiment {args.dir}: {len(report['runs'])} runs; "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f"; this call took {time.perf_counter() - t0:.0f} s")
    _print_regularize(report)
    return 0


def cmd_regularize_report(args: argparse.Namespace) -> int:
    from .study import report_regularize

    _print_regularize(report_regularize(args.dir))
    return 0

def cmd_publish(args: argparse.Namespace) -> int:
    from .study import publish_study

    out = publish_study(args.dir, args.out)
    print(f"published  {args.dir} -> {out}: runs.csv, spec.toml, environment.json and the report rebuilt from them")
    print(f"check   srrlab study report {out} --check" if (out / "correlation.csv").exists() else
          f"next    srrlab regularize report {out}")
    return 0


# -- parsers ----------------------------------------------------------------------------
def _run_options(q: argparse.ArgumentParser, what: str, kind: str) -> None:
    """The options of a study-like run (``study run``, ``regularize run``): spec, folder, execution."""
    from .names import preset_names  # light: --help builds without torch

    q.add_argument("spec", metavar="SPEC", help=f"a preset ({', '.join(preset_names(kind))}) or a TOML file")
    q.add_argument("--dir", required=True, help=f"{what} folder (database, run folders, report)")
    q.add_argument("--extend", action="store_true", help=f"accept a spec that adds grid values to the {what} in --dir")
    q.add_argument("--reuse", action="append", default=[], metavar="OTHER",
                   help="the folder of another study whose finished runs with the same training and measure "
                        "settings fill this one's points instead of being trained again, e.g. the demo's runs "
                        "as seed 0 of demo-seeds (repeatable; docs/study.md, \"Seeds\")")
    _execution_options(q)
    group_options(q)


def _execution_options(q: argparse.ArgumentParser) -> None:
    """Where and how a study call runs (``study run``, ``study measure``, ``regularize run``): the fields
    of :class:`srrlab.study.cluster.Execution`, one flag each (docs/study.md, "Multi-GPU machines and
    clusters")."""
    q.add_argument("--workers", type=int, default=0,
                   help="local Dask worker processes (default 0: sequential); when the spec trains on CUDA they "
                        "are spread over the visible GPUs, round-robin")
    q.add_argument("--workers-per-gpu", type=int, metavar="K",
                   help="K local workers on each visible GPU (needs CUDA; with --workers N: at most K per GPU); "
                        "each worker sees only its GPU (CUDA_VISIBLE_DEVICES)")
    q.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://127.0.0.1:8786")
    q.add_argument("--threads", type=int,
                   help="torch threads per run (default: cores // workers; with --cluster cores per job // "
                        "workers per job)")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    c = q.add_argument_group("batch cluster (dask-jobqueue; the study's folder must be on a filesystem the jobs see)")
    c.add_argument("--cluster", choices=["slurm", "pbs", "lsf", "sge"],
                   help="submit batch jobs that run the study's workers; this process keeps the scheduler and the "
                        "database, so run it on the login node (in tmux/screen) and rerun it to continue")
    c.add_argument("--jobs", type=int, metavar="N", help="jobs kept running (default 1; an ended job is replaced)")
    c.add_argument("--queue", metavar="Q", help="queue / partition of the jobs")
    c.add_argument("--account", metavar="A", help="account / project the jobs are charged to")
    c.add_argument("--walltime", metavar="HH:MM:SS", help="time limit of each job")
    c.add_argument("--gpus-per-job", type=int, metavar="G",
                   help="GPUs per job: each job runs one worker per GPU (x --workers-per-gpu), each seeing only "
                        "its GPU")
    c.add_argument("--cores-per-job", type=int, metavar="C", help="CPU cores per job (shared by its workers)")
    c.add_argument("--memory-per-job", metavar="M", help="memory per job, e.g. 32GB (shared by its workers)")
    c.add_argument("--workers-per-job", type=int, metavar="P", help="workers of a job without GPUs (default 1)")
    c.add_argument("--job-extra", action="append", default=[], metavar="DIRECTIVE",
                   help="an extra directive for the job script, e.g. --job-extra=\"--constraint=a100\" "
                        "(repeatable)")
    c.add_argument("--job-prologue", action="append", default=[], metavar="LINE",
                   help="a shell line the job runs before its workers, e.g. \"module load cuda\" (repeatable)")
    c.add_argument("--print-job-script", action="store_true",
                   help="print the job script these options would submit, and exit (nothing is submitted)")


def _execution(args: argparse.Namespace):
    """The :class:`srrlab.study.cluster.Execution` of a command's execution options."""
    from .study.cluster import Execution

    return Execution(workers=args.workers, scheduler=args.scheduler, threads=args.threads,
                     workers_per_gpu=args.workers_per_gpu, cluster=args.cluster, jobs=args.jobs, queue=args.queue,
                     account=args.account, walltime=args.walltime, gpus_per_job=args.gpus_per_job,
                     cores_per_job=args.cores_per_job, memory_per_job=args.memory_per_job,
                     workers_per_job=args.workers_per_job, job_extra=tuple(args.job_extra),
                     job_prologue=tuple(args.job_prologue))


def _print_job_script(args: argparse.Namespace) -> int:
    """--print-job-script: the batch job script of the execution options, nothing submitted."""
    from .study.cluster import job_script

    print(job_script(_execution(args), directory=args.dir), end="")
    return 0


def group_options(q: argparse.ArgumentParser) -> None:
    """--group / --no-group: train the points that can share one stacked program as a group."""
    g = q.add_mutually_exclusive_group()
    g.add_argument("--group", choices=["auto", "on", "off"], default=None,
                   help="train points that differ only in seed, lr, weight decay or stopping as one stacked program: "
                        "auto (on CUDA, where it pays; not on a CPU), on, off (default: the spec's group, auto); "
                        "docs/performance.md")
    g.add_argument("--no-group", dest="group", action="store_const", const="off", help="same as --group off")


def _publish_parser(ssub, what: str) -> None:
    q = ssub.add_parser("publish", help=f"write the {what} in DIR as a published result folder OUT (runs.csv, "
                                        "spec.toml, environment.json, the report rebuilt from them)",
                        description=f"Write the {what} in DIR into OUT, e.g. docs/results/<name>: its tidy table "
                                    "(runs.csv), spec (spec.toml) and every call's environment (environment.json), "
                                    "then the report rebuilt from runs.csv + spec.toml alone, so that every table "
                                    "re-derives without the run folders (docs/study.md, \"Published results\"). "
                                    "OUT is replaced as a whole.")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("out", metavar="OUT")
    q.set_defaults(func=cmd_publish)


def add_study_commands(sub) -> None:
    """Add ``study`` and ``regularize`` with their subcommands to the subparsers ``sub``."""
    p = sub.add_parser("study", help="generalisation studies: run a grid of models, then report")
    ssub = p.add_subparsers(dest="study_command", required=True, metavar="STUDY_COMMAND")
    q = ssub.add_parser("run", help="train and measure every grid point of SPEC (resumable)")
    _run_options(q, "study", "study")
    q.set_defaults(func=cmd_study_run)
    q = ssub.add_parser("report", help="write report.md, figures, runs.parquet/csv, correlation.csv and within.csv into DIR (or rebuild them in a committed docs/results folder from its runs.csv + spec.toml)",
                        description="Report the study in DIR: one correlation table per stratum (--by, default the "
                                    "spec's [report] by) plus the pooled one, converged runs only unless "
                                    "--include-not-converged, every τ with its permutation p-value and bootstrap "
                                    "interval (docs/study.md).")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--by", metavar="SETTINGS",
                   help="one table per value of these comma-separated settings, e.g. dim (default: the spec's "
                        "[report] by; 'none' for a single table)")
    q.add_argument("--include-not-converged", action="store_true",
                   help="let runs that stopped at the epoch limit before the target enter the tables")
    q.add_argument("--permutations", type=int, default=10_000, help="permutations per p-value (default 10000)")
    q.add_argument("--bootstrap", type=int, default=2_000, help="bootstrap resamples per interval (default 2000)")
    q.add_argument("--seed", type=int, default=0, help="seed of the permutations and resamples (default 0)")
    q.add_argument("--check", action="store_true",
                   help="write nothing: re-derive correlation.csv and within.csv from DIR's table (its store, or a "
                        "committed runs.csv + spec.toml) with these options and compare them byte for byte with "
                        "the files in DIR; exit status 1 when they differ")
    q.set_defaults(func=cmd_study_report)
    from .names import NETWORKS  # light: --help builds without torch

    q = ssub.add_parser("measure", help="add measures or network readings to the study in DIR without retraining",
                        description="Add measures (--add) and network readings (--network) to the stored spec of the "
                                    "study in DIR and measure what its finished runs lack on their stored weights; "
                                    "nothing is retrained and existing values are kept. Rerunning continues an "
                                    "interrupted call (docs/study.md).")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("--add", action="append", default=[], metavar="NAME[,NAME...]",
                   help="measures to add, comma-separated ('all': every measure; repeatable; srrlab measure --list)")
    q.add_argument("--network", action="append", default=[], choices=list(NETWORKS),
                   help="a network reading to add: each measure that depends on the network is also measured on "
                        "it, as measure.<name>@<network> (repeatable; docs/measures.md)")
    _execution_options(q)
    q.set_defaults(func=cmd_study_measure)
    q = ssub.add_parser("export", help="write the study in DIR with a sha256 manifest to OUT (a folder, or a "
                                       ".tar/.tar.gz archive), to move it to another machine",
                        description="Write the study in DIR into the new folder (or .tar, .tar.gz, .tgz archive) OUT: "
                                    "spec.toml, runs.csv, points.jsonl (the database rows), meta.json, each run "
                                    "folder's results without its checkpoint, and manifest.json with every file's "
                                    "size and sha256 (docs/study.md).")
    q.add_argument("dir", metavar="DIR")
    q.add_argument("out", metavar="OUT")
    q.add_argument("--no-weights", action="store_true",
                   help="leave every run's weights out: the results and progress alone (a few kB per run), which "
                        "import, report and resume like a full export; `study measure` and --reuse need the "
                        "weights (docs/study.md, \"Moving a study\")")
    q.set_defaults(func=cmd_study_export)
    q = ssub.add_parser("import", help="check the export OUT against its manifest and rebuild the study in DIR",
                        description="Check every file of the export OUT (a folder or archive of `srrlab study export`) "
                                    "against its size and sha256, then rebuild the study (database and run folders) "
                                    "in the new folder DIR. A missing or damaged file fails the import with one "
                                    "error naming each, and nothing is written.")
    q.add_argument("export", metavar="OUT")
    q.add_argument("dir", metavar="DIR")
    q.set_defaults(func=cmd_study_import)
    q = ssub.add_parser("verify", help="check every file of the export OUT against its manifest (writes nothing)")
    q.add_argument("export", metavar="OUT")
    q.set_defaults(func=cmd_study_verify)
    _publish_parser(ssub, "study")

    p = sub.add_parser("regularize", help="the SRR regularisation experiment: variants x {CE, CE+SRR} x seeds "
                                          "(Tables 2/6)")
    ssub = p.add_subparsers(dest="regularize_command", required=True, metavar="REGULARIZE_COMMAND")
    q = ssub.add_parser("run", help="train every run of SPEC (resumable), then write the report",
                        description="Train every run of SPEC (a preset: demo, fmnist, paper; or a TOML file whose grid holds "
                                    "CE runs, srr_reg = 0, and regularised runs, srr_reg > 0), then write "
                                    "regularize.md, regularize.png and CSVs into --dir. Rerunning continues.")
    _run_options(q, "experiment", "regularize")
    q.set_defaults(func=cmd_regularize_run)
    q = ssub.add_parser("report", help="write the report of the experiment in DIR (finished or not; or a committed folder with runs.csv + spec.toml)")
    q.add_argument("dir", metavar="DIR")
    q.set_defaults(func=cmd_regularize_report)
    _publish_parser(ssub, "experiment")
