"""Training-step time of every CRATE variant: forward + backward + Adam step.

Shapes: ``tiny`` (d=384, L=12, K=6, 32×32×3 images, patch 4, batch 128) and the digits
preset (``-digits`` size: 8×8×1, patch 2, d=64, L=4, K=4, batch 64). fp32 on CPU. ``median_step`` also
times a model on CUDA, with or without amp (benchmarks/device_check.py).

    python benchmarks/step_time.py [--sizes tiny,digits] [--variants crate,crate-t] [--repeats 5]

Writes ``benchmarks/results/step_time-<date>.json`` and prints a markdown table (quoted in
``docs/performance.md``). Timings are medians over ``--repeats`` steps after ``--warmup``.
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

from srrlab.models import VARIANTS, create_model

SHAPES = {"tiny": dict(batch=128), "digits": dict(batch=64)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_step(model: torch.nn.Module, batch: int, repeats: int, warmup: int,
                amp: bool = False) -> tuple[float, list[float]]:
    """Median and all timings (s) of ``repeats`` steps (forward + CE + backward + Adam) on a fixed
    random batch for ``model`` (which has a ``config``), after ``warmup`` untimed steps.

    The batch is drawn on the CPU and moved to the model's device; on CUDA every step is timed between
    two ``torch.cuda.synchronize()``. ``amp``: the forward under bf16 autocast (the trainer's ``--amp``)."""
    cfg = model.config
    device = next(model.parameters()).device
    x = torch.randn(batch, cfg.channels, cfg.image_size, cfg.image_size).to(device)
    y = torch.randint(0, cfg.num_classes, (batch,)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def step_time(name: str, batch: int, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name)
    cfg = model.config
    med, times = median_step(model, batch, repeats, warmup)
    return {"model": name, "batch": batch, "tokens": cfg.num_tokens, "parameters": model.num_parameters(),
            "step_s_median": med, "step_s_min": min(times), "images_per_s": batch / med}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,digits")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/step_time-<date>.json)")
    args = ap.parse_args()
    rows = []
    for size in args.sizes.split(","):
        for variant in args.variants.split(","):
            row = step_time(f"{variant}-{size}", SHAPES[size]["batch"], args.repeats, args.warmup)
            rows.append(row)
            print(f"{row['model']:<22} batch {row['batch']:>4}  {row['step_s_median'] * 1e3:9.1f} ms/step  "
                  f"{row['images_per_s']:8.1f} img/s", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor()}
    out = Path(args.out or Path(__file__).parent / "results" / f"step_time-{meta['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print()
    print("| model | batch | tokens | parameters | ms/step (median) | images/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['batch']} | {r['tokens']} | {r['parameters']:,} | "
              f"{r['step_s_median'] * 1e3:.1f} | {r['images_per_s']:.1f} |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
