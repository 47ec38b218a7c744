"""Time of ``srrlab.correlation.correlation_table`` with its uncertainty columns (docs/theory.md §6).

The table of a study: 26 measures × 64 models on a full 2×2×2×2×4 grid (four two-level axes and
one four-level axis, as ``batch_size × lr × width × dropout × model``), one measure with two NaN
rows so that the table works on two sets of kept models, as it does on a real study. Each run
computes every column: ψ per axis, τ with its permutation p-value (10 000 permutations) and
bootstrap interval (2 000 resamples), Ψ with its within-group permutation p-value, CMI and the
sign-error. The fast table (``permutations=0, bootstrap=0``: no uncertainty columns) is timed
alongside, in turn, so that both see the same machine load. The target is ≤ 10 s for the full
table on this 2-core CPU.

    python benchmarks/kendall_uncertainty.py [--measures 26] [--permutations 10000] [--bootstrap 2000] [--rounds 3]

Writes ``benchmarks/results/kendall_uncertainty-<date>.json`` and prints a markdown table.
Timings are medians over ``--rounds`` runs (after one warm-up run of each).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from srrlab.correlation import correlation_table

TARGET_S = 10.0  # the full table, 26 measures × 64 models, 10 000 permutations + 2 000 resamples
AXES = {"batch_size": [32, 64], "lr": [1e-3, 1e-4], "width": [192, 384], "dropout": [0.0, 0.1],
        "model": ["crate", "crate-c", "crate-n", "crate-t"]}


def study_table(n_measures: int = 26, seed: int = 0) -> pd.DataFrame:
    """A full grid over :data:`AXES` (64 models) with a gap and ``n_measures`` measures that follow
    it more and more closely; ``measure.m1`` misses two models."""
    rows = [dict(zip([f"hp.{a}" for a in AXES], values)) for values in itertools.product(*AXES.values())]
    t = pd.DataFrame(rows)
    rng = np.random.default_rng(seed)
    t["gen.gap_ce"] = rng.normal(size=len(t)) + 0.5 * np.log10(t["hp.lr"])
    for k in range(n_measures):
        t[f"measure.m{k}"] = rng.normal(size=len(t)) + 0.1 * k * t["gen.gap_ce"]
    if n_measures > 1:
        t.loc[[3, 10], "measure.m1"] = np.nan
    return t


def measure(n_measures: int = 26, permutations: int = 10_000, bootstrap: int = 2_000, rounds: int = 3) -> dict:
    """Median seconds of the full table and of the fast one, alternating run by run."""
    table = study_table(n_measures)
    fns = {"full": lambda: correlation_table(table, permutations=permutations, bootstrap=bootstrap),
           "fast": lambda: correlation_table(table, permutations=0, bootstrap=0)}
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(rounds + 1):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            out = fn()
            if i > 0:  # the first round warms up
                times[key].append(time.perf_counter() - t0)
    full = statistics.median(times["full"])
    return {"measures": n_measures, "models": len(table), "axes": len(AXES), "permutations": permutations,
            "bootstrap": bootstrap, "rounds": rounds, "table_s_median": full, "table_s_rounds": times["full"],
            "fast_table_s_median": statistics.median(times["fast"]), "fast_table_s_rounds": times["fast"],
            "uncertainty_s": full - statistics.median(times["fast"]), "target_s": TARGET_S,
            "met": bool(full <= TARGET_S), "columns": list(out.columns)}


def markdown(row: dict) -> str:
    verdict = "met" if row["met"] else f"missed by {row['table_s_median'] / row['target_s']:.2f}×"
    return "\n".join([
        "| measures × models | permutations | bootstrap | full table s | fast table s | target | verdict |",
        "|---|---:|---:|---:|---:|---:|---|",
        f"| {row['measures']} × {row['models']} | {row['permutations']} | {row['bootstrap']} | "
        f"{row['table_s_median']:.2f} | {row['fast_table_s_median']:.2f} | ≤ {row['target_s']:.0f} s | {verdict} |"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--measures", type=int, default=26)
    ap.add_argument("--permutations", type=int, default=10_000)
    ap.add_argument("--bootstrap", type=int, default=2_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/kendall_uncertainty-<date>.json)")
    args = ap.parse_args()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    row = measure(args.measures, args.permutations, args.bootstrap, args.rounds)
    meta = {"date": time.strftime("%Y-%m-%d"), "numpy": np.__version__, "pandas": pd.__version__,
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
            "load_avg_1min_start": load_start,
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "rounds": args.rounds}
    out = Path(args.out or Path(__file__).parent / "results" / f"kendall_uncertainty-{meta['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": [row]}, indent=2) + "\n")
    print(markdown(row))
    print(f"\n(medians of {args.rounds} runs; rounds {', '.join(f'{t:.2f}' for t in row['table_s_rounds'])} s; "
          f"1-min load average {meta['load_avg_1min_start']:.2f} at start, {meta['load_avg_1min']:.2f} at end)")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
