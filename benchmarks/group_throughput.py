"""Grouped against single training: models per hour of training, interleaved in one run.

A population of ``members`` runs that differ only in seed and learning rate (what a study's grid
varies within one architecture) is trained for a fixed number of epochs (no stopping rule), once
as one stacked program (:func:`srrlab.train.group.train_group`) and once run after run
(:func:`srrlab.train.train`), alternating ``repeats`` times so that drifts of the machine hit both.
Evaluation after every epoch and the run folders' files are included, as in a study; measures are
not (they are computed per model either way). The ``draws`` part times the four PAC-Bayes measures of
one trained model with their Monte-Carlo draws evaluated one forward each and as one batched forward
(``MeasureSettings.batch_draws``), at 2 and 10 draws.

- ``digits``: the demo preset's model (8×8 digits, dim 64, depth 3, 4 heads, batch 64, 1437 images);
- ``fmnist``: the 28×28 Fashion-MNIST size (dim 64, depth 6, 4 heads, 50 tokens, batch 64) on the
  first 100 images per class of the embedded subset (1000 images).
- ``tiny``: CRATE-Tiny (32×32×3, patch 4, dim 384, depth 12, 6 heads, batch 64) on 1024 synthetic
  images (a GPU size: ``benchmarks/device_check.py`` measures it on CUDA).

``workers`` = 1: one process with one torch thread; 2: two processes at once, each with one thread
and half the members (as a 2-worker study runs them); the time is the slower worker's training time
(process start-up excluded, as for a study's long-lived workers).

    python benchmarks/group_throughput.py [--sizes digits,fmnist] [--workers 1,2] [--members 4] [--device cuda]

Writes ``benchmarks/results/group_throughput-<date>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

SIZES: dict[str, dict[str, Any]] = {
    "digits": dict(model="crate-t-digits", dataset="digits", data_options={}, model_options={"depth": 3},
                   epochs=4),
    "fmnist": dict(model="crate-t-fmnist", dataset="fashion-mnist",
                   data_options={"subset": "embedded", "train_per_class": 100}, model_options={}, epochs=2),
    # the paper's CRATE-Tiny (d 384, depth 12, 6 heads, 32×32×3, patch 4) on synthetic 32×32×3 images (no
    # CIFAR files needed, e.g. on a lent GPU machine): a GPU size (benchmarks/device_check.py)
    "tiny": dict(model="crate-t-tiny", dataset="synthetic",
                 data_options={"image_size": 32, "channels": 3, "num_train": 1024, "num_test": 256},
                 model_options={"patch_size": 4}, epochs=1),
}


def _configs(size: str, members: list[int], epochs: int, device: str = "cpu"):
    from srrlab.train import TrainConfig

    s = SIZES[size]
    return [TrainConfig(model=s["model"], dataset=s["dataset"], data_options=s["data_options"],
                        model_options=s["model_options"], epochs=epochs, target_ce=None, batch_size=64,
                        schedule="constant", seed=m, lr=0.001 * (1 + m % 4), device=device) for m in members]


def _work(size: str, members: list[int], grouped: bool, root: str, epochs: int, device: str = "cpu") -> float:
    """Train ``members`` (grouped or one after another) in this process with one thread; seconds."""
    torch.set_num_threads(1)
    from srrlab.data import load_dataset
    from srrlab.train import train
    from srrlab.train.group import train_group

    cfgs = _configs(size, members, epochs, device)
    splits = load_dataset(cfgs[0].dataset, seed=0, **cfgs[0].data_options)
    dirs = [Path(root) / f"{'g' if grouped else 'a'}{m}" for m in members]
    t0 = time.perf_counter()
    if grouped:
        train_group(cfgs, dirs, splits=splits)
    else:
        for cfg, d in zip(cfgs, dirs):
            train(cfg, d, quiet=True, splits=splits)
    return time.perf_counter() - t0


def measure(size: str, workers: int, members: int, grouped: bool, epochs: int, device: str = "cpu") -> float:
    """Wall seconds to train ``members`` models for ``epochs`` epochs with ``workers`` processes."""
    root = tempfile.mkdtemp(prefix="srrlab-group-bench-")
    try:
        parts = [list(range(members))[w::workers] for w in range(workers)]
        if workers == 1:
            return _work(size, parts[0], grouped, root, epochs, device)
        # the workers' training time, concurrent (process start-up, imports and data loading excluded,
        # as in a study whose workers live for all its models)
        with mp.get_context("spawn").Pool(workers) as pool:
            return max(pool.starmap(_work, [(size, p, grouped, root, epochs, device) for p in parts]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(sizes: list[str], workers: list[int], members: int, repeats: int,
        epochs: int | None = None, device: str = "cpu") -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        n_epochs = epochs or SIZES[size]["epochs"]
        for w in workers:
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(repeats):
                for grouped in (True, False):  # interleaved
                    times[grouped].append(measure(size, w, members, grouped, n_epochs, device))
            best = {g: min(t) for g, t in times.items()}
            rows.append(dict(size=size, workers=w, members=members, epochs=n_epochs, device=device,
                             alone_s=times[False], grouped_s=times[True],
                             alone_models_per_h=members * 3600 / best[False],
                             grouped_models_per_h=members * 3600 / best[True],
                             ratio=best[False] / best[True]))
            print(f"{size} workers={w}: alone {best[False]:.1f} s, grouped {best[True]:.1f} s, "
                  f"ratio {best[False] / best[True]:.2f}", flush=True)
    return rows


PACBAYES = ["pacbayes-init", "pacbayes-orig", "pacbayes-mag-init", "pacbayes-mag-orig"]


def draws(size: str, mc_samples: int, repeats: int = 2, epochs: int = 3, device: str = "cpu") -> dict[str, Any]:
    """Seconds of the four PAC-Bayes measures of one trained model, Monte-Carlo draws one forward
    each against all draws in one batched forward (``MeasureSettings.batch_draws``), interleaved."""
    torch.set_num_threads(1)
    from srrlab.data import load_dataset
    from srrlab.measures import MeasureSettings, compute_measures
    from srrlab.train import train

    (cfg,) = _configs(size, [0], epochs, device)
    splits = load_dataset(cfg.dataset, seed=0, **cfg.data_options)
    root = tempfile.mkdtemp(prefix="srrlab-draws-bench-")
    try:
        model = train(cfg, Path(root) / "run", quiet=True, splits=splits).model
    finally:
        shutil.rmtree(root, ignore_errors=True)
    times: dict[bool, list[float]] = {False: [], True: []}
    values = {}
    for _ in range(repeats):
        for batched in (False, True):
            settings = MeasureSettings(max_images=300, mc_samples=mc_samples, search_iterations=8,
                                       batch_draws=batched)
            t0 = time.perf_counter()
            values[batched] = compute_measures(model, init=model, data=splits.train, measures=PACBAYES,
                                               settings=settings)
            times[batched].append(time.perf_counter() - t0)
    row = dict(size=size, mc_samples=mc_samples, device=device, one_by_one_s=min(times[False]), batched_s=min(times[True]),
               ratio=min(times[False]) / min(times[True]), same_values=values[False] == values[True])
    print(f"draws {size} mc={mc_samples}: one by one {row['one_by_one_s']:.2f} s, batched {row['batched_s']:.2f} s, "
          f"ratio {row['ratio']:.2f}, same values {row['same_values']}", flush=True)
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| size | workers | models | epochs | alone (models/h) | grouped (models/h) | grouped / alone |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['workers']} | {r['members']} | {r['epochs']} | "
                     f"{r['alone_models_per_h']:.0f} | {r['grouped_models_per_h']:.0f} | {r['ratio']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="digits,fmnist")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--parts", default="training,draws",
                        help="training (grouped vs single training) and/or draws (PAC-Bayes draws batched or not)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU: --workers 1 --members 16)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    rows = run(sizes, [int(w) for w in args.workers.split(",")], args.members, args.repeats,
               device=args.device) if "training" in args.parts else []
    draw_rows = [draws(size, mc, device=args.device) for size in sizes for mc in (2, 10)] \
        if "draws" in args.parts else []
    out = Path(args.out or Path(__file__).parent / "results" / f"group_throughput-{time.strftime('%Y-%m-%d')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if out.exists() else {}
    out.write_text(json.dumps({"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                           "torch": torch.__version__},
                               "rows": rows or previous.get("rows", []),
                               "draws": draw_rows or previous.get("draws", [])}, indent=2) + "\n")
    if rows:
        print(markdown(rows))
    print(f"results {out}")


if __name__ == "__main__":
    main()
