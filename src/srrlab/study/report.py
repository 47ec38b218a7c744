"""A study's report from its store (``srrlab study report DIR``), as the regularisation experiment's
is written by :func:`srrlab.study.report_regularize`."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .store import DB_NAME, StudyStore

__all__ = ["report_study"]


def report_study(directory: str | os.PathLike, *, by: str | Sequence[str] | None = None,
                 include_not_converged: bool | None = None, permutations: int = 10_000, bootstrap: int = 2_000,
                 seed: int = 0):
    """Write the report of the study in ``directory`` (finished or not) and return the
    :class:`srrlab.report.StudyReport`.

    Strata and the not-converged rule come from the spec's ``[report]`` table unless given: ``by``
    is a list of axes or a comma-separated string (``"none"``: one table over all models).
    """
    from ..report import write_study_report

    if not (Path(directory) / DB_NAME).exists():
        raise FileNotFoundError(f"{directory} holds no study (no {DB_NAME}); run `srrlab study run SPEC --dir {directory}`")
    with StudyStore(directory) as store:
        spec = store.spec()
        table = store.table()
    if by is None:
        strata = spec.report_by
    else:
        items = by.split(",") if isinstance(by, str) else list(by)
        strata = [b.strip() for b in items if b.strip() and b.strip() != "none"]
    include = spec.include_not_converged if include_not_converged is None else include_not_converged
    return write_study_report(table, directory, axes=[f"hp.{a}" for a in spec.axes], title=f"srrlab study: {spec.name}",
                              spec_text=spec.source, by=strata, include_not_converged=include,
                              permutations=permutations, bootstrap=bootstrap, seed=seed)
