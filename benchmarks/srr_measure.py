"""SRR measurement time: ``srrlab.rate.srr_terms`` against the naive N×N way.

The naive way is the one of the official CRATE coding-rate tool: for every image and head the
N×N Gram ``A_k A_kᵀ`` (row form, ``A_k = Z U_k``) and ``logdet(I_N + γ A_k A_kᵀ)`` by a batched
Cholesky, and the N×N Gram for ``R``. Ours factors the smaller side (p×p for the heads,
``min(N, d)`` for ``R``, docs/theory.md §2) in one batched Cholesky over images × heads.

Shapes: ``crate-tiny`` (d=384, K=6, p=64), 128 images, fp32, at N=65 (32×32 images, patch 4)
and N=197 (224×224 images, patch 16). ``Z`` is realistic: random images forwarded through a
freshly initialised model with ``forward_layers(x, layernorm=False)`` (docs/theory.md §5), last layer's
``z_out`` with ``model.subspaces()[-1]``.

    python benchmarks/srr_measure.py [--tokens 65,197] [--batch 128] [--repeats 9] [--warmup 2]

Writes ``benchmarks/results/srr_measure-<date>.json`` and prints a markdown table. Timings are
medians over ``--repeats`` runs after ``--warmup``; all ways alternate run by run so that they
see the same machine load, and speed-ups are medians of the per-run ratios. Further columns: the
naive code with single-threaded factorisations (how much of its cost is LAPACK threading on
small matrices), the textbook form (a loop over heads with ``torch.logdet``, LU-based), and
``R^c`` alone (the only term whose computation differs between the ways: ``R``'s Gram side is
N×N in both when N < d, and the projection ``Z·[U_1 … U_K]`` is common). Values are compared per
image and per term (R, R^c, μ) relative to ``|value|``.
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

from srrlab import create_model
from srrlab.rate import compression_rate, default_eps, srr_terms

# tokens N -> (image_size, patch_size) of crate-tiny
SHAPES = {65: (32, 4), 197: (224, 16)}


def _cholesky(m: torch.Tensor, serial: bool) -> torch.Tensor:
    if not serial:
        return torch.linalg.cholesky(m)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.cholesky(m)
    finally:
        torch.set_num_threads(threads)


def naive_rc(z: torch.Tensor, U: torch.Tensor, eps: float, serial_cholesky: bool = False) -> torch.Tensor:
    """``R^c`` the naive way: ``A_k = Z U_k`` for all heads at once, N×N Grams, batched N×N Cholesky."""
    b, n, d = z.shape
    k, _, p = U.shape
    eye = torch.eye(n, dtype=z.dtype)
    a = torch.einsum("bnd,kdp->bknp", z, U)  # (B, K, N, p): A_k per image
    m = eye + (p / (n * eps**2)) * (a @ a.transpose(-1, -2))  # (B, K, N, N)
    return _cholesky(m, serial_cholesky).diagonal(dim1=-2, dim2=-1).log().sum(-1).sum(-1)  # ½·2 Σ log diag


def naive_srr_terms(z: torch.Tensor, U: torch.Tensor, eps: float, lam: float = 0.1,
                    serial_cholesky: bool = False) -> dict[str, torch.Tensor]:
    """The naive measurement: N×N Grams everywhere, batched Cholesky per image and head.

    ``serial_cholesky=True`` runs the factorisations with one thread (a variant, to separate the
    effect of the Gram side from that of threading)."""
    b, n, d = z.shape
    rc = naive_rc(z, U, eps, serial_cholesky)
    eye = torch.eye(n, dtype=z.dtype)
    m = eye + (d / (n * eps**2)) * (z @ z.transpose(-1, -2))  # (B, N, N)
    r = _cholesky(m, serial_cholesky).diagonal(dim1=-2, dim2=-1).log().sum(-1)
    l0 = (z != 0).sum(dim=(-2, -1)).to(z.dtype)
    return {"R": r, "Rc": rc, "l0": l0, "mu": lam * l0 + rc - r}


def naive_logdet_srr_terms(z: torch.Tensor, U: torch.Tensor, eps: float, lam: float = 0.1) -> dict[str, torch.Tensor]:
    """The textbook way, as a coding-rate formula reads: a loop over heads, ``A_k = Z U_k`` and
    ``½ torch.logdet(I_N + γ A_k A_kᵀ)`` (LU) per head, batched over images; ``R`` likewise."""
    b, n, d = z.shape
    k, _, p = U.shape
    eye = torch.eye(n, dtype=z.dtype)
    rc = torch.zeros(b, dtype=z.dtype)
    for h in range(k):
        a = z @ U[h]
        rc = rc + 0.5 * torch.logdet(eye + (p / (n * eps**2)) * (a @ a.transpose(-1, -2)))
    r = 0.5 * torch.logdet(eye + (d / (n * eps**2)) * (z @ z.transpose(-1, -2)))
    l0 = (z != 0).sum(dim=(-2, -1)).to(z.dtype)
    return {"R": r, "Rc": rc, "l0": l0, "mu": lam * l0 + rc - r}


def layer_inputs(tokens: int, batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    image_size, patch_size = SHAPES[tokens]
    torch.manual_seed(seed)
    model = create_model("crate-tiny", image_size=image_size, patch_size=patch_size).eval()
    assert model.config.num_tokens == tokens
    x = torch.randn(batch, 3, image_size, image_size)
    with torch.no_grad():
        out = model.forward_layers(x, layernorm=False)
        z = out.layers[-1].z_out.contiguous()
        U = model.subspaces()[-1].detach()
    return z, U


def max_rel(a: dict, b: dict, keys=("R", "Rc", "mu")) -> float:
    return max(float(((a[t].double() - b[t].double()).abs() / b[t].double().abs()).max()) for t in keys)


def _alternate(fns: dict, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each callable, run in turn ``warmup + repeats`` times (the warm-up runs dropped)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[key].append(time.perf_counter() - t0)
    return times


def measure(tokens: int, batch: int, repeats: int, warmup: int) -> dict:
    """Time ours against the naive ways on the same layer output, alternating run by run.

    Columns: ``ours`` (:func:`srr_terms`), ``naive`` (batched N×N Cholesky), ``naive_serial``
    (the same, 1-thread factorisations), ``naive_logdet`` (per-head loop of ``torch.logdet``), and
    the part that differs between the ways: ``rc_ours`` / ``rc_naive`` (``R^c`` alone).
    Speed-ups are medians of the per-run ratios."""
    z, U = layer_inputs(tokens, batch)
    n, p = z.shape[1], U.shape[-1]
    eps = default_eps(n, p)
    with torch.no_grad():
        ours = srr_terms(z, U)
        naive = naive_srr_terms(z, U, eps)
        textbook = naive_logdet_srr_terms(z, U, eps)
        ref64 = srr_terms(z, U, dtype=torch.float64)
        t = _alternate({
            "ours": lambda: srr_terms(z, U),
            "naive": lambda: naive_srr_terms(z, U, eps),
            "naive_serial": lambda: naive_srr_terms(z, U, eps, serial_cholesky=True),
            "naive_logdet": lambda: naive_logdet_srr_terms(z, U, eps),
            "rc_ours": lambda: compression_rate(z, U, eps),
            "rc_naive": lambda: naive_rc(z, U, eps),
        }, repeats, warmup)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(t[a], t[b]))

    row = {"tokens": n, "batch": batch, "dim": z.shape[-1], "heads": U.shape[0], "dim_head": p, "eps": ours["eps"]}
    for key, ts in t.items():
        row[f"{key}_ms_median"] = statistics.median(ts) * 1e3
        row[f"{key}_ms_min"] = min(ts) * 1e3
    row.update({
        "speedup": ratio("naive", "ours"), "speedup_vs_naive_serial": ratio("naive_serial", "ours"),
        "speedup_vs_naive_logdet": ratio("naive_logdet", "ours"), "speedup_rc_only": ratio("rc_naive", "rc_ours"),
        "max_rel_diff_vs_naive": max_rel(ours, naive), "max_rel_diff_vs_naive_logdet": max_rel(ours, textbook),
        # torch.logdet is LU-based; this torch build's batched MKL LU can fail after torch.set_num_threads
        "naive_logdet_nonfinite_images": int((~torch.isfinite(textbook["mu"])).sum()),
        "max_rel_diff_ours_vs_fp64": max_rel(ours, ref64),
        "max_rel_diff_naive_vs_fp64": max_rel(naive, ref64),
        "mean_R": float(ours["R"].mean()), "mean_Rc": float(ours["Rc"].mean()), "mean_mu": float(ours["mu"].mean()),
    })
    return row


def _failed(row: dict) -> str:
    n = row.get("naive_logdet_nonfinite_images", 0)
    return f" (non-finite for {n} of {row['batch']} images)" if n else ""


def markdown(rows: list[dict]) -> str:
    """The results as a markdown table (medians in ms; speed-ups are medians of per-run ratios)."""
    lines = ["| N | batch | ours ms | naive ms (batched N×N Cholesky) | speed-up | naive, 1-thread Cholesky: speed-up "
             "| textbook (per-head `torch.logdet`) ms | speed-up | R^c alone: ours / naive ms | speed-up "
             "| max rel diff vs naive | vs fp64 (ours / naive) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['tokens']} | {r['batch']} | {r['ours_ms_median']:.1f} | {r['naive_ms_median']:.1f} | "
            f"{r['speedup']:.2f}× | {r['speedup_vs_naive_serial']:.2f}× | {r['naive_logdet_ms_median']:.1f}"
            f"{_failed(r)} | "
            f"{r['speedup_vs_naive_logdet']:.2f}× | {r['rc_ours_ms_median']:.1f} / {r['rc_naive_ms_median']:.1f} | "
            f"{r['speedup_rc_only']:.2f}× | {r['max_rel_diff_vs_naive']:.1e} | "
            f"{r['max_rel_diff_ours_vs_fp64']:.1e} / {r['max_rel_diff_naive_vs_fp64']:.1e} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", default="65,197")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/srr_measure-<date>.json)")
    args = ap.parse_args()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        row = measure(tokens, args.batch, args.repeats, args.warmup)
        rows.append(row)
        print(f"N={row['tokens']:>4}  ours {row['ours_ms_median']:8.1f} ms  naive {row['naive_ms_median']:8.1f} ms  "
              f"speed-up {row['speedup']:5.2f}x  (naive with 1-thread Cholesky {row['naive_serial_ms_median']:8.1f} ms, "
              f"{row['speedup_vs_naive_serial']:5.2f}x)  max rel diff {row['max_rel_diff_vs_naive']:.1e}", flush=True)
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "processor": platform.processor(),
            "load_avg_1min_start": load_start,
            "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "repeats": args.repeats}
    out = Path(args.out or Path(__file__).parent / "results" / f"srr_measure-{meta['date']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print()
    print(markdown(rows))
    print(f"\n(medians of {args.repeats} runs; torch threads {meta['threads']}; 1-min load average "
          f"{meta['load_avg_1min_start']:.2f} at start, {meta['load_avg_1min']:.2f} at end)")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
