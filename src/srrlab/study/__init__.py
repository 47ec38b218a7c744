"""The generalisation study (docs/theory.md §6): a grid of models, trained, measured, stored, reported.

``run_study(spec, dir)`` trains every grid point once (resumable, sequential or on Dask) and
keeps a SQLite store in ``dir``; :func:`measure_study` adds measures to a finished study without
retraining; :func:`report_study` (``srrlab study report DIR``) writes
``report.md``, figures and tables from the store, or from a committed ``runs.csv`` + ``spec.toml``
(:func:`srrlab.report.write_study_report`; :func:`report_tables` re-derives its CSVs exactly).
``run_regularize(spec, dir)`` is the regularisation experiment (docs/theory.md §7): a study over CE and
CE + SRR arms × seeds, reported in the layout of the paper's Tables 2 and 6.
:func:`export_study` / :func:`import_study` (``srrlab study export|import``) move a study between
machines with a sha256 manifest (:mod:`srrlab.study.transfer`); :class:`Execution` (``run_study(...,
execution=...)``) places workers on GPUs or runs the study on a batch cluster's jobs
(:mod:`srrlab.study.cluster`); :func:`publish_study` (``srrlab study
publish``) writes the folder a population is committed as (``docs/results/<name>/``);
:func:`reuse_runs` (``run_study(..., reuse=[dir])``, ``--reuse DIR``) fills grid points with another
study's finished runs of the same settings (:mod:`srrlab.study.reuse`).
"""
from .regularize import arm_axis, load_regularize_spec, regularize_tables, report_regularize, run_regularize
from .report import check_report, load_study, report_study, report_tables
from .publish import publish_study
from .reuse import reuse_runs
from .cluster import Execution
from .runner import execute_point, measure_study, run_study
from .spec import PRESETS, SpecError, StudySpec, load_spec, point_id
from .store import STUDY_STATUSES, StudyStore
from .transfer import export_study, import_study, read_results, verify_export

__all__ = ["Execution", "PRESETS", "STUDY_STATUSES", "SpecError", "StudySpec", "StudyStore", "arm_axis", "check_report", "execute_point",
           "load_regularize_spec", "load_spec", "load_study", "measure_study", "point_id", "report_regularize", "report_study",
           "report_tables", "run_regularize", "run_study", "export_study", "import_study", "verify_export", "read_results",
           "regularize_tables", "publish_study", "reuse_runs"]
