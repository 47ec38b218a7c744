"""The command line answers at once: every ``--help``, ``--version`` and argparse error is served
without importing torch or the scientific stack (docs/performance.md, "CLI start-up"), and
``import srrlab`` stays the documented API with its names loaded on first use.

The timed form is ``benchmarks/cli_latency.py``; here the deterministic one: which modules a fresh
interpreter has imported after each call (a subprocess, since this test session has torch loaded).
"""
from __future__ import annotations

import json
import subprocess
import sys

import srrlab
from srrlab import names

#: What a ``--help`` must not import (each costs from 0.1 s to seconds of start-up).
HEAVY = ("torch", "numpy", "pandas", "matplotlib", "sklearn", "dask", "scipy")


def _python(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON document, returned."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


_CLI = f"""
import argparse, contextlib, io, json, sys
from srrlab.cli import build_parser, main

def commands(parser, prefix):  # every command and subcommand of the parser, as argv prefixes
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, prefix + [name])

calls = [c + ["--help"] for c in commands(build_parser(), [])]
calls += [["--version"], [], ["fly"], ["train", "--bogus"], ["train", "--lr", "fast"], ["models", "--size", "huge"],
          ["study", "run"], ["study", "measure", "DIR", "--network", "x"], ["regularize", "run", "demo", "--dir", "d", "--x"]]
out = []
for argv in calls:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    out.append([argv, code, stdout.getvalue(), stderr.getvalue()])
print(json.dumps({{"calls": out, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_every_help_and_argparse_error_is_served_without_heavy_imports():
    result = _python(_CLI)
    assert result["heavy"] == []
    calls = {" ".join(argv): (code, out, err) for argv, code, out, err in result["calls"]}
    text = {k: " ".join(out.split()) for k, (_, out, _) in calls.items()}  # help as one line, wrapping undone
    helps = [k for k in calls if k.endswith("--help")]
    # every command and subcommand was asked
    for expected in ("--help", "train --help", "measure --help", "study run --help", "study report --help",
                     "study measure --help", "regularize --help", "regularize run --help", "toy --help"):
        assert expected in helps
    for key in helps:
        code, out, err = calls[key]
        assert code == 0 and out.startswith("usage: srrlab") and err == "", key
    assert calls["--version"] == (0, f"srrlab {srrlab.__version__}\n", "")
    # the lists the parser shows, from srrlab.names
    assert "{" + ",".join(names.VARIANT_NAMES) + "}" in text["models --help"]
    assert "a preset (demo, demo-fmnist, demo-seeds, paper, replicate, replicate-seeds) or a TOML file" in text["study run --help"]
    assert "a preset (demo, fmnist, fmnist-seeds, paper, seeds) or a TOML file" in text["regularize run --help"]
    assert "--dataset {" + ",".join(names.DATASETS) + "}" in text["train --help"]
    assert "peak learning rate (default 0.001)" in text["train --help"]
    for key in ("", "fly", "train --bogus", "train --lr fast", "models --size huge", "study run",
                "study measure DIR --network x", "regularize run demo --dir d --x"):
        code, out, err = calls[key]
        assert code == 2 and out == "" and err.count("\n") == 1 and ": error: " in err, key
    assert "lr must be a finite number, got 'fast'" in calls["train --lr fast"][2]
    assert "choose from 'trained', 'protocol'" in calls["study measure DIR --network x"][2]


def test_import_srrlab_is_light_and_every_public_name_loads():
    result = _python(f"""
import json, sys
import srrlab
light = [m for m in {HEAVY!r} if m in sys.modules]
listed = sorted(set(srrlab.__all__) - set(dir(srrlab)))
from srrlab.train import TrainConfig  # the light half of srrlab.train
light_train = [m for m in {HEAVY!r} if m in sys.modules]
values = {{name: type(getattr(srrlab, name)).__name__ for name in srrlab.__all__}}
from srrlab import create_model, measure_srr
try:
    srrlab.no_such_name
    missing = "no error"
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({{"light": light, "light_train": light_train, "not_in_dir": listed, "values": values,
                  "model": type(create_model("crate-t-digits", depth=1)).__name__,
                  "subpackages": [type(getattr(srrlab, m)).__name__ for m in ("models", "study", "train", "measures")],
                  "train": srrlab.train.train.__name__, "missing": missing}}))
""")
    assert result["light"] == [] and result["light_train"] == []
    assert result["not_in_dir"] == []
    assert set(result["values"]) == set(srrlab.__all__)
    assert result["values"]["CRATE"] == "type" and result["values"]["VARIANTS"] == "dict"
    assert result["values"]["__version__"] == "str" and result["values"]["measure_srr"] == "function"
    assert result["model"] == "CRATE" and result["subpackages"] == ["module"] * 4 and result["train"] == "train"
    assert result["missing"] == "module 'srrlab' has no attribute 'no_such_name'"


def test_the_light_lists_are_the_ones_the_library_uses():
    """srrlab.names owns each list; the heavy modules hold the same objects."""
    from srrlab import data, models, rate
    from srrlab.measures import context
    from srrlab.options import SRR_SETTINGS
    from srrlab.rate import protocol
    from srrlab.study import spec

    assert models.SIZES is names.SIZES and data.DATASETS is names.DATASETS and context.NETWORKS is names.NETWORKS
    assert tuple(models.VARIANTS) == names.VARIANT_NAMES  # also checked when srrlab.models.crate is imported
    assert rate.SPARSITY_FORMS is names.SPARSITY_FORMS and rate.core.RATE_CONVENTIONS is names.RATE_CONVENTIONS
    assert protocol.SRR_SETTINGS is SRR_SETTINGS and spec.preset_names is names.preset_names
    assert (protocol.DEFAULT_PROTOCOL.sparsity, protocol.DEFAULT_PROTOCOL.rate) == ("count", "gamma1")
    assert spec.PRESETS == ("demo", "demo-fmnist", "demo-seeds", "paper", "replicate", "replicate-seeds")
    assert names.preset_names("regularize") == ("demo", "fmnist", "fmnist-seeds", "paper", "seeds")
