"""Throughput of the generalisation-study runner (models per hour) with 1 and 2 Dask workers.

Each size is a small study with a *fixed* amount of work per model (fixed epochs, no
``target_ce`` stopping rule), one model per grid point, run by :func:`srrlab.study.run_study`
into a fresh study folder; the wall clock of the whole call is timed (Dask cluster start-up,
training, measures and the database included).

- ``digits``: the demo preset's model (digits dataset, ``size = "digits"``, depth 3, heads 4,
  dim 64, Adam, cosine, batch 64, lr 0.003) trained for 10 epochs, all 26 measures with the
  demo's cheap measure settings; grid over variant (crate-c, crate-n, crate-t, crate).
- ``tiny``: CRATE-Tiny (``size = "tiny"``: d=384, L=12, K=6, patch 4) on the ``synthetic`` dataset
  at 32×32×3 (no CIFAR here; 256 training / 128 test images, 10 classes), 1 epoch at batch 128
  (2 steps), SRR and the data-free (norm) measures with small settings.

``models`` picks how many points: the first ``models`` variants (≤ 4), or every variant × seeds
0..models/4−1 (a multiple of 4). With ``workers=N`` the runner starts a local Dask cluster of N
worker processes, each with ``cores // N`` torch threads (the runner's default; recorded as
``threads_per_worker``); ``workers=0`` runs in this process.

    python benchmarks/study_throughput.py [--sizes digits,tiny] [--workers 1,2] [--models 4]

Writes ``benchmarks/results/study_throughput-<date>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from srrlab.study import StudySpec, run_study
from srrlab.study.store import DB_NAME

VARIANT_ORDER = ("crate-c", "crate-n", "crate-t", "crate")
#: The demo preset's measure settings (src/srrlab/study/presets/demo.toml).
DEMO_MEASURE_SETTINGS = dict(max_images=300, srr_images=200, mc_samples=2, search_iterations=8, ascent_steps=3,
                             ascent_restarts=1)
#: SRR and the measures that need no data (norm-, spectrum- and path-based, parameter count).
TINY_MEASURES = ["srr", "params", "l2", "l2-dist", "param-norm", "fro-dist", "dist-spec-init", "log-prod-of-spec",
                 "log-sum-of-spec", "log-prod-of-fro", "log-sum-of-fro", "fro-over-spec", "path-norm"]

SIZES: dict[str, dict[str, Any]] = {
    "digits": {
        "dataset": "digits",
        "data_options": {},
        "fixed": dict(size="digits", depth=3, heads=4, dim=64, optimizer="adam", schedule="cosine", batch_size=64,
                      lr=0.003, epochs=10, target_ce="none", seed=0),
        "measures": "all",
        "measure_settings": DEMO_MEASURE_SETTINGS,
    },
    "tiny": {
        "dataset": "synthetic",
        "data_options": dict(num_train=256, num_test=128, num_classes=10, image_size=32, channels=3),
        "fixed": dict(size="tiny", optimizer="adam", schedule="cosine", batch_size=128, lr=1e-4, epochs=1,
                      target_ce="none", seed=0),
        "measures": TINY_MEASURES,
        "measure_settings": dict(max_images=256, srr_images=128),
    },
}


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as TOML")


def to_toml(d: dict[str, Any]) -> str:
    """A spec dict as TOML: scalars first, then each table (nested tables as ``[a.b]``)."""
    lines: list[str] = []

    def emit(table: dict[str, Any], prefix: str) -> None:
        for k, v in table.items():
            if v is None:
                raise ValueError(f"{prefix}{k}: TOML has no null (use the string \"none\")")
            if not isinstance(v, dict):
                lines.append(f"{k} = {_toml_value(v)}")
        for k, v in table.items():
            if isinstance(v, dict):
                lines.extend(["", f"[{prefix}{k}]"])
                emit(v, f"{prefix}{k}.")

    emit(d, "")
    return "\n".join(lines) + "\n"


def build_spec(size: str, models: int = 4, **overrides: Any) -> StudySpec:
    """The study of ``size`` with ``models`` grid points; see :func:`study_throughput` for ``overrides``."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    if not isinstance(models, int) or models < 1 or (models > len(VARIANT_ORDER) and models % len(VARIANT_ORDER)):
        raise ValueError(f"models must be 1..{len(VARIANT_ORDER)} or a multiple of {len(VARIANT_ORDER)}, got {models!r}")
    base = SIZES[size]
    measures = overrides.pop("measures", base["measures"])
    settings = {**base["measure_settings"], **overrides.pop("measure_settings", {})}
    data_options = {**base["data_options"], **overrides.pop("data_options", {})}
    fixed = {**base["fixed"], **{k: "none" if v is None else v for k, v in overrides.items()}}
    grid: dict[str, list[Any]] = {"variant": list(VARIANT_ORDER[:models])}
    if models > len(VARIANT_ORDER):
        fixed.pop("seed", None)
        grid["seed"] = list(range(models // len(VARIANT_ORDER)))
    spec: dict[str, Any] = {"name": f"throughput-{size}", "dataset": base["dataset"]}
    if data_options:
        spec["data_options"] = data_options
    spec.update({"fixed": fixed, "grid": grid, "measures": {"names": measures, "settings": settings}})
    return StudySpec.from_toml(to_toml(spec), f"study_throughput {size}")


def study_throughput(size: str, workers: int, *, models: int = 4, root: Path | None = None,
                     **overrides: Any) -> dict[str, Any]:
    """Run the ``size`` study (``models`` points) with ``workers`` Dask workers and time it.

    ``overrides`` are study settings put under ``[fixed]`` (``epochs=1``, ``batch_size=32``,
    ``dim=32``, …; ``None`` unsets an optional one, e.g. ``target_ce``), plus ``measures`` (a list
    of names or ``"all"``), ``measure_settings`` and ``data_options`` (dicts merged into the
    size's). The study goes into a fresh folder under ``root`` (kept; its path is ``"dir"``), or a
    temporary one that is deleted afterwards (``"dir"`` is None). Raises ``RuntimeError`` if a run
    did not finish (failed or diverged).
    """
    spec = build_spec(size, models, **overrides)
    if root is not None:
        Path(root).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{size}-w{workers}-m{models}-", dir=root))
        return _timed(spec, size, workers, models, folder, keep=True)
    with tempfile.TemporaryDirectory(prefix="srrlab-throughput-") as tmp:
        return _timed(spec, size, workers, models, Path(tmp), keep=False)


def _timed(spec: StudySpec, size: str, workers: int, models: int, folder: Path, keep: bool) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    study_dir = folder / "study"
    (folder / "spec.toml").write_text(spec.source)
    t0 = time.perf_counter()
    table = run_study(spec, study_dir, workers=workers, progress=False)
    wall = time.perf_counter() - t0
    counts = table["status"].value_counts().to_dict()
    bad = table[~table["status"].isin(["done", "not-converged"])]
    if len(bad):
        raise RuntimeError(f"study_throughput {size}: {len(bad)} run(s) did not finish: "
                           f"{bad[['id', 'status', 'error']].to_dict('records')}")
    with sqlite3.connect(study_dir / DB_NAME) as db:  # the store's own times: first start → last record
        started, finished = db.execute("SELECT MIN(started), MAX(finished) FROM runs").fetchone()
    train_s = table["gen.wall_time_s"].astype(float)
    cfg = spec.train_config(spec.points()[0])
    return {
        "size": size,
        "workers": workers,
        "threads_per_worker": max(1, cores // workers) if workers else torch.get_num_threads(),
        "models": models,
        "wall_s": wall,
        "models_per_hour": 3600 * models / wall,
        "per_model_s": wall / models,
        "epochs": cfg.epochs,
        "epochs_run": [int(e) for e in table["gen.epochs"]],
        "measures": list(spec.measures),
        "batch_size": cfg.batch_size,
        "train_images": int(cfg.data_options.get("num_train", 0)) or None,
        "train_s_sum": float(train_s.sum()),
        "train_s_mean": float(train_s.mean()),
        "store_span_s": finished - started,  # first run started → last run recorded (no cluster start-up)
        "statuses": {str(k): int(v) for k, v in counts.items()},
        "variants": list(table["hp.variant"]),
        "dir": str(study_dir) if keep else None,
        "spec": spec.source,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table, with the speed-up of each worker count over 1 worker."""
    base = {r["size"]: r["wall_s"] for r in rows if r["workers"] == 1}
    lines = ["| size | workers | threads/worker | models | epochs | measures | wall s | s/model | models/h "
             "| speed-up vs 1 worker |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speedup = f"{base[r['size']] / r['wall_s']:.2f}×" if r["size"] in base else "–"
        lines.append(f"| {r['size']} | {r['workers']} | {r['threads_per_worker']} | {r['models']} | {r['epochs']} | "
                     f"{len(r['measures'])} | {r['wall_s']:.1f} | {r['per_model_s']:.1f} | {r['models_per_hour']:.1f} | "
                     f"{speedup} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="digits,tiny")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (0: sequential, in process)")
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=None, help="override the size's epochs")
    ap.add_argument("--keep", default=None, help="keep the study folders under this directory")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/study_throughput-<date>.json)")
    args = ap.parse_args()
    overrides = {} if args.epochs is None else {"epochs": args.epochs}
    rows = []
    for size in args.sizes.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            row = study_throughput(size, workers, models=args.models,
                                   root=Path(args.keep) if args.keep else None, **overrides)
            rows.append(row)
            print(f"{size:<7} workers {workers} ({row['threads_per_worker']} threads each)  {row['models']} models  "
                  f"{row['wall_s']:8.1f} s  {row['per_model_s']:7.1f} s/model  {row['models_per_hour']:8.1f} models/h",
                  flush=True)
    import dask

    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "dask": dask.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "processor": platform.processor()}
    out = Path(args.out or Path(__file__).parent / "results" / f"study_throughput-{meta['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print()
    print(markdown(rows))
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
