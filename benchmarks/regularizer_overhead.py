"""Overhead of the SRR regulariser (docs/theory.md §7) on a training step, side by side with a plain step.

A step is forward + backward + Adam on a fixed random batch, as in the trainer: plain
cross-entropy, then CE + η·μ on the last layer, one random layer, and all layers. Shapes:
``tiny`` (d=384, L=12, K=6, 32×32×3, patch 4, batch 128) and the digits preset (8×8×1, patch 2,
d=64, L=4, K=4, batch 64). Modes are interleaved round by round so drift in the machine's speed
hits all of them alike; each figure is the median over rounds of the per-round median step.

Where the time goes is measured too, on the same shapes: the rates alone (R and R^c of the
layer output, forward + backward) and re-applying one layer to its detached input (forward +
backward), the two things the regulariser adds to a step.

    python benchmarks/regularizer_overhead.py [--sizes tiny,digits] [--variant crate-t] [--rounds 3]

Writes ``benchmarks/results/regularizer-<date>.json`` and prints a markdown table (quoted in
``docs/performance.md``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from srrlab.models import create_model
from srrlab.rate import srr_terms
from srrlab.train.regularizer import SRRRegularizer

SHAPES = {"tiny": dict(batch=128, steps=3), "digits": dict(batch=64, steps=40)}
MODES = ("plain", "last", "random", "all")
ETA = 1e-3


def _setup(name: str, batch: int):
    torch.manual_seed(0)
    model = create_model(name)
    cfg = model.config
    x = torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size)
    y = torch.randint(0, cfg.num_classes, (batch,))
    return model, x, y


def _median_step(name: str, batch: int, mode: str, steps: int, warmup: int = 2) -> float:
    model, x, y = _setup(name, batch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    reg = None if mode == "plain" else SRRRegularizer(model.config.depth, ETA, mode)
    gen = torch.Generator().manual_seed(0)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        if reg is None:
            loss = F.cross_entropy(model(x), y)
        else:
            logits, value, _ = reg(model, x, gen)
            loss = F.cross_entropy(logits, y) + ETA * value
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _parts(name: str, batch: int, steps: int) -> dict[str, float]:
    """Seconds of the regulariser's two ingredients on the last layer: the rates (fwd+bwd) and the
    re-application of the layer to its detached input (fwd+bwd)."""
    model, x, _ = _setup(name, batch)
    with torch.no_grad():
        z_in = model.forward_layers(x).layers[-1].z_in
    layer = model.layers[-1]
    z_out = layer(z_in).z_out.detach().requires_grad_()
    U = layer.attn.subspaces()

    def rates():
        srr_terms(z_out, U.detach())["mu"].mean().backward()

    def reapply():
        layer(z_in.detach()).z_out.sum().backward()

    out = {}
    for key, fn in (("rates_fwd_bwd_s", rates), ("layer_fwd_bwd_s", reapply)):
        for _ in range(2):
            fn()
        ts = []
        for _ in range(steps):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out[key] = statistics.median(ts)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,digits")
    ap.add_argument("--variant", default="crate-t")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the modes")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/regularizer-<date>.json)")
    args = ap.parse_args()
    rows = []
    for size in args.sizes.split(","):
        name, shape = f"{args.variant}-{size}", SHAPES[size]
        per_mode: dict[str, list[float]] = {m: [] for m in MODES}
        for r in range(args.rounds):
            for mode in MODES:
                per_mode[mode].append(_median_step(name, shape["batch"], mode, shape["steps"]))
                print(f"{name} round {r + 1}/{args.rounds} {mode:<7} {per_mode[mode][-1] * 1e3:9.1f} ms", flush=True)
        plain = statistics.median(per_mode["plain"])
        parts = _parts(name, shape["batch"], shape["steps"])
        for mode in MODES:
            step = statistics.median(per_mode[mode])
            rows.append({"model": name, "batch": shape["batch"], "mode": mode, "step_s": step,
                         "rounds_s": per_mode[mode], "overhead": step / plain - 1.0,
                         **({k: v for k, v in parts.items()} if mode == "last" else {})})
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "eta": ETA, "rounds": args.rounds}
    out = Path(args.out or Path(__file__).parent / "results" / f"regularizer-{meta['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print()
    print("| model | batch | regularised layers | ms/step | overhead vs plain |")
    print("|---|---:|---|---:|---:|")
    for r in rows:
        over = "–" if r["mode"] == "plain" else f"{r['overhead']:+.0%}"
        print(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['step_s'] * 1e3:.1f} | {over} |")
    print()
    print("| model | plain step ms | rates fwd+bwd ms | layer re-applied fwd+bwd ms |")
    print("|---|---:|---:|---:|")
    for r in rows:
        if r["mode"] == "last":
            plain = next(p for p in rows if p["model"] == r["model"] and p["mode"] == "plain")
            print(f"| {r['model']} | {plain['step_s'] * 1e3:.1f} | {r['rates_fwd_bwd_s'] * 1e3:.1f} | "
                  f"{r['layer_fwd_bwd_s'] * 1e3:.1f} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
