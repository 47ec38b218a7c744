"""Publishing a population: the folder a reader re-derives every number from, without retraining.

``srrlab study publish DIR OUT`` (and ``srrlab regularize publish``) writes, from a study's store::

    runs.csv           the tidy table (id, status, hp.*, gen.*, measure.*), exactly StudyStore.table()
    spec.toml          the spec the study ran (the stored text)
    environment.json   where and with what it ran: every call's environment (StudyStore.environments())
    …                  the report rebuilt from runs.csv + spec.toml alone (report.md, figures, and the
                       tables that re-derive byte for byte: correlation.csv and within.csv for a study,
                       the regularisation tables for a regularisation experiment)

The report is written by the same code that rebuilds it from the committed files
(:func:`srrlab.study.report_study`, :func:`srrlab.study.report_regularize`), so a published folder
re-derives by construction, and ``tests/test_report_rebuild.py`` / ``tests/test_regularize_results.py``
check every folder under ``docs/results/`` (docs/study.md, "Published results").
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import Any

from .spec import SpecError, StudySpec
from .store import DB_NAME, StudyStore
from .transfer import SPEC_FILE, TABLE_FILE

__all__ = ["ENVIRONMENT_FILE", "publish_study", "study_kind"]

ENVIRONMENT_FILE = "environment.json"


def study_kind(spec: StudySpec) -> str:
    """``"regularize"`` for a regularisation experiment (its grid holds CE and CE + SRR arms,
    :func:`~srrlab.study.arm_axis`), else ``"study"`` (a generalisation study)."""
    from .regularize import arm_axis

    try:
        arm_axis(spec)
    except SpecError:
        return "study"
    return "regularize"


def _environment(spec: StudySpec, executions: list[dict[str, Any]]) -> dict[str, Any]:
    """``environment.json``: the population, when it was published, and every call that trained or
    measured it (the first call that trained gives the summary fields: commit, torch, threads, workers)."""
    from .runner import _git_commit

    trained = [e for e in executions if e.get("points_trained")] or executions
    first = trained[0] if trained else {}
    commit, dirty = _git_commit()
    return {
        "population": spec.name,
        "published": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "published_from_commit": commit, "published_from_dirty_tree": dirty,
        "srrlab_commit": first.get("git_commit"), "torch": first.get("torch"), "threads": first.get("threads"),
        "workers": first.get("workers"), "date": first.get("date"), "device": first.get("device"),
        "executions": executions,
    }


def publish_study(directory: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the published folder of the study (or regularisation experiment) in ``directory`` to
    ``out`` (see the module docstring) and return ``out``. ``out`` is replaced as a whole: the new
    folder is written next to it and renamed into place, so a failure leaves the old one untouched."""
    from .regularize import report_regularize
    from .report import report_study

    source = Path(directory)
    if not (source / DB_NAME).exists():
        raise FileNotFoundError(f"{directory} holds no study (no {DB_NAME}): publish the folder a study ran in "
                                f"(`srrlab study run SPEC --dir DIR`)")
    with StudyStore(source) as store:
        spec, table, executions = store.spec(), store.table(), store.environments()
    target = Path(out)
    staging = target.with_name(f".{target.name}.publishing")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        table.to_csv(staging / TABLE_FILE, index=False, lineterminator="\n")
        (staging / SPEC_FILE).write_text(spec.source, encoding="utf-8")
        (staging / ENVIRONMENT_FILE).write_text(json.dumps(_environment(spec, executions), indent=2) + "\n",
                                                encoding="utf-8")
        if study_kind(spec) == "regularize":
            report_regularize(staging)
        else:
            report_study(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
