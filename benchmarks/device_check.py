"""The prepared device check: what srrlab needs to know about a GPU, measured in one run (~8 minutes).

A GPU is lent for a few minutes at a time; this script measures everything at once and writes one JSON
file. Sections, each with its own time budget (a unit of work that would start after its section's
budget is left out and listed as skipped; a section 1.25 × its budget + 30 s long is interrupted), each recorded
with its status, seconds, result and error: one failing section never loses the others, and the JSON
is rewritten after every section.

``tests``     ``pytest -m cuda tests/test_cuda.py`` in a subprocess with ``SRRLAB_TEST_DEVICE=<device>``:
              every path of srrlab on the device against the CPU (tolerances: tests/test_cuda.py); the
              outcome and duration of every test, the counts and pytest's summary line.
``group``     grouped (:mod:`srrlab.train.group`) against single training, models per hour of training, at
              the ``digits``, ``fmnist`` and ``tiny`` sizes of ``benchmarks/group_throughput.py`` (its
              ``measure``): groups of 1, 2, 4, … 32 members against a few runs alone.
``step``      the paper-size training step (``crate``, d = 384, depth 12, 32×32×3 inputs, patch 4, batch 128):
              fp32 and amp (bf16 autocast), eager and ``torch.compile`` (``benchmarks/step_time.py``'s
              ``median_step``); the first two steps (compilation) timed apart.
``measures``  every registered measure on one paper-size model (``benchmarks/measure_cost.py``'s
              ``size_inputs`` and ``preset_settings``: the ``paper`` preset's settings on 256 random
              images), in registration order on one shared context, as ``compute_measures`` computes them.

    python benchmarks/device_check.py                         # on the GPU machine (--device cuda), ~8 min
    python benchmarks/device_check.py --device cpu --quick    # the same code paths on the CPU, ~2 min

``--quick``: small models, few members, few steps, a few of the ``cuda`` tests, one compilation (fp32;
about a minute more on a CPU whose inductor cache is cold). Writes
``benchmarks/results/device_check-<date>.json`` (``device_check-<date>-<device>[-quick].json`` for
any other run than the full one on CUDA) and prints a summary. docs/performance.md, "On a GPU: the
prepared device check", says how to read it.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import group_throughput  # noqa: E402
import measure_cost  # noqa: E402
import step_time  # noqa: E402

SECTIONS = ("tests", "group", "step", "measures")
#: seconds per section: on the GPU (about 8 minutes in all) and with --quick (about 2 minutes on a CPU)
BUDGETS = {"tests": 180.0, "group": 90.0, "step": 100.0, "measures": 60.0}
#: a compilation is not started with less than this left of the step budget (about its time on a GPU)
COMPILE_ESTIMATE_S = 40.0
QUICK_BUDGETS = {"tests": 45.0, "group": 30.0, "step": 60.0, "measures": 20.0}
#: --quick: the cuda tests run (a pytest -k expression)
QUICK_TESTS = "rates_on_device or layerwise_srr or toy_study or (forward_and_backward and crate-t]) or augmentation"
#: --quick: smaller models and data for the group sizes (group_throughput.SIZES entries, restored after)
QUICK_GROUP = {
    "digits": {"model_options": {"depth": 1, "dim": 16, "heads": 2}},
    "fmnist": {"model_options": {"depth": 1, "dim": 16, "heads": 2},
               "data_options": {"subset": "embedded", "train_per_class": 20}},
    "tiny": {"model_options": {"patch_size": 4, "depth": 1, "dim": 24, "heads": 2},
             "data_options": {"image_size": 32, "channels": 3, "num_train": 192, "num_test": 64}},
}
#: --quick: the step model (the paper's input shape, a small network) and the measure settings
QUICK_STEP = dict(dim=32, depth=2, heads=2)
QUICK_MEASURE_SETTINGS = dict(search_iterations=4, mc_samples=2, ascent_steps=2, ascent_restarts=1,
                              adaptive_images=32, adaptive_steps=3, adaptive_samples=2, hessian_images=32,
                              hutchinson_probes=2, power_iterations=3, srr_images=32)


class SectionTimeout(Exception):
    """A section ran far past its budget and was interrupted."""


class Deadline:
    """The end of a section's budget."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, estimate: float = 0.0) -> bool:
        """Whether a unit of work expected to take ``estimate`` seconds still fits."""
        return self.left() > estimate


@contextlib.contextmanager
def hard_deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`SectionTimeout` in this (main) thread after ``seconds`` (SIGALRM; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def interrupt(signum, frame):
        raise SectionTimeout(f"interrupted after {seconds:.0f} s, far past the section's budget")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# tests: pytest -m cuda in a subprocess
# ---------------------------------------------------------------------------------------------
_OUTCOME = re.compile(r"^(tests/\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
_DURATION = re.compile(r"^\s*([\d.]+)s (call|setup|teardown)\s+(tests/\S+::\S+)")
_SUMMARY = re.compile(r"^=+ (.* in [\d.]+s.*?) =+$")


def parse_pytest(output: str) -> dict[str, Any]:
    """Outcome per test, counts, seconds per test (setup + call + teardown) and the summary line of a
    ``pytest -v --durations=0`` output (complete or cut short)."""
    tests: dict[str, str] = {}
    seconds: dict[str, float] = {}
    summary = None
    failures = []
    for line in output.splitlines():
        if m := _OUTCOME.match(line):
            tests.setdefault(m.group(1), m.group(2))
        elif m := _DURATION.match(line):
            seconds[m.group(3)] = seconds.get(m.group(3), 0.0) + float(m.group(1))
        elif m := _SUMMARY.match(line.strip()):
            summary = m.group(1)
        elif line.startswith(("FAILED ", "ERROR ")):
            failures.append(line[:400])
    counts = {k: sum(1 for v in tests.values() if v == k) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR")}
    return {"tests": tests, "seconds": seconds, "counts": {k.lower(): v for k, v in counts.items()},
            "summary": summary, "failures": failures}


def tests_section(args: argparse.Namespace, deadline: Deadline, part: dict[str, Any]) -> None:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-rfE", "--durations=0", "-p", "no:cacheprovider",
           "tests/test_cuda.py"]
    if args.tests_k:
        cmd += ["-k", args.tests_k]
    part["command"] = cmd[1:]
    env = {**os.environ, "SRRLAB_TEST_DEVICE": args.device, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(1.0, deadline.left()))
        part["timed_out"] = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and what it started (the study's Dask workers)
        output, _ = proc.communicate()
        part["timed_out"] = True
    except BaseException:  # interrupted (hard deadline, Ctrl-C): leave no pytest behind
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    part["returncode"] = proc.returncode
    part.update(parse_pytest(output))
    part["output_tail"] = output[-4000:]
    part["numbers"] = part["counts"]
    if part["timed_out"]:
        part["error"] = f"pytest ran past the section's budget ({deadline.seconds:.0f} s) and was stopped"
    elif proc.returncode not in (0, 5) or part["counts"]["failed"] or part["counts"]["error"]:
        part["error"] = f"pytest exit status {proc.returncode}: {part['summary']}"


# ---------------------------------------------------------------------------------------------
# group: grouped vs single training
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quick_group_sizes(quick: bool) -> Iterator[None]:
    """With ``quick``: the smaller models and data of :data:`QUICK_GROUP` in group_throughput.SIZES."""
    saved = {k: dict(v) for k, v in group_throughput.SIZES.items()}
    try:
        if quick:
            for size, change in QUICK_GROUP.items():
                group_throughput.SIZES[size].update(change)
        yield
    finally:
        group_throughput.SIZES.clear()
        group_throughput.SIZES.update(saved)


def group_section(args: argparse.Namespace, deadline: Deadline, part: dict[str, Any]) -> None:
    device = args.device
    rows: list[dict[str, Any]] = part.setdefault("rows", [])
    skipped: list[str] = part.setdefault("skipped", [])
    epochs = args.group_epochs
    with quick_group_sizes(args.quick):
        t0 = time.perf_counter()  # untimed warm-up: the device's context, kernels, the data loaders' caches
        group_throughput.measure(args.group_sizes[0], 1, 1, True, 1, device)
        group_throughput.measure(args.group_sizes[0], 1, 1, False, 1, device)
        part["warmup_s"] = time.perf_counter() - t0
        for size in args.group_sizes:
            if not deadline.allows():
                skipped.append(f"{size}: all")
                continue
            try:
                alone_s = group_throughput.measure(size, 1, args.alone, False, epochs, device)
            except Exception as exc:  # noqa: BLE001 - recorded, the next size is tried
                rows.append({"size": size, "members": 0, "error": _error(exc)})
                _free(torch.device(device))
                continue
            per_model = alone_s / args.alone
            last: float | None = None
            for members in args.members:
                estimate = 0.0 if last is None else last * 1.5  # members double: the step grows less than 2×
                if not deadline.allows(estimate):
                    skipped.append(f"{size}: {members} members")
                    continue
                try:
                    grouped_s = group_throughput.measure(size, 1, members, True, epochs, device)
                except Exception as exc:  # noqa: BLE001 - e.g. out of memory at 32 members
                    rows.append({"size": size, "members": members, "error": _error(exc)})
                    _free(torch.device(device))
                    break
                last = grouped_s
                rows.append({"size": size, "members": members, "epochs": epochs, "device": device,
                             "grouped_s": grouped_s, "grouped_models_per_h": members * 3600 / grouped_s,
                             "alone_runs": args.alone, "alone_s": alone_s, "alone_models_per_h": 3600 / per_model,
                             "ratio": per_model * members / grouped_s})
                print(f"group {size} x{members}: grouped {grouped_s:.1f} s, alone {per_model * members:.1f} s "
                      f"(from {args.alone} run(s)), ratio {rows[-1]['ratio']:.2f}", flush=True)
    part["numbers"] = {f"{r['size']} x{r['members']}": round(r["ratio"], 3) for r in rows if "ratio" in r}
    errors = [f"{r['size']} x{r['members']}: {r['error']}" for r in rows if "error" in r]
    if errors:
        part["error"] = "; ".join(errors)


# ---------------------------------------------------------------------------------------------
# step: the paper-size training step, fp32 / amp, eager / compiled
# ---------------------------------------------------------------------------------------------
def step_section(args: argparse.Namespace, deadline: Deadline, part: dict[str, Any]) -> None:
    from srrlab.models import create_model

    device = torch.device(args.device)
    overrides = dict(measure_cost.SIZES["paper"][1])  # 32×32×3, patch 4 (and d 384, depth 12, 6 heads: tiny)
    if args.quick:
        overrides.update(QUICK_STEP)
    part["shape"] = {"batch": args.step_batch, **overrides}
    rows: list[dict[str, Any]] = part.setdefault("rows", [])
    skipped: list[str] = part.setdefault("skipped", [])
    combos = [(False, False), (True, False), (False, True), (True, True)]  # (amp, compile): compilation last
    for variant in args.step_variants:
        for amp, compiled in combos:
            label = f"{variant} {'amp' if amp else 'fp32'} {'compiled' if compiled else 'eager'}"
            if compiled and args.no_compile:
                skipped.append(f"{label} (--no-compile)")
                continue
            if compiled and amp and args.quick:  # a second compilation: a minute or more on a small CPU
                skipped.append(f"{label} (--quick)")
                continue
            if not deadline.allows(COMPILE_ESTIMATE_S if compiled and not args.quick else 0.0):
                skipped.append(f"{label} (budget)")
                continue
            row: dict[str, Any] = {"model": variant, "amp": amp, "compile": compiled, "batch": args.step_batch}
            try:
                torch.manual_seed(0)
                model = create_model(f"{variant}-tiny", **overrides).to(device)
                row["parameters"] = model.num_parameters()
                forward = torch.compile(model) if compiled else model
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                step_time.median_step(forward, args.step_batch, 1, 1, amp=amp)  # first two steps: compilation
                row["first_steps_s"] = time.perf_counter() - t0
                median, times = step_time.median_step(forward, args.step_batch, args.repeats, args.warmup, amp=amp)
                row.update(step_s_median=median, step_s_min=min(times), images_per_s=args.step_batch / median)
                if device.type == "cuda":
                    row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                print(f"step {label}: {median * 1e3:.1f} ms/step, {row['images_per_s']:.0f} img/s "
                      f"(first two steps {row['first_steps_s']:.1f} s)", flush=True)
            except Exception as exc:  # noqa: BLE001 - recorded, the next combination is tried
                row["error"] = _error(exc)
            finally:
                model = forward = None  # noqa: F841
                _free(device)
            rows.append(row)
    part["numbers"] = {f"{r['model']} {'amp' if r['amp'] else 'fp32'} {'compiled' if r['compile'] else 'eager'}":
                       r["step_s_median"] for r in rows if "step_s_median" in r}
    errors = [f"{r['model']} amp={r['amp']} compile={r['compile']}: {r['error']}" for r in rows if "error" in r]
    if errors:
        part["error"] = "; ".join(errors)


# ---------------------------------------------------------------------------------------------
# measures: every registered measure on one paper-size model
# ---------------------------------------------------------------------------------------------
def measures_section(args: argparse.Namespace, deadline: Deadline, part: dict[str, Any]) -> None:
    from srrlab.measures import MEASURES, MeasureContext, MeasureSettings

    device = torch.device(args.device)
    size = "demo" if args.quick else "paper"
    images = args.measure_images
    preset = measure_cost.SIZES[size][3]
    model, init, x, y = measure_cost.size_inputs(size, images)
    settings = measure_cost.preset_settings(preset, images)
    if args.quick:
        settings.update(QUICK_MEASURE_SETTINGS)
    names = list(MEASURES) if args.measures == "all" else args.measures.split(",")
    model = model.to(device)
    part.update(size=size, model=measure_cost.SIZES[size][0], parameters=model.num_parameters(), images=images,
                preset=preset, settings=settings)
    seconds: dict[str, float] = part.setdefault("seconds", {})
    values: dict[str, float] = part.setdefault("values", {})
    errors: dict[str, str] = part.setdefault("errors", {})
    notes: dict[str, list[str]] = part.setdefault("warnings", {})
    skipped: list[str] = part.setdefault("skipped", [])
    ctx = MeasureContext(model, init=init, data=(x, y), settings=MeasureSettings.from_dict(settings))
    for name in names:
        if not deadline.allows():
            skipped.append(name)
            continue
        _sync(device)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                values[name] = MEASURES[name](ctx)
            except Exception as exc:  # noqa: BLE001 - recorded, the next measure is tried
                errors[name] = _error(exc)
        _sync(device)
        seconds[name] = time.perf_counter() - t0
        if caught:
            notes[name] = list(dict.fromkeys(str(w.message)[:200] for w in caught))
    part["total_s"] = sum(seconds.values())
    part["numbers"] = seconds
    if errors:
        part["error"] = "; ".join(f"{k}: {v}" for k, v in errors.items())


# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------
RUNNERS: dict[str, Callable[[argparse.Namespace, Deadline, dict[str, Any]], None]] = {
    "tests": tests_section, "group": group_section, "step": step_section, "measures": measures_section}


def machine(device: torch.device) -> dict[str, Any]:
    from srrlab import __version__

    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
                            "srrlab": __version__, "python": platform.python_version(), "platform": platform.platform(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=torch.cuda.get_device_name(device), memory_gb=props.total_memory / 2**30,
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                    float32_matmul_precision=torch.get_float32_matmul_precision())
    else:
        info["device_name"] = platform.processor() or platform.machine()
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=20)
        info["git_commit"] = head.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    return info


def run_section(name: str, args: argparse.Namespace, budget: float) -> dict[str, Any]:
    """One section: its status (ok, error, timeout), seconds, budget, result and error; never raises."""
    part: dict[str, Any] = {}
    entry: dict[str, Any] = {"status": "ok", "budget_s": budget, "result": part, "error": None}
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        with hard_deadline(1.25 * budget + 30):
            RUNNERS[name](args, Deadline(budget), part)
    except SectionTimeout as exc:
        entry["status"], entry["error"] = "timeout", str(exc)
    except Exception as exc:  # noqa: BLE001 - one failing section must not lose the others
        entry["status"], entry["error"] = "error", _error(exc)
        entry["traceback"] = traceback.format_exc(limit=8)[-3000:]
    finally:
        torch.set_num_threads(threads)  # group_throughput's workers set one thread
        _free(torch.device(args.device))
    entry["seconds"] = time.perf_counter() - t0
    if entry["status"] == "ok" and part.get("error"):
        entry["status"], entry["error"] = "error", part["error"]
    if part.get("skipped"):
        entry["skipped"] = part["skipped"]
    return entry


def summary(results: dict[str, Any]) -> str:
    lines = [f"device check on {results['machine'].get('device_name')} ({results['machine']['device']}), "
             f"torch {results['machine']['torch']}: {results['total_s']:.0f} s"]
    for name, entry in results["sections"].items():
        head = f"  {name:<9} {entry['status']:<8} {entry['seconds']:6.0f} s of {entry['budget_s']:.0f}"
        part = entry.get("result") or {}
        if name == "tests" and part.get("counts"):
            head += f"  {part['summary'] or part['counts']}"
        elif name == "group" and part.get("rows"):
            best = {}
            for r in part["rows"]:
                if "ratio" in r and r["ratio"] > best.get(r["size"], (0, 0))[0]:
                    best[r["size"]] = (r["ratio"], r["members"])
            head += "  best grouped/alone: " + ", ".join(f"{s} {v:.2f}× at {m}" for s, (v, m) in best.items())
        elif name == "step" and part.get("rows"):
            head += "  ms/step: " + ", ".join(
                f"{'amp' if r['amp'] else 'fp32'}{'+compile' if r['compile'] else ''} {r['step_s_median'] * 1e3:.1f}"
                for r in part["rows"] if "step_s_median" in r)
        elif name == "measures" and part.get("seconds"):
            slow = sorted(part["seconds"].items(), key=lambda kv: -kv[1])[:4]
            head += f"  {len(part['seconds'])} measures, {part['total_s']:.1f} s; slowest " + ", ".join(
                f"{k} {v:.1f} s" for k, v in slow)
        lines.append(head)
        if entry.get("error"):
            lines.append(f"            error: {entry['error'][:300]}")
        if entry.get("skipped"):
            lines.append(f"            skipped: {', '.join(entry['skipped'])[:300]}")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--quick", action="store_true", help="small models, few members and steps, a few tests (~2 min)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    for name in SECTIONS:
        ap.add_argument(f"--budget-{name}", type=float, default=None, metavar="S",
                        help=f"seconds for the {name} section (default {BUDGETS[name]:.0f}, --quick {QUICK_BUDGETS[name]:.0f})")
    ap.add_argument("--tests-k", default=None, help="pytest -k expression for the tests section (default: all; "
                                                     "--quick: a few fast ones)")
    ap.add_argument("--group-sizes", default="digits,fmnist,tiny")
    ap.add_argument("--members", default=None, help="group sizes (default 1,2,4,8,16,32; --quick 1,2)")
    ap.add_argument("--alone", type=int, default=None, help="runs trained alone per size (default 4; --quick 1)")
    ap.add_argument("--group-epochs", type=int, default=None, help="epochs per run (default 2; --quick 1)")
    ap.add_argument("--step-variants", default="crate")
    ap.add_argument("--step-batch", type=int, default=None, help="default 128 (the paper's); --quick 16")
    ap.add_argument("--repeats", type=int, default=None, help="timed steps (default 10; --quick 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps before them (default 3; --quick 1)")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the step section")
    ap.add_argument("--measures", default="all", help="all, or comma-separated measure names")
    ap.add_argument("--measure-images", type=int, default=None, help="images (default 256, as measure_cost.py; --quick 48)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/device_check-<date>.json)")
    args = ap.parse_args(argv)
    q = args.quick
    args.sections = [s for s in args.sections.split(",") if s]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    args.budgets = {s: getattr(args, f"budget_{s}") or (QUICK_BUDGETS if q else BUDGETS)[s] for s in SECTIONS}
    args.tests_k = args.tests_k if args.tests_k is not None else (QUICK_TESTS if q else None)
    args.group_sizes = [s for s in args.group_sizes.split(",") if s]
    bad = [s for s in args.group_sizes if s not in group_throughput.SIZES]
    if bad:
        ap.error(f"unknown group size(s) {', '.join(bad)}; choose from {', '.join(group_throughput.SIZES)}")
    args.members = _ints(args.members) if args.members else ([1, 2] if q else [1, 2, 4, 8, 16, 32])
    args.alone = args.alone or (1 if q else 4)
    args.group_epochs = args.group_epochs or (1 if q else 2)
    args.step_variants = [v for v in args.step_variants.split(",") if v]
    args.step_batch = args.step_batch or (16 if q else 128)
    args.repeats = args.repeats or (2 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.measure_images = args.measure_images or (48 if q else 256)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"device_check: --device {args.device} but torch.cuda.is_available() is False "
                         f"(torch {torch.__version__}); run it on the GPU machine, or --device cpu --quick here")
    date = datetime.date.today().isoformat()
    full = device.type == "cuda" and not args.quick
    name = f"device_check-{date}.json" if full else f"device_check-{date}-{device.type}{'-quick' if args.quick else ''}.json"
    out = Path(args.out) if args.out else HERE / "results" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"script": "benchmarks/device_check.py", "date": date, "argv": list(argv or sys.argv[1:]),
                               "quick": args.quick, "machine": machine(device), "budgets_s": args.budgets,
                               "sections": {}, "total_s": 0.0}
    t0 = time.perf_counter()
    for section in args.sections:
        print(f"== {section} (budget {args.budgets[section]:.0f} s)", flush=True)
        results["sections"][section] = run_section(section, args, args.budgets[section])
        results["total_s"] = time.perf_counter() - t0
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1, default=_json_default) + "\n")
        tmp.replace(out)
    print(summary(results))
    print(f"wrote {out}")
    return results


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (torch.Tensor,)):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return str(obj)


if __name__ == "__main__":
    main()
