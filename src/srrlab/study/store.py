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
from ..runs import MEASURABLE_STATUSES, STUDY_STATUSES, tidy_row
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
        with ``extend=True`` (the new points are added); one that adds or drops measures or network
        readings is accepted too (:meth:`StudySpec.fingerprint`; :meth:`missing_measures` says what the
        finished rows lack); any other change is refused with a message naming it. The accepted spec's
        text is stored. Returns the ids of the points added.
        """
        stored = self.spec()
        if stored is not None:
            if stored.fingerprint() != spec.fingerprint():
                raise SpecError(
                    f"{self.dir} holds a study with a different spec ({'; '.join(_spec_changes(stored, spec))}); "
                    "use a new --dir, or restore the original spec (only grid values, with --extend, and measures or "
                    "network readings can be added)")
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

    def adopt(self, run_id: str, row: dict[str, Any]) -> None:
        """Fill the pending row ``run_id`` with another study's finished row ``row`` (as :meth:`rows`
        returns it: status, error, attempts, started, finished, summary, measures, warnings), in one
        transaction (:mod:`srrlab.study.reuse`). Refuses a row that is not pending or one that is not final."""
        if row["status"] not in FINAL:
            raise ValueError(f"cannot adopt a row with status {row['status']!r}; expected one of {FINAL}")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            have = self.db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if have is None or have[0] != "pending":
                raise ValueError(f"grid point {run_id} is {'absent' if have is None else have[0]}: only a pending "
                                 "row can take another study's result")
            self.db.execute(
                "UPDATE runs SET status = ?, error = ?, attempts = ?, started = ?, finished = ?, summary = ?, "
                "measures = ?, warnings = ? WHERE id = ?",
                (row["status"], row.get("error"), row.get("attempts") or 0, row.get("started"), row.get("finished"),
                 row.get("summary"), row.get("measures"), row.get("warnings"), run_id))

    def missing_measures(self, keys: list[str]) -> list[tuple[str, dict[str, Any], list[str]]]:
        """``(id, point, keys it lacks)`` of every measured row (:data:`srrlab.runs.MEASURABLE_STATUSES`)
        whose stored measures lack some of the measure ``keys``, in grid order (keys in the given order)."""
        rows = self.db.execute(
            f"SELECT id, point, measures FROM runs WHERE status IN ({', '.join('?' * len(MEASURABLE_STATUSES))}) "
            "ORDER BY idx", MEASURABLE_STATUSES).fetchall()
        out = []
        for run_id, point, measures in rows:
            have = (json.loads(measures) if measures else None) or {}
            missing = [k for k in keys if k not in have]
            if missing:
                out.append((run_id, json.loads(point), missing))
        return out

    def update_measures(self, run_id: str, values: dict[str, Any], warnings: list[str] | None = None) -> None:
        """Merge measure ``values`` (by key) into the stored measures of the measured row ``run_id``, in one
        transaction: every other value, the status, summary and error are kept; ``warnings`` not already
        stored are appended to the row's warnings."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT status, measures, warnings FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"{self.path} has no grid point {run_id!r}")
            status, measures, notes = row
            if status not in MEASURABLE_STATUSES:
                raise ValueError(f"grid point {run_id} is {status}: only rows with status "
                                 f"{' or '.join(MEASURABLE_STATUSES)} hold measures")
            merged = {**((json.loads(measures) if measures else None) or {}), **values}
            lines = notes.split("\n") if notes else []
            lines += [w for w in dict.fromkeys(warnings or []) if w not in lines]
            self.db.execute("UPDATE runs SET measures = ?, warnings = ? WHERE id = ?",
                            (json.dumps(merged), "\n".join(lines) or None, run_id))

    # -- the environment of each execution --------------------------------------------------
    def environments(self) -> list[dict[str, Any]]:
        """The environment of every execution of the study, oldest first (meta key ``environments``;
        one entry per :func:`srrlab.study.run_study` call, see :meth:`log_environment`)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'environments'").fetchone()
        return [] if row is None else json.loads(row[0])

    def log_environment(self, entry: dict[str, Any]) -> None:
        """Append one execution's environment (a JSON-serialisable dict) to :meth:`environments`, in one
        transaction."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT value FROM meta WHERE key = 'environments'").fetchone()
            entries = [] if row is None else json.loads(row[0])
            entries.append(dict(entry))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('environments', ?)", (json.dumps(entries),))

    def table(self) -> pd.DataFrame:
        """The tidy table: ``id``, ``status``, ``error``, ``warnings``, ``attempts``, ``hp.*`` (fixed settings and axes),
        ``gen.*`` (from the run's summary) and ``measure.*`` (the spec's :attr:`~StudySpec.measure_keys`, in
        that order: the primary reading's names, then ``measure.<name>@<network>`` of each other reading)."""
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
                                    measure_names=spec.measure_keys if spec is not None else None, id=run_id,
                                    status=status, error=error, warnings=notes, attempts=attempts))
        return pd.DataFrame(records)

    # -- export / import (srrlab.study.transfer) ---------------------------------------------
    def meta(self) -> dict[str, str]:
        """Every entry of the ``meta`` table as stored (``spec``: the spec's TOML text, ``created``, …)."""
        return dict(self.db.execute("SELECT key, value FROM meta ORDER BY key").fetchall())

    def rows(self) -> list[dict[str, Any]]:
        """Every row of the ``runs`` table as stored, in grid order: one dict per row keyed by column
        (``point``, ``summary`` and ``measures`` as their JSON text), what :meth:`restore` takes back."""
        cursor = self.db.execute("SELECT * FROM runs ORDER BY idx")
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def restore(self, meta: dict[str, str], rows: list[dict[str, Any]]) -> None:
        """Fill this empty store with ``meta`` and ``rows`` as :meth:`meta` and :meth:`rows` return them,
        in one transaction, so that both return them again. Refuses a store that holds a study, or a
        row column that this store's ``runs`` table lacks (an export from another srrlab version)."""
        columns = [r[1] for r in self.db.execute("PRAGMA table_info(runs)").fetchall()]
        unknown = sorted({k for row in rows for k in row} - set(columns))
        if unknown:
            raise ValueError(f"the rows have column(s) {', '.join(unknown)} that the study store of this srrlab "
                             "lacks; import with the srrlab version that exported them")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if self.db.execute("SELECT (SELECT COUNT(*) FROM meta) + (SELECT COUNT(*) FROM runs)").fetchone()[0]:
                raise ValueError(f"{self.dir} already holds a study; restore into a new folder")
            self.db.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
            for row in rows:
                keys = list(row)
                self.db.execute(f"INSERT INTO runs ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                                [row[k] for k in keys])


def _to_toml_fallback(spec: StudySpec) -> str:  # pragma: no cover - specs always come from TOML
    raise SpecError("a study spec must be created from TOML (StudySpec.from_toml) so it can be stored")


def _spec_changes(old: StudySpec, new: StudySpec) -> list[str]:
    """What differs between two specs, key by key as written in the TOML (``fixed.lr: 0.001 -> 0.002``)."""
    def show(v: Any) -> str:
        return "(absent)" if v is _ABSENT else json.dumps(v, ensure_ascii=False)

    out = []
    for attr, key in (("name", "name"), ("dataset", "dataset"), ("data_dir", "data_dir"), ("data_seed", "data_seed")):
        if getattr(old, attr) != getattr(new, attr):
            out.append(f"{key}: {show(getattr(old, attr))} -> {show(getattr(new, attr))}")
    # measure names and extra readings may change; the settings (the primary reading's network included) may not
    for attr, key in (("data_options", "data_options"), ("fixed", "fixed"), ("measure_settings", "measures.settings")):
        a, b = getattr(old, attr), getattr(new, attr)
        if attr == "measure_settings":
            a, b = old.effective_measure_settings(), new.effective_measure_settings()
        for k in sorted(set(a) | set(b)):
            if attr == "fixed" and k in EXECUTION_SETTINGS:
                continue
            if a.get(k, _ABSENT) != b.get(k, _ABSENT):
                name = "measures.networks[0] (the primary reading)" if (attr, k) == ("measure_settings", "network") \
                    else f"{key}.{k}"
                out.append(f"{name}: {show(a.get(k, _ABSENT))} -> {show(b.get(k, _ABSENT))}")
    if list(old.grid) != list(new.grid):
        out.append(f"grid axes: {', '.join(old.grid) or '(none)'} -> {', '.join(new.grid) or '(none)'}")
    return out or ["the grid's axes"]


_ABSENT = object()
