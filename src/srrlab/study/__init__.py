"""The generalisation study (docs/theory.md §6): a grid of models, trained, measured, stored, reported.

``run_study(spec, dir)`` trains every grid point once (resumable, sequential or on Dask) and
keeps a SQLite store in ``dir``; :func:`report_study` (``srrlab study report DIR``) writes
``report.md``, figures and tables from the store (:func:`srrlab.report.write_study_report`).
``run_regularize(spec, dir)`` is the regularisation experiment (docs/theory.md §7): a study over CE and
CE + SRR arms × seeds, reported in the layout of the paper's Tables 2 and 6.
"""
from .regularize import arm_axis, load_regularize_spec, report_regularize, run_regularize
from .report import report_study
from .runner import execute_point, run_study
from .spec import PRESETS, SpecError, StudySpec, load_spec, point_id
from .store import STUDY_STATUSES, StudyStore

__all__ = ["PRESETS", "STUDY_STATUSES", "SpecError", "StudySpec", "StudyStore", "arm_axis", "execute_point",
           "load_regularize_spec", "load_spec", "point_id", "report_regularize", "report_study", "run_regularize", "run_study"]
