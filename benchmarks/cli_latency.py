"""Start-up latency of the command line: ``srrlab --help``, ``srrlab COMMAND --help``, a bad flag, ``import srrlab``.

Each case runs in a fresh interpreter (this one's executable), as the ``srrlab`` console script
does (``from srrlab.cli import main; sys.exit(main())``), and is timed by the wall clock around
the subprocess, start-up of Python included; the figure is the median of ``--repeats`` runs.
``python -c pass`` is the floor: the interpreter alone.

The tree measured is this checkout's ``src/`` (``PYTHONPATH``). With ``--before DIR``, a checkout
of another revision (``git worktree add /tmp/cli-before HEAD``), every case also runs on
``DIR/src``, interleaved with this tree's runs (the order alternating each repeat) so that both
see the same load; the two trees' exit codes and outputs are compared too. ``--importtime N``
adds the N packages that cost ``srrlab --help`` most under ``python -X importtime``.

    python benchmarks/cli_latency.py [--repeats 5] [--before /tmp/cli-before] [--importtime 8]

Writes ``benchmarks/results/cli_latency-<date>.json`` and prints a markdown table. The figures
scale with the machine's load (recorded as ``load_avg_1min``); compare trees within one call.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> arguments of ``srrlab``, or (a string) the Python statement ``python -c`` runs instead
CASES: dict[str, list[str] | str] = {
    "python -c pass": "pass",
    "python -c 'import srrlab'": "import srrlab",
    "srrlab --help": ["--help"],
    "srrlab --version": ["--version"],
    "srrlab models --help": ["models", "--help"],
    "srrlab train --help": ["train", "--help"],
    "srrlab measure --help": ["measure", "--help"],
    "srrlab study run --help": ["study", "run", "--help"],
    "srrlab study report --help": ["study", "report", "--help"],
    "srrlab regularize --help": ["regularize", "--help"],
    "srrlab regularize run --help": ["regularize", "run", "--help"],
    "srrlab toy --help": ["toy", "--help"],
    "srrlab train --bogus (bad flag)": ["train", "--bogus"],
    "srrlab train --lr fast (bad value)": ["train", "--lr", "fast"],
}

_CLI = "import sys; from srrlab.cli import main; sys.exit(main())"


def command(case: list[str] | str) -> list[str]:
    if isinstance(case, str):
        return [sys.executable, "-c", case]
    return [sys.executable, "-c", _CLI, *case]


def environment(src: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(src), COLUMNS="100")
    env.pop("PYTHONSTARTUP", None)
    return env


def run_once(case: list[str] | str, src: Path) -> tuple[float, int, str]:
    """Wall seconds, exit code and a digest of stdout + stderr of one run."""
    t0 = time.perf_counter()
    done = subprocess.run(command(case), env=environment(src), capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    return seconds, done.returncode, hashlib.sha256(done.stdout + b"\0" + done.stderr).hexdigest()[:16]


def parse_importtime(stderr: str, top: int) -> list[dict]:
    """The ``top`` packages (``torch``, ``pandas``, ``srrlab``, …: names without a dot, imported at any
    depth) that cost most in ``python -X importtime`` output ``stderr``; a package's cumulative time
    includes what it imports first, so the rows overlap (``srrlab`` contains ``torch`` when it imports it)."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line.split(":", 1)[1].split("|", 2)
        if "." in name.strip():
            continue
        rows.append({"module": name.strip(), "cumulative_ms": int(cumulative_us) / 1e3, "self_ms": int(self_us) / 1e3})
    rows.sort(key=lambda r: -r["cumulative_ms"])
    return rows[:top]


def import_costs(trees: dict[str, Path], top: int) -> dict[str, list[dict]]:
    """Per tree, :func:`parse_importtime` of one ``srrlab --help`` under ``python -X importtime``."""
    out = {}
    for tree, src in trees.items():
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", _CLI, "--help"], env=environment(src),
                              capture_output=True, text=True, cwd=ROOT)
        out[tree] = parse_importtime(done.stderr, top)
    return out


def markdown(results: list[dict], trees: list[str]) -> str:
    head = "| command | " + " | ".join(f"{t} (s)" for t in trees) + (" | speed-up | same output |" if len(trees) == 2
                                                                      else " |")
    lines = [head, "| --- |" + " ---: |" * len(trees) + (" ---: | --- |" if len(trees) == 2 else "")]
    for r in results:
        cells = [f"{r[t]['median_s']:.2f}" for t in trees]
        if len(trees) == 2:
            cells.append(f"{r['before']['median_s'] / r['after']['median_s']:.1f}×")
            cells.append("yes" if r["same_output"] else "**no**")
        lines.append(f"| `{r['name']}` (exit {r['after']['rc']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per case and tree; the median is reported")
    parser.add_argument("--before", type=Path, default=None,
                        help="a checkout of another revision (its src/ is measured too, interleaved)")
    parser.add_argument("--importtime", type=int, default=8, metavar="N",
                        help="packages imported by `srrlab --help` to list per tree, costliest first (0: none)")
    parser.add_argument("--note", default="", help="a sentence recorded with the figures (e.g. the machine's load)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/cli_latency-<date>.json)")
    args = parser.parse_args(argv)
    trees = {"after": ROOT / "src"}
    if args.before is not None:
        if not (args.before / "src" / "srrlab" / "cli.py").is_file():
            parser.error(f"--before {args.before}: no src/srrlab/cli.py there")
        trees = {"before": args.before.resolve() / "src", **trees}
    names = list(trees)
    runs: dict[str, dict[str, list]] = {n: {t: [] for t in names} for n in CASES}
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    for repeat in range(args.repeats):
        order = names if repeat % 2 == 0 else names[::-1]
        for name, case in CASES.items():
            for tree in order:
                runs[name][tree].append(run_once(case, trees[tree]))
        print(f"repeat {repeat + 1}/{args.repeats}: {time.perf_counter() - t0:.0f} s", flush=True)
    results = []
    for name, case in CASES.items():
        row = {"name": name, "argv": case}
        for tree in names:
            seconds = [s for s, _, _ in runs[name][tree]]
            codes = sorted({rc for _, rc, _ in runs[name][tree]})
            row[tree] = {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs_s": seconds,
                         "rc": codes[0] if len(codes) == 1 else codes,
                         "output_sha256": sorted({h for _, _, h in runs[name][tree]})}
        if len(names) == 2:
            row["same_output"] = row["before"]["output_sha256"] == row["after"]["output_sha256"] \
                and row["before"]["rc"] == row["after"]["rc"]
        results.append(row)
    imports = import_costs(trees, args.importtime) if args.importtime else {}
    date = datetime.date.today().isoformat()
    out = Path(args.out or Path(__file__).parent / "results" / f"cli_latency-{date}.json")
    out.write_text(json.dumps({
        "date": date, "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                  "python": platform.python_version(), "load_avg_1min_start": load_start,
                                  "load_avg_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
        "repeats": args.repeats, "trees": {t: str(p) for t, p in trees.items()}, "note": args.note,
        "results": results, "importtime_packages": imports}, indent=1) + "\n")
    print(markdown(results, names))
    print(f"\nwall seconds per subprocess, median of {args.repeats} runs" + (f"; {args.note}" if args.note else ""))
    for tree, rows in imports.items():
        print(f"\n{tree}: packages imported by `srrlab --help`, by cumulative time (python -X importtime)")
        for r in rows:
            print(f"  {r['cumulative_ms']:8.1f} ms  {r['module']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
