"""The study store: one SQLite database (WAL) per study folder, one row per grid point.

Only the client process (the one running :func:`srrlab.study.run_study`) writes it; workers
return results. Every update is one transaction, so a killed study leaves each row either
before or after the update.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..options import EXECUTION_SETTINGS
from ..runs import FINAL_STATUSES as FINAL
from ..runs import STUDY_STATUSES, tidy_row
from .spec import SpecError, StudySpec, point_id

__all__ = ["StudyStore", "STUDY_STATUSES", "DB_NAME"]

DB_NAME = "study.sqlite"
# Row states (srrlab.runs.STUDY_STATUSES): pending → running → done | not-converged | diverged | failed.

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    idx INTEGER NOT NULL,
    point TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    summary TEXT,
    measures TEXT,
    warnings TEXT
);
"""


class StudyStore:
    """The database of one study folder (``<dir>/study.sqlite``)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / DB_NAME
        self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> StudyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the spec -------------------------------------------------------------------------
    def spec(self) -> StudySpec | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'spec'").fetchone()
        return None if row is None else StudySpec.from_toml(row[0], f"{self.path} (stored spec)")

    def attach(self, spec: StudySpec, *, extend: bool = False) -> list[str]:
        """Store ``spec`` in a new study, or check it against the stored one.

        An identical spec continues the study. A spec that only adds grid values is accepted
        with ``extend=True`` (the new points are added); any other change is refused with a
        message naming it. Returns the ids of the points added.
        """
        stored = self.spec()
        if stored is not None:
            if stored.fingerprint() != spec.fingerprint():
                raise SpecError(
                    f"{self.dir} holds a study with a different spec ({'; '.join(_spec_changes(stored, spec))}); "
                    "use a new --dir, or restore the original spec (only new grid values can be added, with --extend)")
            old = {point_id(p) for p in stored.points()}
            new = [p for p in spec.points() if point_id(p) not in old]
            removed = [a for a in stored.grid if not set(map(json.dumps, stored.grid[a])) <= set(map(json.dumps, spec.grid[a]))]
            if removed:
                raise SpecError(f"the spec drops values of grid axis {removed[0]!r} that {self.dir} already holds; "
                                "grid values can only be added")
            if new and not extend:
                raise SpecError(f"the spec adds {len(new)} grid point(s) to the study in {self.dir}; "
                                "pass --extend to add them")
            if not new:
                if spec.source and spec.source != stored.source:
                    # only [report] options or execution settings differ: the newest spec's apply
                    with self.db:
                        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('spec', ?)", (spec.source,))
                return []
        else:
            new = spec.points()
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('spec', ?)", (spec.source or _to_toml_fallback(spec),))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (str(time.time()),))
            start = self.db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM runs").fetchone()[0]
            self.db.executemany(
                "INSERT OR IGNORE INTO runs (id, idx, point, status) VALUES (?, ?, ?, 'pending')",
                [(point_id(p), start + i, json.dumps(p, sort_keys=True)) for i, p in enumerate(new)])
        return [point_id(p) for p in new]

    # -- rows -----------------------------------------------------------------------------
    def unfinished(self) -> list[tuple[str, dict[str, Any], str]]:
        """``(id, point, status)`` of every pending or interrupted (running) point, in grid order."""
        rows = self.db.execute(
            "SELECT id, point, status FROM runs WHERE status IN ('pending', 'running') ORDER BY idx").fetchall()
        return [(i, json.loads(p), s) for i, p, s in rows]

    def counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())

    def mark_running(self, run_id: str) -> None:
        with self.db:
            self.db.execute("UPDATE runs SET status = 'running', attempts = attempts + 1, started = ? WHERE id = ?",
                            (time.time(), run_id))

    def record(self, run_id: str, result: dict[str, Any]) -> None:
        """Store a finished point: ``result`` has status, error, summary, measures."""
        if result["status"] not in FINAL:
            raise ValueError(f"cannot record status {result['status']!r}; expected one of {FINAL}")
        with self.db:
            self.db.execute(
                "UPDATE runs SET status = ?, error = ?, finished = ?, summary = ?, measures = ?, warnings = ? "
                "WHERE id = ?",
                (result["status"], result.get("error"), time.time(), json.dumps(result.get("summary")),
                 json.dumps(result.get("measures")), "\n".join(result.get("warnings") or []) or None, run_id))

    def table(self) -> pd.DataFrame:
        """The tidy table: ``id``, ``status``, ``error``, ``warnings``, ``attempts``, ``hp.*`` (fixed settings and axes),
        ``gen.*`` (from the run's summary) and ``measure.*`` (in the spec's order)."""
        spec = self.spec()
        rows = self.db.execute(
            "SELECT id, point, status, error, warnings, attempts, summary, measures FROM runs ORDER BY idx").fetchall()
        records = []
        for run_id, point, status, error, notes, attempts, summary, measures in rows:
            point = json.loads(point)
            settings = spec.settings(point) if spec is not None else point
            summary = json.loads(summary) if summary else None
            measures = (json.loads(measures) if measures else None) or {}
            records.append(tidy_row(settings, summary, measures,
                                    measure_names=spec.measures if spec is not None else None, id=run_id,
                                    status=status, error=error, warnings=notes, attempts=attempts))
        return pd.DataFrame(records)


def _to_toml_fallback(spec: StudySpec) -> str:  # pragma: no cover - specs always come from TOML
    raise SpecError("a study spec must be created from TOML (StudySpec.from_toml) so it can be stored")


def _spec_changes(old: StudySpec, new: StudySpec) -> list[str]:
    """What differs between two specs, key by key as written in the TOML (``fixed.lr: 0.001 -> 0.002``)."""
    def show(v: Any) -> str:
        return "(absent)" if v is _ABSENT else json.dumps(v, ensure_ascii=False)

    out = []
    for attr, key in (("name", "name"), ("dataset", "dataset"), ("data_dir", "data_dir"), ("data_seed", "data_seed"),
                      ("measures", "measures.names")):
        if getattr(old, attr) != getattr(new, attr):
            out.append(f"{key}: {show(getattr(old, attr))} -> {show(getattr(new, attr))}")
    for attr, key in (("data_options", "data_options"), ("fixed", "fixed"), ("measure_settings", "measures.settings")):
        a, b = getattr(old, attr), getattr(new, attr)
        for k in sorted(set(a) | set(b)):
            if attr == "fixed" and k in EXECUTION_SETTINGS:
                continue
            if a.get(k, _ABSENT) != b.get(k, _ABSENT):
                out.append(f"{key}.{k}: {show(a.get(k, _ABSENT))} -> {show(b.get(k, _ABSENT))}")
    if list(old.grid) != list(new.grid):
        out.append(f"grid axes: {', '.join(old.grid) or '(none)'} -> {', '.join(new.grid) or '(none)'}")
    return out or ["the grid's axes"]


_ABSENT = object()
