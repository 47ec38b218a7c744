"""Moving a study between machines: an export with a sha256 manifest, and its import.

``export_study(DIR, OUT)`` (``srrlab study export DIR OUT``) writes, into a new folder ``OUT`` (or one
tar archive when ``OUT`` ends with ``.tar``, ``.tar.gz`` or ``.tgz``)::

    manifest.json   every other file with its size and sha256; the srrlab, torch and Python versions; the date
    spec.toml       the study's spec, as stored
    meta.json       the rest of the database's meta table (``created``, ``environments``, …), as stored
    points.jsonl    every database row as stored (id, idx, point, status, error, attempts, times, summary,
                    measures, warnings; the JSON columns as their text): the database, exactly
    runs.csv        the tidy table (``StudyStore.table()``, ``DataFrame.to_csv(index=False)``)
    runs/<id>/      each run folder's results: config.json, summary.json, metrics.jsonl, layerwise.jsonl
                    (if any), weights_init.safetensors, weights_final.safetensors (no checkpoint/);
                    ``weights=False`` (``--no-weights``) leaves the two weights files out

An export without weights is a study's results and progress alone (a few kB per run instead of the
weights' hundreds): it imports, reports and *resumes* like any other (interrupted points restart,
finished ones stay finished), which is how a long study is carried between sessions that keep no
disk (docs/study.md, "Moving a study"); only what needs the trained weights, ``srrlab study
measure`` and ``--reuse`` of its runs, is then impossible, and says so.

``import_study(OUT, DIR)`` checks every file against the manifest and rebuilds the study folder
(``study.sqlite`` through :meth:`StudyStore.restore`, the run folders' files copied), so that
``StudyStore(DIR).table()`` is the exported ``runs.csv`` table. :func:`read_results` reads a folder's
``spec.toml`` + ``runs.csv`` (an export, or results committed under ``docs/results/<name>/``) as the
store would give them. Both sides write into a temporary folder next to the destination and rename
it at the end: a killed export or import leaves nothing half-written (at most a hidden
``.<name>.*`` folder to delete).
"""
from __future__ import annotations

import datetime
import hashlib
import os
import platform
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from ..io import read_json, read_jsonl, write_json, write_jsonl
from ..runs import RunFolder, read_tidy_table, tidy_row
from .runner import run_folder
from .spec import StudySpec, point_id
from .store import DB_NAME, StudyStore

__all__ = ["export_study", "import_study", "verify_export", "read_results", "text_columns", "EXPORT_FORMAT",
           "MANIFEST", "SPEC_FILE", "META_FILE", "POINTS_FILE", "TABLE_FILE"]

#: ``format`` of an export's manifest, and its version.
EXPORT_FORMAT = "srrlab study export"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPEC_FILE = "spec.toml"
META_FILE = "meta.json"
POINTS_FILE = "points.jsonl"
TABLE_FILE = "runs.csv"
_TOP_FILES = (SPEC_FILE, META_FILE, POINTS_FILE, TABLE_FILE)
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CHUNK = 1 << 20


# -- reading a results folder ----------------------------------------------------------------------
def text_columns(spec: StudySpec) -> list[str]:
    """The ``hp.*`` columns of the study's tidy table that hold text (a value of some grid point's
    settings is a string), for :func:`srrlab.runs.read_tidy_table`'s ``text``."""
    cols: dict[str, None] = {}
    for point in spec.points():
        cols.update({k: None for k, v in tidy_row(spec.settings(point)).items()
                     if k.startswith("hp.") and isinstance(v, str)})
    return list(cols)


def read_results(directory: str | os.PathLike) -> tuple[StudySpec, pd.DataFrame]:
    """The spec (``spec.toml``) and tidy table (``runs.csv``) of a folder without a database, as
    ``StudyStore.spec()`` and ``StudyStore.table()`` gave them when they were written: an export, or
    a study's results committed under ``docs/results/<name>/``."""
    directory = Path(directory)
    missing = [n for n in (SPEC_FILE, TABLE_FILE) if not (directory / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} holds no {' and no '.join(missing)}: a results folder needs the spec "
                                f"({SPEC_FILE}) and the tidy table ({TABLE_FILE}); `srrlab study export` writes both")
    spec = StudySpec.from_toml((directory / SPEC_FILE).read_text(encoding="utf-8"), str(directory / SPEC_FILE))
    return spec, read_tidy_table(directory / TABLE_FILE, text=text_columns(spec))


# -- export ---------------------------------------------------------------------------------------
def export_study(directory: str | os.PathLike, out: str | os.PathLike, *, weights: bool = True) -> dict[str, Any]:
    """Export the study in ``directory`` into ``out`` (a new folder, or a ``.tar``/``.tar.gz``/``.tgz``
    archive) and return the manifest. Export a study that is not running: a row that changes while
    its files are copied fails the export. ``weights=False`` leaves every run's weights files out
    (the manifest says ``"weights": false``)."""
    directory, out = Path(directory), Path(out)
    if not (directory / DB_NAME).is_file():
        raise FileNotFoundError(f"{directory} holds no study (no {DB_NAME}); give the --dir of `srrlab study run`")
    _require_free(out, "export into")
    with StudyStore(directory) as store:
        before = store.rows()
        meta, table = store.meta(), store.table()
        with _staging(out) as tmp:
            files = _write_export(directory, tmp, meta, before, table, weights)
            if store.rows() != before:
                raise ValueError(f"the study in {directory} changed while it was exported; wait until "
                                 "`srrlab study run` has finished (or stop it), then export again")
            manifest = _manifest(StudySpec.from_toml(meta["spec"]).name, before, files, weights)
            write_json(tmp / MANIFEST, manifest)
            _publish(tmp, out)
    return manifest


def _write_export(directory: Path, tmp: Path, meta: dict[str, str], rows: list[dict[str, Any]],
                  table: pd.DataFrame, weights: bool) -> dict[str, tuple[int, str]]:
    """Write every file of the export into ``tmp``; returns ``{relative path: (size, sha256)}``."""
    meta = dict(meta)
    spec_text = meta.pop("spec")
    with open(tmp / SPEC_FILE, "w", encoding="utf-8", newline="") as fh:
        fh.write(spec_text)
    write_json(tmp / META_FILE, meta)
    write_jsonl(tmp / POINTS_FILE, rows)
    table.to_csv(tmp / TABLE_FILE, index=False)
    files = {name: _digest(tmp / name) for name in _TOP_FILES}
    for row in rows:
        source = run_folder(directory, row["id"])
        for name in _result_files(source, weights):
            rel = _relative(row["id"], name)
            files[rel] = _copy(source / name, tmp / rel)
    return files


def _result_files(folder: Path, weights: bool = True) -> list[str]:
    """The names of the run folder's result files that exist (RunFolder's names; never the checkpoint;
    the weights files only when ``weights``)."""
    skip = () if weights else tuple(RunFolder.WEIGHTS.values())
    return [n for n in RunFolder.RESULT_FILES if n not in skip and (folder / n).is_file()]


def _relative(run_id: str, name: str) -> str:
    """``runs/<id>/<name>``: where a run file lies in an export, as in a study folder."""
    return (run_folder(PurePosixPath(), run_id) / name).as_posix()


def _manifest(name: str, rows: list[dict[str, Any]], files: dict[str, tuple[int, str]],
              weights: bool) -> dict[str, Any]:
    import torch

    from .. import __version__

    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {"format": EXPORT_FORMAT, "format_version": FORMAT_VERSION, "study": name,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "srrlab": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "points": len(rows), "statuses": dict(sorted(counts.items())), "weights": weights,
            "files": [{"path": p, "size": size, "sha256": sha} for p, (size, sha) in sorted(files.items())]}


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished export folder ``tmp`` to ``out``, or pack it into the archive ``out``."""
    if not _is_tar(out):
        _rename(tmp, out)
        return
    mode = "w:gz" if out.name.endswith((".tar.gz", ".tgz")) else "w"
    top = _tar_stem(out)
    part = tmp.parent / f".{out.name}.part"
    try:
        with tarfile.open(part, mode) as tar:
            for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
                tar.add(path, arcname=f"{top}/{path.relative_to(tmp).as_posix()}")
        os.replace(part, out)
    finally:
        if part.exists():
            part.unlink()


# -- verification ---------------------------------------------------------------------------------
def verify_export(export: str | os.PathLike) -> dict[str, Any]:
    """Check every file of the export (a folder or an archive) against its manifest; return the
    manifest, or raise one ``ValueError`` naming each damaged or missing file."""
    with _opened(Path(export), Path(tempfile.gettempdir())) as root:
        manifest = _read_manifest(root, export)
        _check(root, manifest, export)
    return manifest


def _read_manifest(root: Path, export: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the export unpacked in ``root``, its entries checked: known file names, safe paths."""
    path = Path(export) / MANIFEST if root == Path(export) else f"{export}: {MANIFEST}"
    try:
        manifest = read_json(root / MANIFEST)
    except ValueError:
        raise ValueError(f"{path} is not valid JSON: the export is damaged; copy it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not the manifest of a study export (format {EXPORT_FORMAT!r}); "
                         "export the study again with `srrlab study export DIR OUT`")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: export format version {manifest.get('format_version')!r}, this srrlab reads "
                         f"version {FORMAT_VERSION}; import with srrlab {manifest.get('srrlab', '?')}")
    entries = manifest.get("files")
    bad = [e for e in entries or [None] if not (isinstance(e, dict) and _valid_path(e.get("path"))
                                                and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str))]
    missing = sorted(set(_TOP_FILES) - {e["path"] for e in entries or [] if isinstance(e, dict)})
    if bad or missing:
        what = f"entry {bad[0]!r} is not a file of a study export" if bad else f"it does not list {', '.join(missing)}"
        raise ValueError(f"{path} is damaged: {what}; export the study again")
    return manifest


def _valid_path(path: Any) -> bool:
    """A top-level export file, or ``runs/<id>/<a run folder's result file>``."""
    if not isinstance(path, str):
        return False
    parts = PurePosixPath(path).parts
    if len(parts) == 1:
        return path in _TOP_FILES
    return (len(parts) == 3 and _relative(parts[1], parts[2]) == path and parts[1] not in ("", ".", "..")
            and parts[2] in RunFolder.RESULT_FILES)


def _check(root: Path, manifest: dict[str, Any], export: str | os.PathLike, into: Path | None = None) -> None:
    """Hash every file the manifest lists (copying the run files into ``into`` on the way, when given);
    raise one ``ValueError`` naming each missing or damaged file."""
    problems = []
    for entry in manifest["files"]:
        rel, source = entry["path"], root / entry["path"]
        if not source.is_file():
            problems.append(f"{rel}: missing")
            continue
        target = into / rel if into is not None and "/" in rel else None  # the run files
        size, sha = _copy(source, target) if target is not None else _digest(source)
        if (size, sha) != (entry["size"], entry["sha256"]):
            problems.append(f"{rel}: damaged ({size} bytes, sha256 {sha[:12]}…; the manifest says {entry['size']} "
                            f"bytes, {entry['sha256'][:12]}…)")
    if problems:
        raise ValueError(f"the export {export} has {len(problems)} missing or damaged file(s): {'; '.join(problems)}"
                         f"{'; nothing was imported' if into is not None else ''}: copy the export again from the "
                         "machine that made it, or export the study again")


def _digest(path: Path) -> tuple[int, str]:
    return _copy(path, None)


def _copy(source: Path, target: Path | None) -> tuple[int, str]:
    """``(size, sha256)`` of ``source``, copied to ``target`` (synced to disk) on the way when given."""
    sha, size = hashlib.sha256(), 0
    if target is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
    with open(source, "rb") as src, (open(target, "wb") if target is not None else nullcontext()) as dst:
        while chunk := src.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
            if dst is not None:
                dst.write(chunk)
        if dst is not None:
            dst.flush()
            os.fsync(dst.fileno())
    return size, sha.hexdigest()


# -- import ---------------------------------------------------------------------------------------
def import_study(export: str | os.PathLike, directory: str | os.PathLike) -> Path:
    """Rebuild the exported study (a folder or an archive written by :func:`export_study`) in the new
    folder ``directory`` and return its path. Every file is checked against the manifest first: a
    missing or damaged file raises one ``ValueError`` naming each, and nothing is written."""
    directory = Path(directory)
    if (directory / DB_NAME).exists():
        raise FileExistsError(f"{directory} already holds a study; import into a new folder")
    _require_free(directory, "import into")
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _opened(Path(export), directory.parent) as root:
        manifest = _read_manifest(root, export)
        with _staging(directory) as tmp:
            _check(root, manifest, export, into=tmp)
            spec_text = (root / SPEC_FILE).read_text(encoding="utf-8")
            rows = read_jsonl(root / POINTS_FILE)
            _check_rows(StudySpec.from_toml(spec_text, f"{export}: {SPEC_FILE}"), rows, manifest, export)
            with StudyStore(tmp) as store:
                store.restore({**read_json(root / META_FILE), "spec": spec_text}, rows)
            _rename(tmp, directory)
    return directory


def _check_rows(spec: StudySpec, rows: list[dict[str, Any]], manifest: dict[str, Any],
                export: str | os.PathLike) -> None:
    """The rows are the spec's grid points, and every run file belongs to a row."""
    ids = [row.get("id") for row in rows]
    points = {point_id(p) for p in spec.points()}
    runs = {PurePosixPath(e["path"]).parts[1] for e in manifest["files"] if "/" in e["path"]}
    if set(ids) != points or len(ids) != len(points) or not runs <= points:
        raise ValueError(f"{export}: {POINTS_FILE} does not hold one row per grid point of {SPEC_FILE} "
                         f"({len(ids)} rows, {len(points)} grid points, {len(runs - points)} run folder(s) of no "
                         "point): the export is inconsistent; export the study again")


# -- folders --------------------------------------------------------------------------------------
def _is_tar(path: Path) -> bool:
    return path.name.endswith(_TAR_SUFFIXES)


def _tar_stem(path: Path) -> str:
    return next(path.name[: -len(s)] for s in _TAR_SUFFIXES if path.name.endswith(s)) or "export"


def _require_free(path: Path, what: str) -> None:
    """``path`` must not exist, or be an empty folder (and no archive may be overwritten)."""
    if path.is_dir() and not _is_tar(path) and not any(path.iterdir()):
        return
    if path.exists():
        raise FileExistsError(f"cannot {what} {path}: it exists{' and is not empty' if path.is_dir() else ''}; "
                              "give a new path")


@contextmanager
def _staging(final: Path) -> Iterator[Path]:
    """A hidden temporary folder next to ``final``, removed unless it was renamed to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _rename(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final`` in one step (an empty folder ``final`` is replaced)."""
    if final.is_dir() and not any(final.iterdir()):
        final.rmdir()
    os.rename(tmp, final)


@contextmanager
def _opened(export: Path, scratch: Path) -> Iterator[Path]:
    """The root folder of the export (a folder, or an archive unpacked into a temporary folder in
    ``scratch``, removed afterwards)."""
    if export.is_dir():
        if not (export / MANIFEST).is_file():
            raise FileNotFoundError(f"{export} is not a study export (no {MANIFEST}); make one with "
                                    f"`srrlab study export DIR {export}`")
        yield export
        return
    if not export.is_file():
        raise FileNotFoundError(f"{export} does not exist; give the folder or archive `srrlab study export` wrote")
    if not _is_tar(export) and not tarfile.is_tarfile(export):
        raise ValueError(f"{export} is neither a folder nor a tar archive; give what `srrlab study export` wrote")
    with tempfile.TemporaryDirectory(prefix=f".{export.name}.", dir=scratch) as tmp:
        try:
            with tarfile.open(export) as tar:
                _extract(tar, Path(tmp), export)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise ValueError(f"{export} is not a readable tar archive ({type(exc).__name__}: {exc}); copy it "
                             "again from the machine that made it") from None
        yield _archive_root(Path(tmp), export)


def _archive_root(tmp: Path, export: Path) -> Path:
    """The folder of an unpacked archive that holds the manifest: its top, or its one top-level folder."""
    if (tmp / MANIFEST).is_file():
        return tmp
    tops = list(tmp.iterdir())
    if len(tops) == 1 and (tops[0] / MANIFEST).is_file():
        return tops[0]
    raise ValueError(f"{export} holds no {MANIFEST}: it is not a study export; make one with "
                     f"`srrlab study export DIR {export}`")


def _extract(tar: tarfile.TarFile, dest: Path, export: Path) -> None:
    """Unpack ``tar`` into ``dest``: plain files and folders inside it only."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    for member in tar.getmembers():  # pragma: no cover - Pythons without extraction filters
        name = PurePosixPath(member.name)
        if not (member.isfile() or member.isdir()) or name.is_absolute() or ".." in name.parts:
            raise ValueError(f"{export} holds {member.name!r}, which is not a file of a study export")
    tar.extractall(dest)  # pragma: no cover
