"""The benchmark suite (`make bench`): every performance figure of srrlab measured side by side in
one run, each as a ratio against its reference, with the targets checked.

Sections (each at the ``tiny`` shape — d=384, L=12, K=6, 32×32×3 images, patch 4, batch 128 —
and at the digits preset — 8×8×1, patch 2, d=64, L=4, K=4, batch 64):

``machine``     this machine's fp32 GEMM peak, measured (best of square and model-shaped products).
``step``        forward + cross-entropy + backward + Adam, fp32, every variant and ``crate`` under
                ``torch.compile`` (the trainer's ``--compile``) against the reference of the
                official formulation (``official_crate.py``) after checking that both give the
                same logits and gradients; images/s, speed-up (median of per-round ratios, models
                interleaved round by round), matrix-product FLOPs per step counted analytically
                (``flops.py``) and achieved GFLOP/s as a fraction of the GEMM peak.
``profile``     where a ``crate`` step's time goes (torch.profiler, grouped by kind of op).
``srr``         the SRR measure against the naive N×N way at N=65 and N=197 (``srr_measure.py``).
``regularizer`` the SRR regulariser's overhead, last / random / all layers (``regularizer_overhead.py``).
``study``       study throughput, models per hour, with 1 and 2 workers (``study_throughput.py``).
``group``       grouped against single training, models per hour of training, digits and 28×28, 1 and 2
                workers, interleaved (``group_throughput.py``).
``kendall``     ``correlation_table`` with its permutation p-values and bootstrap intervals, 26 measures ×
                64 models, 10 000 permutations + 2 000 resamples (``kendall_uncertainty.py``).
``threads``     the ``crate`` and official steps with 1 and with 2 torch threads. Run last: after
                ``torch.set_num_threads`` this torch build's batched MKL LU (``torch.logdet``, the
                textbook SRR way) can return invalid pivots.

The process's allocator is put in a steady state first (glibc ``mallopt``: no trimming, a large top
pad), so that every section sees the same allocator whatever ran before it: in a fresh process the
first large tensors page-fault (the SRR measure at N=197 ran 1.5× slower cold), and a long-running
training or study process is warm.

    python benchmarks/suite.py [--sections step,srr,...] [--sizes tiny,digits] [--rounds 3]

Writes ``benchmarks/results/<date>.json`` (everything) and ``benchmarks/results/<date>.md`` (the
summary quoted in ``docs/performance.md``: the targets, measured against, met or missed by how
much, and the tables).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import flops  # noqa: E402
import group_throughput  # noqa: E402
import kendall_uncertainty  # noqa: E402
import regularizer_overhead  # noqa: E402
import srr_measure  # noqa: E402
import study_throughput  # noqa: E402
from official_crate import from_srrlab  # noqa: E402
from step_time import median_step  # noqa: E402
from vs_official import check_same_outputs  # noqa: E402

from srrlab.models import VARIANTS, create_model  # noqa: E402

SHAPES = {"tiny": dict(batch=128, steps=3), "digits": dict(batch=64, steps=30)}
SECTIONS = ("machine", "step", "profile", "srr", "regularizer", "study", "group", "kendall", "threads")
COMPILED = "crate --compile"
TARGETS = {
    "step_vs_official": 1.5,  # training step ≥ 1.5× the official formulation at identical outputs
    "tiny_peak_fraction": 0.60,  # the tiny step at ≥ 60% of the measured GEMM peak
    "srr_speedup_197": 5.0,  # SRR measurement ≥ 5× the naive way at N=197 ...
    "srr_speedup_65": 1.0,  # ... and no slower at N=65
    "regularizer_last": 0.10,  # last-layer regulariser ≤ 10% overhead
    "kendall_table_s": kendall_uncertainty.TARGET_S,  # correlation table with uncertainty ≤ 10 s
    "group_digits": 3.0,  # grouped training ≥ 3× the models/hour of single runs at the demo size ...
    "group_fmnist": 2.0,  # ... and ≥ 2× at the 28×28 size
}


def _log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------
# machine: the fp32 GEMM peak
# --------------------------------------------------------------------------------------
def gemm_rate(m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """Best GFLOP/s of ``(m, k) @ (k, n)`` in fp32 over repeated products for about ``seconds``."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    out = torch.empty(m, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * m * k * n / best / 1e9


def machine_section() -> dict:
    """The peak is the best rate over square products and the shapes a ``tiny`` layer runs
    (8320 = 128 images × 65 tokens rows, d = 384)."""
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (3072, 3072, 3072), (8320, 384, 384), (8320, 384, 1152)]
    rates = {f"{m}x{k}x{n}": gemm_rate(m, k, n) for m, k, n in shapes}
    for key, rate in rates.items():
        _log(f"machine: GEMM {key}: {rate:.1f} GFLOP/s")
    return {"gemm_gflops": rates, "peak_gflops": max(rates.values()), "threads": torch.get_num_threads(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count()}


def steady_allocator() -> str:
    """glibc only: never trim the heap and grow it in 1 GiB steps (``mallopt``), so that large
    tensors are reused from the heap instead of page-faulting fresh memory on each allocation.
    Returns what was done (recorded in the results)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
        ok = all(libc.mallopt(k, v) == 1 for k, v in ((m_trim_threshold, 2**31 - 1), (m_top_pad, 2**30),
                                                      (m_mmap_threshold, 2**25)))
    except (OSError, AttributeError):
        ok = False
    return "glibc mallopt: trim off, top pad 1 GiB, mmap threshold 32 MiB" if ok else "default (mallopt unavailable)"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --------------------------------------------------------------------------------------
# step: every variant against the official formulation
# --------------------------------------------------------------------------------------
def _step_models(size: str, variants: list[str]) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    base = create_model(f"crate-{size}")
    official = from_srrlab(base)
    official.config = base.config
    return {"official": official, **{v: create_model(f"{v}-{size}") for v in variants}}


def interleaved(fns: dict[str, Callable[[], float]], rounds: int, label: str) -> dict[str, list[float]]:
    """Call every timing function once per round, in turn; returns the per-round seconds by key."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for key, fn in fns.items():
            times[key].append(fn())
            _log(f"{label} round {r + 1}/{rounds} {key:<16} {times[key][-1] * 1e3:10.1f} ms")
    return times


def paired_speedup(reference: list[float], times: list[float]) -> float:
    """Median over rounds of reference/time: robust to the machine's drift between rounds."""
    return statistics.median(r / t for r, t in zip(reference, times))


def step_section(sizes: list[str], rounds: int, peak: float | None, with_compile: bool = True) -> dict:
    out: dict = {"checks": {}, "rows": [], "compile": []}
    for size in sizes:
        shape = SHAPES[size]
        out["checks"][size] = check_same_outputs(size)
        _log(f"step {size}: same outputs {out['checks'][size]}")
        models = _step_models(size, list(VARIANTS))
        if with_compile:
            torch.manual_seed(0)
            compiled = _Compiled(create_model(f"crate-{size}"))
            t0 = time.perf_counter()
            median_step(compiled, shape["batch"], 1, 1)  # compiles forward and backward
            compile_s = time.perf_counter() - t0
            _log(f"step {size}: {COMPILED}: first two steps (compilation) {compile_s:.1f} s")
            models[COMPILED] = compiled
        fns = {k: (lambda m=m: median_step(m, shape["batch"], shape["steps"], 2)[0]) for k, m in models.items()}
        times = interleaved(fns, rounds, f"step {size}")
        for key, model in models.items():
            t = statistics.median(times[key])
            count = flops.step_flops(model.model if key == COMPILED else model, shape["batch"])
            gflops = count["total"] / t / 1e9
            out["rows"].append({
                "size": size, "model": key, "batch": shape["batch"], "step_s": t, "rounds_s": times[key],
                "images_per_s": shape["batch"] / t, "speedup_vs_official": paired_speedup(times["official"], times[key]),
                "gflop_per_step": count["total"] / 1e9, "gflops": gflops,
                "peak_fraction": gflops / peak if peak else None,
            })
        if with_compile:
            out["compile"].append({"size": size, "model": "crate", "batch": shape["batch"], "compile_s": compile_s,
                                   "eager_step_s": statistics.median(times["crate"]),
                                   "compiled_step_s": statistics.median(times[COMPILED]),
                                   "speedup": paired_speedup(times["crate"], times[COMPILED])})
    return out


# --------------------------------------------------------------------------------------
# threads, profile
# --------------------------------------------------------------------------------------
def _with_threads(n: int, fn: Callable[[], float]) -> float:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def threads_section(sizes: list[str], rounds: int) -> dict:
    rows = []
    for size in sizes:
        shape = SHAPES[size]
        models = _step_models(size, ["crate"])
        fns = {f"{k}@{n}": (lambda m=m, n=n: _with_threads(n, lambda: median_step(m, shape["batch"], shape["steps"], 2)[0]))
               for k, m in models.items() for n in (1, 2)}
        times = interleaved(fns, rounds, f"threads {size}")
        for key, ts in times.items():
            model, n = key.split("@")
            rows.append({"size": size, "model": model, "threads": int(n), "step_s": statistics.median(ts),
                         "rounds_s": ts, "images_per_s": shape["batch"] / statistics.median(ts),
                         "speedup_vs_1_thread": paired_speedup(times[f"{model}@1"], ts)})
    return {"rows": rows}


class _Compiled(torch.nn.Module):
    """A model whose forward runs through ``torch.compile`` (as the trainer's ``--compile``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.compiled = torch.compile(model)

    def forward(self, x):
        return self.compiled(x)


_KINDS = (
    ("matrix products", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul", "aten::linear")),
    ("attention (SDPA)", ("scaled_dot_product", "attention")),
    ("softmax", ("softmax",)),
    ("layer norm", ("layer_norm",)),
    ("optimizer", ("Optimizer", "lerp", "addcdiv", "addcmul", "sqrt", "_foreach")),
    ("copies", ("copy_", "_to_copy", "clone", "contiguous", "cat")),
    ("elementwise", ("add", "sub", "mul", "div", "clamp", "relu", "threshold", "fill_", "where", "neg", "sum")),
)


def _kind(name: str) -> str:
    for kind, keys in _KINDS:
        if any(k in name for k in keys):
            return kind
    return "other"


def profile_step(model: torch.nn.Module, batch: int, steps: int = 2) -> dict:
    """Self CPU time of a training step's ops, grouped by kind, as fractions; and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    median_step(model, batch, 1, 1)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        median_step(model, batch, steps, 0)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    kinds: dict[str, float] = {}
    for e in events:
        kinds[_kind(e.key)] = kinds.get(_kind(e.key), 0.0) + e.self_cpu_time_total / total
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    return {"kinds": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "top_ops": [{"op": e.key, "fraction": e.self_cpu_time_total / total, "calls": e.count} for e in top]}


def profile_section(sizes: list[str]) -> dict:
    out = {}
    for size in sizes:
        models = _step_models(size, ["crate"])
        out[size] = {k: profile_step(m, SHAPES[size]["batch"]) for k, m in models.items()}
        _log(f"profile {size}: crate {out[size]['crate']['kinds']}")
    return out


# --------------------------------------------------------------------------------------
# srr, regularizer, study
# --------------------------------------------------------------------------------------
def srr_section(rounds: int) -> dict:
    rows = [srr_measure.measure(tokens, 128, repeats=max(5, 3 * rounds), warmup=2) for tokens in (65, 197)]
    for r in rows:
        _log(f"srr N={r['tokens']}: ours {r['ours_ms_median']:.1f} ms, naive {r['naive_ms_median']:.1f} ms "
             f"({r['speedup']:.2f}x), textbook {r['naive_logdet_ms_median']:.1f} ms ({r['speedup_vs_naive_logdet']:.2f}x)")
    return {"rows": rows}


def regularizer_section(sizes: list[str], rounds: int, variant: str = "crate-t") -> dict:
    rows = []
    for size in sizes:
        shape = regularizer_overhead.SHAPES[size]
        name = f"{variant}-{size}"
        fns = {mode: (lambda mode=mode: regularizer_overhead._median_step(name, shape["batch"], mode, shape["steps"]))
               for mode in regularizer_overhead.MODES}
        times = interleaved(fns, rounds, f"regularizer {size}")
        parts = regularizer_overhead._parts(name, shape["batch"], shape["steps"])
        for mode, ts in times.items():
            rows.append({"model": name, "batch": shape["batch"], "mode": mode, "step_s": statistics.median(ts),
                         "rounds_s": ts, "overhead": 1.0 / paired_speedup(times["plain"], ts) - 1.0,
                         **(parts if mode == "last" else {})})
    return {"rows": rows, "eta": regularizer_overhead.ETA, "variant": variant}


def study_section(sizes: list[str]) -> dict:
    rows = []
    for size in sizes:
        for workers in (1, 2):
            row = study_throughput.study_throughput(size, workers)
            rows.append(row)
            _log(f"study {size} workers={workers}: {row['models_per_hour']:.0f} models/hour ({row['wall_s']:.0f} s)")
    return {"rows": rows}


def group_section(rounds: int) -> dict:
    rows = group_throughput.run(list(group_throughput.SIZES), [1, 2], members=4, repeats=max(1, rounds - 1))
    return {"rows": rows}


def kendall_section(rounds: int) -> dict:
    row = kendall_uncertainty.measure(rounds=rounds)
    _log(f"kendall: table with uncertainty {row['table_s_median']:.2f} s, without {row['fast_table_s_median']:.2f} s")
    return {"rows": [row]}


# --------------------------------------------------------------------------------------
# the summary
# --------------------------------------------------------------------------------------
def _row(rows, **match):
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def targets(results: dict) -> list[dict]:
    """Each target with its measured value and verdict (met, or missed by how much)."""
    out = []

    def add(name: str, measured, target, higher_is_better: bool, unit: str = "×") -> None:
        if measured is None:
            return
        met = measured >= target if higher_is_better else measured <= target
        gap = (target / measured if higher_is_better else measured / target) if measured else float("inf")
        out.append({"target": name, "goal": target, "measured": measured, "met": bool(met),
                    "missed_by": None if met else gap, "unit": unit})

    step = results.get("step", {}).get("rows", [])
    for size in SHAPES:
        for model in ("crate", COMPILED):
            r = _row(step, size=size, model=model)
            if r:
                add(f"`{model}` step vs official, {size}", r["speedup_vs_official"], TARGETS["step_vs_official"], True)
    r = _row(step, size="tiny", model="crate")
    if r and r["peak_fraction"] is not None:
        add("`crate` tiny step, fraction of GEMM peak", r["peak_fraction"], TARGETS["tiny_peak_fraction"], True, "%")
    srr = results.get("srr", {}).get("rows", [])
    for tokens, key in ((197, "srr_speedup_197"), (65, "srr_speedup_65")):
        r = _row(srr, tokens=tokens)
        if r:
            add(f"SRR measure vs naive, N={tokens}", r["speedup"], TARGETS[key], True)
    for r in results.get("regularizer", {}).get("rows", []):
        if r["mode"] == "last":
            add(f"regulariser overhead, last layer, {r['model']}", r["overhead"], TARGETS["regularizer_last"], False, "%")
    for r in results.get("group", {}).get("rows", []):
        add(f"grouped vs single training, {r['size']}, {r['workers']} worker(s)", r["ratio"],
            TARGETS[f"group_{r['size']}"], True)
    for r in results.get("kendall", {}).get("rows", []):
        add(f"correlation table with uncertainty, {r['measures']}×{r['models']}", r["table_s_median"],
            TARGETS["kendall_table_s"], False, "s")
    return out


def _fmt(value: float, unit: str) -> str:
    return f"{value:.0%}" if unit == "%" else f"{value:.2f} s" if unit == "s" else f"{value:.2f}×"


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [f"# Benchmark suite, {meta['date']}", "",
             f"Machine: {meta['cpu']} ({meta['cpu_count']} cores), torch {meta['torch']}, {meta['threads']} threads, "
             f"fp32. Sections run: {', '.join(meta['sections'])}; {meta['rounds']} interleaved rounds; "
             f"allocator: {meta.get('allocator', 'default')}; wall time {meta['wall_s'] / 60:.1f} min.", ""]
    if "machine" in results:
        m = results["machine"]
        lines += [f"Measured fp32 GEMM peak: **{m['peak_gflops']:.1f} GFLOP/s** (best of "
                  + ", ".join(f"{k}: {v:.0f}" for k, v in m["gemm_gflops"].items()) + ").", ""]
    tg = results.get("targets", [])
    if tg:
        lines += ["## Targets", "", "| target | goal | measured | verdict |", "|---|---:|---:|---|"]
        for t in tg:
            goal = ("≤ " if t["unit"] == "s" or (t["unit"] == "%" and "overhead" in t["target"]) else "≥ ") \
                + _fmt(t["goal"], t["unit"])
            verdict = "met" if t["met"] else f"missed by {t['missed_by']:.2f}×"
            lines.append(f"| {t['target']} | {goal} | {_fmt(t['measured'], t['unit'])} | {verdict} |")
        lines.append("")
    if "step" in results:
        lines += ["## Training step (forward + backward + Adam) against the official formulation", "",
                  "Same logits and gradients checked first (max relative difference): "
                  + "; ".join(f"{s}: fp64 logits {c['logits_rel_fp64']:.1e}, grads {c['grads_rel_fp64']:.1e}, "
                              f"fp32 logits {c['logits_rel_fp32']:.1e}" for s, c in results["step"]["checks"].items()),
                  "", "| size | model | batch | ms/step | images/s | vs official | GFLOP/step | GFLOP/s | of peak |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["step"]["rows"]:
            peak = f"{r['peak_fraction']:.0%}" if r["peak_fraction"] is not None else "–"
            lines.append(f"| {r['size']} | {r['model']} | {r['batch']} | {r['step_s'] * 1e3:.1f} | {r['images_per_s']:.1f} | "
                         f"{r['speedup_vs_official']:.2f}× | {r['gflop_per_step']:.2f} | {r['gflops']:.1f} | {peak} |")
        lines += ["", "GFLOP counts matrix products only (2·m·n·k each, forward and backward, as "
                  "`torch.utils.flop_counter` counts them; `benchmarks/flops.py`); crate-g's Cholesky "
                  "factorisations and solves are not in its count.", ""]
    if "threads" in results:
        lines += ["## Thread settings", "", "| size | model | threads | ms/step | vs 1 thread |", "|---|---|---:|---:|---:|"]
        for r in results["threads"]["rows"]:
            lines.append(f"| {r['size']} | {r['model']} | {r['threads']} | {r['step_s'] * 1e3:.1f} | "
                         f"{r['speedup_vs_1_thread']:.2f}× |")
        lines.append("")
    if results.get("step", {}).get("compile"):
        lines += ["## `torch.compile` (`--compile`)", "",
                  "| size | model | compilation s | eager ms/step | compiled ms/step | speed-up |", "|---|---|---:|---:|---:|---:|"]
        for r in results["step"]["compile"]:
            lines.append(f"| {r['size']} | {r['model']} | {r['compile_s']:.0f} | {r['eager_step_s'] * 1e3:.1f} | "
                         f"{r['compiled_step_s'] * 1e3:.1f} | {r['speedup']:.2f}× |")
        lines.append("")
    if "profile" in results:
        lines += ["## Where a step's time goes (self CPU time by kind of op)", "",
                  "| size | model | " + " | ".join(k for k, _ in _KINDS) + " | other |",
                  "|---|---|" + "---:|" * (len(_KINDS) + 1)]
        for size, models in results["profile"].items():
            for name, prof in models.items():
                cells = [f"{prof['kinds'].get(k, 0.0):.0%}" for k, _ in _KINDS] + [f"{prof['kinds'].get('other', 0.0):.0%}"]
                lines.append(f"| {size} | {name} | " + " | ".join(cells) + " |")
        lines.append("")
    if "srr" in results:
        lines += ["## SRR measurement against the naive N×N way (crate-tiny layer, 128 images)", "",
                  srr_measure.markdown(results["srr"]["rows"]), ""]
    if "regularizer" in results:
        reg = results["regularizer"]
        lines += [f"## SRR regulariser overhead ({reg['variant']}, η = {reg['eta']})", "",
                  "| model | batch | regularised layers | ms/step | overhead vs plain |", "|---|---:|---|---:|---:|"]
        for r in reg["rows"]:
            over = "–" if r["mode"] == "plain" else f"{r['overhead']:+.0%}"
            lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['step_s'] * 1e3:.1f} | {over} |")
        lines += ["", "| model | rates R, R^c fwd+bwd ms | layer re-applied fwd+bwd ms |", "|---|---:|---:|"]
        for r in reg["rows"]:
            if r["mode"] == "last":
                lines.append(f"| {r['model']} | {r['rates_fwd_bwd_s'] * 1e3:.1f} | {r['layer_fwd_bwd_s'] * 1e3:.1f} |")
        lines.append("")
    if "study" in results:
        lines += ["## Study throughput", "", study_throughput.markdown(results["study"]["rows"]), ""]
    if "group" in results:
        lines += ["## Grouped training", "", group_throughput.markdown(results["group"]["rows"]), ""]
    if "kendall" in results:
        lines += ["## Correlation table with uncertainty", "",
                  kendall_uncertainty.markdown(results["kendall"]["rows"][0]), ""]
    return "\n".join(lines)


def run_suite(sections: list[str], sizes: list[str], rounds: int, out_dir: Path, with_compile: bool = True) -> dict:
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    bad = sorted(set(sizes) - set(SHAPES))
    if bad:
        raise ValueError(f"unknown sizes {bad}; choose from {', '.join(SHAPES)}")
    start = time.perf_counter()
    allocator = steady_allocator()
    results: dict = {}
    peak = None
    if "machine" in sections:
        results["machine"] = machine_section()
        peak = results["machine"]["peak_gflops"]
    if "step" in sections:
        results["step"] = step_section(sizes, rounds, peak, with_compile)
    if "profile" in sections:
        results["profile"] = profile_section(sizes)
    if "srr" in sections:
        results["srr"] = srr_section(rounds)
    if "regularizer" in sections:
        results["regularizer"] = regularizer_section(sizes, rounds)
    if "study" in sections:
        results["study"] = study_section(sizes)
    if "group" in sections:
        results["group"] = group_section(rounds)
    if "kendall" in sections:
        results["kendall"] = kendall_section(rounds)
    if "threads" in sections:  # last: torch.set_num_threads can break batched LU (module docstring)
        results["threads"] = threads_section(sizes, rounds)
    results["targets"] = targets(results)
    results["meta"] = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                       "sections": sections, "sizes": sizes, "rounds": rounds, "allocator": allocator,
                       "wall_s": time.perf_counter() - start}
    out_dir.mkdir(parents=True, exist_ok=True)
    date = results["meta"]["date"]
    (out_dir / f"{date}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / f"{date}.md").write_text(markdown(results) + "\n")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--sizes", default="tiny,digits")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per comparison")
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the step section")
    args = ap.parse_args()
    results = run_suite(args.sections.split(","), args.sizes.split(","), args.rounds, Path(args.out_dir),
                        with_compile=not args.no_compile)
    print()
    print(markdown(results))
    print(f"\nwritten to {Path(args.out_dir) / results['meta']['date']}.json and .md")


if __name__ == "__main__":
    main()
