"""The ``srrlab`` command line: a thin layer over the Python API."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cli_study import add_study_commands, group_options

__all__ = ["main", "build_parser"]


def _value(text: str) -> Any:
    """Parse a ``--set`` value: int, float, true/false, none, or a string."""
    from .options import is_none

    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if is_none(text):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _key_values(items: list[str] | None, flag: str) -> dict[str, Any]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {item!r} (e.g. {flag} dim=128)")
        out[key.strip().replace("-", "_")] = _value(value.strip())
    return out


# -- models -----------------------------------------------------------------------------
def cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    rows = [r for r in list_models()
            if (args.size is None or r["size"] == args.size) and (args.variant is None or r["variant"] == args.variant)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["name", "parameters", "dim", "depth", "heads", "dim_head", "image_size", "patch_size", "channels", "tokens"]
    table = [[f"{r[c]:,}" if c == "parameters" else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in table)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for row in table:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    return 0


# -- train ------------------------------------------------------------------------------
def _print_result(result, as_json: bool) -> None:
    from .io import to_json

    summary = result.summary
    if as_json:
        print(to_json({"run_dir": str(result.run_dir), **summary}, indent=2))
        return
    print(f"status      {summary['status']} after {summary['epochs']} epochs ({summary['wall_time_s']:.1f} s)")
    print(f"train       ce {summary['train_ce']:.4f}  acc {summary['train_acc']:.4f}")
    print(f"test        ce {summary['test_ce']:.4f}  acc {summary['test_acc']:.4f}")
    print(f"run folder  {result.run_dir}")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, resume, train

    if args.resume:
        given = [f for f in args.config_fields if f in vars(args)] + (["set"] if args.set else []) \
            + (["data_option"] if args.data_option else [])
        if given or args.out:
            raise ValueError(
                "--resume continues a run with its saved configuration; do not combine it with "
                + ", ".join("--" + g.replace("_", "-") for g in given + (["out"] if args.out else []))
            )
        result = resume(args.resume, quiet=args.quiet)
    else:
        from .models import CRATEConfig
        from .options import parse_assignments

        options = {name: getattr(args, name) for name in args.config_fields if name in vars(args)}
        if options.get("data_dir") is None and os.environ.get("SRRLAB_DATA"):
            options["data_dir"] = os.environ["SRRLAB_DATA"]
        options["model_options"] = parse_assignments(args.set, CRATEConfig, "--set", "model option",
                                                     exclude=["variant"])
        options["data_options"] = _key_values(args.data_option, "--data-option")
        cfg = TrainConfig(**options)
        out = args.out or os.path.join("runs", f"{cfg.model}-{cfg.dataset}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}")
        result = train(cfg, out, quiet=args.quiet)
    _print_result(result, args.json)
    return 0


# -- measure ---------------------------------------------------------------------------
def cmd_measure(args: argparse.Namespace) -> int:
    from .measures import MEASURES, MeasureSettings, measure_runs

    if args.list:
        for info in MEASURES.values():
            needs = ", ".join(n for n, f in (("data", info.needs_data), ("init", info.needs_init)) if f) or "-"
            print(f"{info.name:<24} needs {needs:<11} {info.reference}")
        return 0
    if not args.runs:
        raise ValueError("give one or more RUN_DIRs (or --list to see the measures)")
    from .options import parse_assignments

    settings = MeasureSettings(**parse_assignments(args.set, MeasureSettings, "--set", "measure setting"))
    table = measure_runs(args.runs, args.measures, settings, progress=not args.quiet and sys.stderr.isatty())
    out = Path(args.out or "measures.csv")
    from .io import atomic_write

    atomic_write(out, lambda tmp: table.to_csv(tmp, index=False))
    cols = [c for c in table.columns if c.startswith("measure.")]
    if args.format == "csv":
        table.to_csv(sys.stdout, index=False)
        return 0
    if args.format == "json":
        from .io import to_json

        print(to_json(table.to_dict(orient="records"), indent=2))
        return 0
    # measures as rows, one column per run: readable for any number of measures
    shown = table[cols].T
    shown.index = [c.removeprefix("measure.") for c in cols]
    names = [Path(r).name for r in table["run"]]
    shown.columns = names if len(set(names)) == len(names) else [str(r) for r in table["run"]]
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(shown.to_string())
    print(f"protocol {settings.protocol.name}; other measures on the {settings.network} network")
    if "gen.protocol_train_acc" in table and table["gen.protocol_train_acc"].notna().any():
        accs = ", ".join(f"{a:.3f}" for a in table["gen.protocol_train_acc"])
        print(f"training accuracy of the network SRR evaluates: {accs}")
    print(f"table   {out}")
    return 0


# -- layerwise -------------------------------------------------------------------------
def cmd_layerwise(args: argparse.Namespace) -> int:
    from .report import plot_layerwise, run_label
    from .train import read_layerwise

    runs = [(run_label(d), read_layerwise(d)) for d in args.runs]
    quantities = [q.strip() for q in args.quantities.split(",") if q.strip()]
    layernorm = [q.strip() for q in args.layernorm.split(",") if q.strip()] if args.layernorm else None
    out = args.out or (os.path.join(args.runs[0], "layerwise.png") if len(args.runs) == 1
                       else f"layerwise-{time.strftime('%Y%m%d-%H%M%S')}.png")
    path = plot_layerwise(runs, out, quantities=quantities, layernorm=layernorm)
    for (label, table), run in zip(runs, args.runs):
        for ln, part in table.groupby("layernorm", sort=False):
            if layernorm is not None and ln not in layernorm:
                continue
            mu = part.groupby("epoch")["mu"].mean()
            print(f"{run}: {label}; layernorm removed: {ln}; epochs {', '.join(str(e) for e in mu.index)}; "
                  f"mu_SRR {mu.iloc[0]:.4g} (epoch {mu.index[0]}) -> {mu.iloc[-1]:.4g} (epoch {mu.index[-1]})")
    print(f"figure  {path}")
    return 0


# -- demo -------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .study import load_spec, report_study, run_study

    spec = load_spec("demo")
    out = args.out or os.path.join("runs", "demo-study")
    workers = args.workers if args.workers is not None else (2 if (os.cpu_count() or 1) >= 2 else 0)
    print(f"srrlab demo: the generalisation study '{spec.name}' on the embedded {spec.dataset} dataset: "
          f"{len(spec.points())} models ({' x '.join(f'{len(v)} {a}' for a, v in spec.grid.items())}), "
          f"{len(spec.measures)} measures on {' and '.join(spec.networks)} network(s), {workers or 1} worker(s); "
          f"resumable in {out}")
    t0 = time.perf_counter()
    table = run_study(spec, out, workers=workers, progress=False if args.quiet else None, group=args.group)
    counts = table["status"].value_counts().to_dict()
    print(f"trained and measured in {time.perf_counter() - t0:.0f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    report = report_study(out)
    print()
    print(report.headline())
    print()
    print(f"report  {report.path}")
    return 0


# -- toy --------------------------------------------------------------------------------
def _comma_list(text: str, cast, flag: str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{flag} needs at least one comma-separated value, got {text!r}")
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise ValueError(f"{flag} takes a comma-separated list, got {text!r}") from None


def cmd_toy(args: argparse.Namespace) -> int:
    from .toy import RULES, format_summary, plot, study, summarize

    rules = _comma_list(args.rules, str, "--rules")
    unknown = [r for r in rules if r not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(map(repr, unknown))}; valid rules: {', '.join(RULES)}")
    seeds = _comma_list(args.seeds, int, "--seeds")
    sizes = dict(num_tokens=args.tokens, dim=args.dim, heads=args.heads, depth=args.depth,
                 alpha=args.alpha, scale=args.scale, eps=args.eps, temperature=args.temperature)
    out = Path(args.out or os.path.join("runs", f"toy-{time.strftime('%Y%m%d-%H%M%S')}"))
    start = time.perf_counter()
    df = study(rules, seeds, **sizes)
    elapsed = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "toy.csv"
    df.to_csv(csv, index=False)
    figures = plot(df, out)
    first = df.iloc[0]
    print(f"srrlab toy: {len(rules)} rule(s) x {len(seeds)} seed(s); N={args.tokens} d={args.dim} K={args.heads} "
          f"L={args.depth}; alpha={args.alpha:g} scale={args.scale:g} eps={first['eps']:.4g} "
          f"(gamma={first['gamma']:.4g}) tau={first['temperature']:.4g}")
    print(f"R^c(Z^l; U^l) vs R^c(Z^(l-1); U^l), counted over {args.depth * len(seeds)} (seed, layer) rows per rule:")
    print(format_summary(summarize(df)))
    print(f"time    {elapsed:.1f} s (study), {time.perf_counter() - start:.1f} s with figures")
    print(f"table   {csv}")
    for path in figures:
        print(f"figure  {path}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``srrlab train: error: argument --lr: …; see srrlab train --help``."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def build_parser() -> argparse.ArgumentParser:
    # light modules only: the parser (every --help, every argparse error) builds without torch, numpy or
    # pandas, which the commands import when they run (docs/performance.md, "CLI start-up")
    from . import __version__
    from .names import SIZES, VARIANT_NAMES
    from .options import add_flags
    from .train.config import TrainConfig

    parser = _Parser(prog="srrlab", description="Sparse Rate Reduction in CRATE-like models.")
    parser.add_argument("--version", action="version", version=f"srrlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list model names <variant>-<size> with parameter counts")
    p.add_argument("--size", choices=list(SIZES), help="only this size")
    p.add_argument("--variant", choices=list(VARIANT_NAMES), help="only this variant")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_models)

    # options left out are absent from the namespace (SUPPRESS), so TrainConfig's defaults apply
    p = sub.add_parser("train", help="train one model; writes a resumable run folder",
                       description="Train one model. Unset options take the TrainConfig defaults shown.",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override a model config field, e.g. --set dim=128 --set dropout=0.1 (repeatable; "
                        "fields: docs/models.md)")
    p.add_argument("--data-option", action="append", metavar="KEY=VALUE", default=[],
                   help="dataset option, e.g. --data-option train_per_class=100 (repeatable; docs/data.md)")
    p.set_defaults(config_fields=add_flags(p, TrainConfig))  # one flag per TrainConfig field, its help
    p.add_argument("--out", default=None, help="run folder (default runs/<model>-<dataset>-seed<seed>-<time>)")
    p.add_argument("--resume", metavar="DIR", default=None, help="continue the interrupted run in DIR")
    p.add_argument("--quiet", action="store_true", default=False, help="no progress bar")
    p.add_argument("--json", action="store_true", default=False, help="print the summary as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("measure", help="compute complexity measures of finished runs (srrlab measure --list)")
    p.add_argument("runs", nargs="*", metavar="RUN_DIR")
    p.add_argument("--measures", default=None, help="comma-separated names (default: all); see --list")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a MeasureSettings field, e.g. --set max_images=500 --set mc_samples=5 (repeatable); "
                        "the SRR protocol: --set layernorm=pre|all|none --set sparsity=count|fraction "
                        "--set rate=gamma1|unit; --set network=protocol evaluates every measure on the "
                        "protocol's network (docs/measures.md)")
    p.add_argument("--out", help="CSV of the tidy table (run, hp.*, gen.*, measure.*; default ./measures.csv)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="what to print: table (default: one row per measure, one column per run), or the tidy "
                        "table as csv or json (the --out file is written either way)")
    p.add_argument("--list", action="store_true", help="list the measures with their references and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_measure)

    p = sub.add_parser("layerwise", help="plot per-layer SRR across training (Figures 2-3) for runs trained with --srr-every")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="PNG path (default RUN_DIR/layerwise.png for one run, ./layerwise-<time>.png otherwise)")
    p.add_argument("--quantities", default="mu,R,Rc,l0",
                   help="rows of the figure, from mu,R,Rc,l0 (default all; 'mu' alone is Figures 2-3)")
    p.add_argument("--layernorm", help="only these recorded protocols, e.g. pre or pre,none (default: every "
                                       "recorded one, side by side; see --srr-layernorm of srrlab train)")
    p.set_defaults(func=cmd_layerwise)

    add_study_commands(sub)

    p = sub.add_parser("demo", help="run the demo generalisation study on the embedded digits dataset and report")
    p.add_argument("--out", help="study folder (default runs/demo-study; rerunning continues it)")
    p.add_argument("--workers", type=int, help="Dask worker processes (default 2 on a multi-core machine)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    group_options(p)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("toy", help="toy study (docs/theory.md §4): does each compression update rule decrease R^c?",
                       description="Run L layers of a compression update alone on Gaussian tokens and record "
                                   "R^c before/after each layer; writes toy.csv and figure1a/figure1b/figure5 PNGs.")
    p.add_argument("--rules", default="exact,taylor,first-order,second-order,softmax,negative",
                   help="comma-separated update rules (default all: exact,taylor,first-order,second-order,softmax,negative)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--tokens", type=int, default=196, help="N (default 196)")
    p.add_argument("--dim", type=int, default=384, help="d (default 384)")
    p.add_argument("--heads", type=int, default=6, help="K (default 6)")
    p.add_argument("--depth", type=int, default=12, help="L (default 12)")
    p.add_argument("--alpha", type=float, default=1.0, help="step size α (default 1, the literal setting)")
    p.add_argument("--scale", type=float, default=1.0, help="standard deviation of Z⁰ (default 1, the literal setting)")
    p.add_argument("--eps", type=float, default=None, help="ε (default sqrt(p/N), i.e. γ = 1)")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature τ (default p^-1/2)")
    p.add_argument("--out", help="output folder (default runs/toy-<time>)")
    p.set_defaults(func=cmd_toy)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # name the command whose options these are not, as argparse does for every other error
        prog = " ".join(["srrlab", args.command] + [v for k, v in vars(args).items() if k.endswith("_command")])
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)}; see `{prog} --help`", file=sys.stderr)
        return 2
    # a warning is one line naming the command, like an error (not Python's file:line + source line)
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *_a, **_k: f"srrlab {args.command}: warning: {message}\n"
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as exc:
        if os.environ.get("SRRLAB_DEBUG"):
            raise
        print(f"srrlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"srrlab {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
