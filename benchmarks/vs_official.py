"""Training-step throughput of every srrlab variant against the official CRATE formulation.

The reference (``benchmarks/official_crate.py``) computes attention with an explicit score
matrix and ISTA with three matrix products, as the official code does. Before timing, the
srrlab ``crate`` model and the reference, holding the same weights, are run on the same batch:
their logits and their gradients must agree (fp64: to 1e-10 relative; reported for fp32 too).
A step is forward + cross-entropy + backward + Adam, fp32. Models are interleaved round by round;
each figure is the median over rounds of the per-round median.

    python benchmarks/vs_official.py [--sizes tiny,digits] [--rounds 3]

Writes ``benchmarks/results/vs_official-<date>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from official_crate import from_srrlab  # noqa: E402
from step_time import median_step  # noqa: E402

from srrlab.models import VARIANTS, create_model  # noqa: E402

SHAPES = {"tiny": dict(batch=128, steps=3), "digits": dict(batch=64, steps=30)}


def check_same_outputs(size: str, batch: int = 8) -> dict[str, float]:
    """Max relative difference of logits and of parameter gradients, srrlab ``crate`` vs the reference."""
    out = {}
    for dtype, name in ((torch.float64, "fp64"), (torch.float32, "fp32")):
        torch.manual_seed(0)
        ours = create_model(f"crate-{size}").to(dtype)
        ref = from_srrlab(ours).to(dtype)
        c = ours.config
        x = torch.randn(batch, c.channels, c.image_size, c.image_size, dtype=dtype)
        y = torch.randint(0, c.num_classes, (batch,))
        a, b = ours(x), ref(x)
        F.cross_entropy(a, y).backward()
        F.cross_entropy(b, y).backward()
        ga = torch.cat([p.grad.flatten() for p in ours.parameters()])
        gb = torch.cat([ref.state_dict(keep_vars=True)[k].grad.flatten() for k in ref_keys(ours)])
        out[f"logits_rel_{name}"] = ((a - b).abs().max() / a.abs().max()).item()
        out[f"grads_rel_{name}"] = ((ga - gb).abs().max() / ga.abs().max()).item()
    if out["logits_rel_fp64"] > 1e-10 or out["grads_rel_fp64"] > 1e-10:
        raise AssertionError(f"srrlab crate and the official formulation disagree at {size}: {out}")
    return out


def ref_keys(ours) -> list[str]:
    """The reference's parameter names in the order of ``ours.parameters()``."""
    keys = []
    for name, _ in ours.named_parameters():
        if name.startswith("layers."):
            _, i, mod, *rest = name.split(".")
            sub = ".".join(rest)
            mapped = {"norm1": f"norm1.{i}.{sub}", "norm2": f"norm2.{i}.{sub}", "ista": f"ista.{i}.{sub}",
                      "attn": f"attn.{i}.{sub}"}[mod]
            keys.append(mapped)
        else:
            keys.append(name)
    return keys


def _median_step(model, batch: int, steps: int, warmup: int = 2) -> float:
    torch.manual_seed(1)
    return median_step(model, batch, steps, warmup)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,digits")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows, checks = [], {}
    for size in args.sizes.split(","):
        checks[size] = check_same_outputs(size)
        print(f"{size}: same outputs {checks[size]}", flush=True)
        shape = SHAPES[size]
        torch.manual_seed(0)
        base = create_model(f"crate-{size}")
        official = from_srrlab(base)
        official.config = base.config
        models = {"official": official, **{v: create_model(f"{v}-{size}") for v in VARIANTS}}
        times: dict[str, list[float]] = {k: [] for k in models}
        for r in range(args.rounds):
            for key, model in models.items():
                times[key].append(_median_step(model, shape["batch"], shape["steps"]))
                print(f"{size} round {r + 1} {key:<15} {times[key][-1] * 1e3:9.1f} ms", flush=True)
        ref = statistics.median(times["official"])
        for key in models:
            t = statistics.median(times[key])
            rows.append({"size": size, "model": key, "batch": shape["batch"], "step_s": t, "rounds_s": times[key],
                         "images_per_s": shape["batch"] / t, "speedup_vs_official": ref / t})
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "rounds": args.rounds}
    out = Path(args.out or Path(__file__).parent / "results" / f"vs_official-{meta['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "checks": checks, "rows": rows}, indent=2) + "\n")
    print("\n| size | model | batch | ms/step | images/s | vs official |\n|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['model']} | {r['batch']} | {r['step_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | "
              f"{r['speedup_vs_official']:.2f}× |")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
