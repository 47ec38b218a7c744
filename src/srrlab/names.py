"""The names the command line offers as choices, in a module that imports nothing heavy.

``srrlab --help`` and every ``srrlab COMMAND --help`` build their parser from this module and
:mod:`srrlab.options` (and :mod:`srrlab.train.config`), without importing torch, numpy, pandas or
the subpackages that do (docs/performance.md, "CLI start-up"). Each list is owned here and
imported by the module that uses it:

  SIZES             model sizes (srrlab.models.registry; names ``<variant>-<size>``)
  VARIANT_NAMES     the variants of srrlab.models.crate.VARIANTS, in its order (checked there)
  DATASETS          names accepted by srrlab.data.load_dataset
  NETWORKS          networks the measures other than SRR evaluate (srrlab.measures.MeasureSettings)
  SPARSITY_FORMS    forms of the sparsity term of SRR (srrlab.rate.protocol)
  RATE_CONVENTIONS  rate conventions of SRR (srrlab.rate.core)
  preset_names      the study and regularisation presets shipped in srrlab/study/presets/
"""
from __future__ import annotations

from importlib import resources
from typing import Any

__all__ = ["SIZES", "VARIANT_NAMES", "DATASETS", "NETWORKS", "SPARSITY_FORMS", "RATE_CONVENTIONS", "PRESET_FILES",
           "preset_names"]

# dim / depth / heads of the official CRATE sizes (image defaults: 32×32 CIFAR, patch 4;
# the official ImageNet models use image_size=224, patch_size=16, num_classes=1000), plus
# small CPU sizes for the 8×8 digits and 32×32 CIFAR.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(dim=384, depth=12, heads=6),
    "small": dict(dim=576, depth=12, heads=12),
    "base": dict(dim=768, depth=12, heads=12),
    "large": dict(dim=1024, depth=24, heads=16),
    # CPU sizes
    "digits": dict(image_size=8, patch_size=2, channels=1, num_classes=10, dim=64, depth=4, heads=4),
    "micro": dict(dim=128, depth=6, heads=4),
    # 28×28 grey-scale Fashion-MNIST: a CPU size like `digits` (dim 64, 4 heads), patch 4 gives
    # 7×7 = 49 patches + CLS = 50 tokens; depth 6 since the images carry more structure than 8×8 digits.
    "fmnist": dict(image_size=28, patch_size=4, channels=1, num_classes=10, dim=64, depth=6, heads=4),
}

#: Names of the CRATE variants (docs/theory.md §3), in the order of :data:`srrlab.models.VARIANTS`,
#: whose table (sign, output operator, reference) needs torch; that module checks the two agree.
VARIANT_NAMES: tuple[str, ...] = ("crate", "crate-c", "crate-n", "crate-t", "crate-fix", "crate-identity", "crate-g")

#: Dataset names accepted by :func:`srrlab.data.load_dataset`.
DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "synthetic", "fashion-mnist")

#: Networks the measures other than SRR can evaluate (``MeasureSettings.network``).
NETWORKS = ("trained", "protocol")

#: Forms of the sparsity term: the literal count of non-zeros, or their fraction ``count/(N·d)``.
SPARSITY_FORMS = ("count", "fraction")

#: Rate conventions of the SRR measure (docs/rates.md "Rate conventions"): how tokens are scaled
#: before the rates and the default ε. ``"gamma1"``: raw tokens, ε² = p/N (γ = 1, the CRATE
#: models' convention); ``"unit"``: every token (per head for R^c) scaled to unit norm, ε² = 0.01
#: (the official CRATE analysis tool's convention).
RATE_CONVENTIONS = ("gamma1", "unit")

#: Preset file names per kind of experiment.
PRESET_FILES = {"study": "{name}.toml", "regularize": "regularize-{name}.toml"}


def preset_names(kind: str = "study") -> tuple[str, ...]:
    """The presets shipped in the package for ``kind`` (``srrlab/study/presets/``), sorted."""
    if kind not in PRESET_FILES:
        raise ValueError(f"kind must be one of {', '.join(PRESET_FILES)}, got {kind!r}")
    prefix, suffix = PRESET_FILES[kind].split("{name}")
    names = []
    # through the top-level package: resources.files("srrlab.study") would import srrlab.study (torch)
    for entry in resources.files("srrlab").joinpath("study").joinpath("presets").iterdir():
        stem = entry.name
        if stem.startswith(prefix) and stem.endswith(suffix):
            name = stem[len(prefix):len(stem) - len(suffix)]
            if kind == "study" and any(name.startswith(p.split("{name}")[0]) for k, p in PRESET_FILES.items()
                                       if k != "study"):
                continue  # regularize-*.toml is not a study preset
            names.append(name)
    return tuple(sorted(names))
