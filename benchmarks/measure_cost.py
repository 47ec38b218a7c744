"""Per-model cost of the complexity measures at the demo, Fashion-MNIST and paper sizes.

Each size is one ``crate-t`` model of the size a study preset trains, measured by
:func:`srrlab.measures.compute_measures` with ``timings=`` under that preset's measure settings:

- ``demo``: the ``demo`` preset's model (digits, 8×8, patch 2, d = 64, depth 3, 4 heads) and its
  settings (``max_images`` 300, …), on 300 images;
- ``fmnist``: the ``replicate`` preset's model (28×28, patch 4, d = 64, depth 6, 4 heads) and its
  settings (``max_images`` 1000), on 1000 images;
- ``paper``: CRATE-Tiny (32×32×3, patch 4, d = 384, depth 12, 6 heads), the ``paper`` preset's
  settings except ``max_images``: ``--paper-images`` (default 256; the preset's 5000 would take
  hours on a 2-core CPU). Every measure's cost is linear in its image count except where its
  own setting caps it (``adaptive_images`` 1024, ``hessian_images`` 512, ``srr_images``), so
  ``cost × min(cap, 5000)/256`` estimates the preset's.

The cost of these measures does not depend on what the weights are, except the PAC-Bayes and
sharpness searches (how many bisection steps) and the early stop of the power iteration, so the
models are freshly initialised and the images random: the figures are for the measures whose cost
is fixed by their settings (the default ``--measures new``: the measures of the issue "The strongest
rivals"), and only indicative for the searches (``--measures all``).

    python benchmarks/measure_cost.py [--sizes demo,fmnist,paper] [--measures new|all|a,b] [--paper-images 256]

Writes ``benchmarks/results/measure_cost-<date>.json`` and prints a markdown table (seconds per
model, one row per measure). Run it on an otherwise idle machine: a study running beside it
inflates every figure.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
from pathlib import Path

import torch

from srrlab import create_model
from srrlab.measures import MEASURES, MeasureSettings, compute_measures
from srrlab.study.spec import load_spec

#: The measures added by the issue "The strongest rivals" (docs/measures.md, "Rivals after 2020").
NEW = ["asharp-max-linf", "asharp-max-l2", "asharp-avg-l2", "hessian-trace", "hessian-top",
       "db-index", "mixup-margin", "augment-margin", "ww-alpha", "ww-alpha-hat"]

#: size -> (model name, overrides, image shape, preset whose measure settings apply, images)
SIZES = {
    "demo": ("crate-t-digits", dict(depth=3, dim=64, heads=4), (1, 8, 8), "demo", 300),
    "fmnist": ("crate-t-fmnist", dict(depth=6, dim=64, heads=4), (1, 28, 28), "replicate", 1000),
    "paper": ("crate-t-tiny", dict(image_size=32, patch_size=4, channels=3, num_classes=10), (3, 32, 32), "paper", None),
}


def preset_settings(preset: str, max_images: int | None = None) -> dict:
    """The ``[measures.settings]`` of a study preset, ``max_images`` replaced when given."""
    settings = dict(load_spec(preset).measure_settings)
    if max_images is not None:
        settings["max_images"] = max_images
    return settings


def size_inputs(size: str, images: int, seed: int = 0) -> tuple[torch.nn.Module, dict, torch.Tensor, torch.Tensor]:
    """A fresh model of ``size`` (eval mode), another fresh one's weights as its init, ``images`` random
    images of the size's shape and labels cycling over 10 classes: all drawn after ``manual_seed(seed)``."""
    model_name, overrides, shape, _, _ = SIZES[size]
    torch.manual_seed(seed)
    model = create_model(model_name, **overrides).eval()
    init = create_model(model_name, **overrides).state_dict()
    return model, init, torch.rand(images, *shape), torch.arange(images) % 10


def measure_size(size: str, names: list[str], paper_images: int, seed: int = 0) -> dict:
    model_name, overrides, shape, preset, images = SIZES[size]
    images = paper_images if images is None else images
    model, init, x, y = size_inputs(size, images, seed)
    settings = preset_settings(preset, images)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    values = compute_measures(model, init=init, data=(x, y), measures=names,
                              settings=MeasureSettings.from_dict(settings), timings=timings)
    total = time.perf_counter() - t0
    return {"size": size, "model": model_name, "overrides": overrides, "parameters": model.num_parameters(),
            "images": images, "preset": preset, "settings": settings, "seconds": timings, "total_s": total,
            "values": values}


def markdown(results: list[dict]) -> str:
    sizes = [r["size"] for r in results]
    head = "| measure | " + " | ".join(f"{r['size']} ({r['parameters'] / 1e3:.0f}k params, {r['images']} images)"
                                      for r in results) + " |"
    lines = [head, "| --- |" + " ---: |" * len(results)]
    for name in results[0]["seconds"]:
        lines.append(f"| `{name}` | " + " | ".join(f"{r['seconds'][name]:.2f}" for r in results) + " |")
    lines.append("| **total** | " + " | ".join(f"**{r['total_s']:.1f}**" for r in results) + " |")
    return "\n".join(lines) + f"\n\nseconds per model; sizes: {', '.join(sizes)}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="demo,fmnist,paper")
    parser.add_argument("--measures", default="new", help="new (the rivals after 2020), all, or a comma-separated list")
    parser.add_argument("--paper-images", type=int, default=256)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/measure_cost-<date>.json)")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        parser.error(f"unknown size(s) {', '.join(bad)}; choose from {', '.join(SIZES)}")
    names = NEW if args.measures == "new" else list(MEASURES) if args.measures == "all" else args.measures.split(",")
    results = []
    for size in sizes:
        results.append(measure_size(size, names, args.paper_images))
        print(f"{size}: {results[-1]['total_s']:.1f} s", flush=True)
    date = datetime.date.today().isoformat()
    out = Path(args.out or Path(__file__).parent / "results" / f"measure_cost-{date}.json")
    out.write_text(json.dumps({
        "date": date, "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                                  "platform": platform.platform(), "torch": torch.__version__},
        "results": results}, indent=1, default=float) + "\n")
    print(markdown(results))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
