"""Reusing finished runs of other studies: a grid point whose training another study already did,
with the same settings, takes that study's run folder and row instead of being trained again
(``srrlab study run SPEC --dir DIR --reuse OTHER``; docs/study.md, "Seeds").

The typical use is a population grown over seeds: ``demo-seeds`` repeats the ``demo`` preset's 32
grid points with seeds 0-7, and the demo's own runs are exactly its seed-0 points. Two runs are the
same when their :class:`~srrlab.train.TrainConfig` (what :meth:`StudySpec.train_config` gives for
each point) agree in everything but the execution settings (:data:`srrlab.options.EXECUTION_SETTINGS`:
device, compile, eval batch size), and a study's stored measure values can only be taken when both
studies measure with the same settings (:meth:`StudySpec.effective_measure_settings`); otherwise
nothing is reused and the error names the settings that differ. Only rows that finished with a
model (``done`` or ``not-converged``) and their final weights are taken, each with its run folder (weights, metrics,
checkpoint), copied whole before the row is written, so a killed call leaves each point either
pending or reused. Measures the other study lacks are measured afterwards like any measure added
to a study. Each call logs what it took, and from where, with the other study's own execution
records, in the study's environments (``environment.json`` when published).
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..options import EXECUTION_SETTINGS
from ..runs import MEASURABLE_STATUSES, RunFolder
from .spec import SpecError, StudySpec
from .store import DB_NAME, StudyStore

__all__ = ["reuse_runs", "training_key"]


def training_key(spec: StudySpec, point: dict[str, Any]) -> str:
    """What a grid point trains, as text: the point's :class:`~srrlab.train.TrainConfig` without its
    execution settings (equal keys, equal training)."""
    config = dataclasses.asdict(spec.train_config(point))
    for key in EXECUTION_SETTINGS:
        config.pop(key, None)
    return json.dumps(config, sort_keys=True, default=str)


def _copy_folder(source: Path, target: Path) -> None:
    """Copy the run folder ``source`` to ``target`` whole (through a temporary sibling, then a rename)."""
    if target.exists():  # a pending point's folder is an interrupted attempt of this study: replaced
        shutil.rmtree(target)
    tmp = target.with_name(f".{target.name}.reuse-tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, tmp)
    os.replace(tmp, target)


def reuse_runs(store: StudyStore, sources: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Fill the pending points of the study in ``store`` with the finished runs of the studies in
    ``sources`` (folders holding a ``study.sqlite``; an imported export is one) that trained the
    same settings; the first source that has a point wins. Returns the entry logged in the study's
    environments: ``{"date", "reused": [{"source", "rows", "executions"}, …]}``.

    Raises ``FileNotFoundError`` for a source without a study, ``ValueError`` for the study itself
    as a source, and :class:`SpecError` when a source measures with other settings.
    """
    spec = store.spec()
    if spec is None:
        raise ValueError(f"{store.dir} holds no study yet; attach its spec before reusing runs")
    pending = {training_key(spec, point): (run_id, point)
               for run_id, point, status in store.unfinished() if status == "pending"}
    entry: dict[str, Any] = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                             "reused": []}
    for source in map(Path, sources):
        if not (source / DB_NAME).is_file():
            raise FileNotFoundError(f"--reuse {source}: no study there (no {DB_NAME}); give the folder of a study "
                                    "(`srrlab study import EXPORT DIR` rebuilds one from an export)")
        if source.resolve() == store.dir.resolve():
            raise ValueError(f"--reuse {source} is the study itself; give another study's folder")
        with StudyStore(source) as other:
            other_spec, rows, executions = other.spec(), other.rows(), other.environments()
        mine, theirs = spec.effective_measure_settings(), other_spec.effective_measure_settings()
        if mine != theirs:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise SpecError(f"--reuse {source}: its study measures with other settings ({', '.join(differ)}: "
                            f"{ {k: theirs.get(k) for k in differ} } there, { {k: mine.get(k) for k in differ} } "
                            "here), so its stored values would not be this study's; reuse needs the same "
                            "[measures.settings]")
        taken = 0
        for row in rows:
            if row["status"] not in MEASURABLE_STATUSES:
                continue
            key = training_key(other_spec, json.loads(row["point"]))
            if key not in pending:
                continue
            folder = source / "runs" / row["id"]
            if not RunFolder(folder).has_weights("final"):
                continue  # a row without its run folder or weights (an export --no-weights) cannot be measured further
            run_id, _ = pending.pop(key)
            _copy_folder(folder, store.dir / "runs" / run_id)
            store.adopt(run_id, row)
            taken += 1
        entry["reused"].append({"source": str(source), "study": other_spec.name, "rows": taken,
                                "executions": executions})
    if any(r["rows"] for r in entry["reused"]):
        store.log_environment(entry)
    return entry
