"""srrlab: Sparse Rate Reduction (SRR) in transformer-like (CRATE) models.

A reference implementation of Hu, Zou & Xu, "An In-depth Investigation of Sparse Rate Reduction in
Transformer-like Models" (NeurIPS 2024). The package follows the pipeline, one subpackage a step:

  models    the CRATE family, one table of variants: create_model, list_models, CRATE, CRATEConfig,
            VARIANTS, load_official_crate (all re-exported here)
  rate      coding rates and the SRR measure: coding_rate, compression_rate, srr, measure_srr
            (re-exported here), SRRProtocol
  data      embedded digits and Fashion-MNIST subset, CIFAR-10/100, synthetic: load_dataset, Splits
  train     one run folder per model (resumable): TrainConfig, train, resume, load_run, read_layerwise
  measures  40 complexity measures: MEASURES, MeasureSettings, compute_measures, measure_run, measure_runs
  study     populations over a grid: run_study, report_study, run_regularize, report_regularize, load_spec
  report    figures and markdown: plot_layerwise, write_study_report (used by study)
  correlation  Kendall τ with uncertainty: kendall_test, correlation_table, compare_measures
  toy       the attention-only toy study: toy.run, toy.study
  runs      the run folder and the tidy table's columns: RunFolder, tidy_row

The command line (``srrlab COMMAND --help`` for each):

  srrlab models                 model names <variant>-<size> with parameter counts
  srrlab train                  train one model into a run folder (--resume DIR continues one)
  srrlab measure RUN_DIR...     complexity measures of finished runs into a CSV (--list names them)
  srrlab layerwise RUN_DIR...   per-layer SRR across training (runs trained with --srr-every)
  srrlab study run|report       a generalisation study: train and measure a grid, then report.md
  srrlab regularize run|report  the SRR regularisation experiment (the paper's Tables 2 and 6)
  srrlab demo                   the demo study on the embedded digits (what `make demo` runs)
  srrlab toy                    the toy study of the compression update rules

Documentation in the repository's docs/: theory.md (the mathematics; docstrings cite its §n),
models.md, rates.md, data.md, measures.md (with the SRR evaluation protocol), correlation.md,
study.md, regularizer.md, toy.md, reproduction.md (the paper's claims on the embedded data) and
performance.md; README.md has a five-minute tour. ``help(srrlab.CRATE)`` documents the model class.
"""
import typing as _typing

from ._lazy import lazy_attributes as _lazy_attributes

__version__ = "0.1.0"
__all__ = ["CRATE", "CRATEConfig", "VARIANTS", "create_model", "list_models", "load_official_crate", "measure_srr",
           "__version__"]

# The names above load on first use (PEP 562), so that ``import srrlab`` and the command line's
# ``--help`` do not import torch (docs/performance.md, "CLI start-up"); so do the subpackages
# (``srrlab.models``, ``srrlab.study``, …) reached as attributes of ``srrlab``.
_LAZY = {"CRATE": "models", "CRATEConfig": "models", "VARIANTS": "models", "create_model": "models",
         "list_models": "models", "load_official_crate": "models", "measure_srr": "rate"}

if _typing.TYPE_CHECKING:  # pragma: no cover
    from .models import CRATE, VARIANTS, CRATEConfig, create_model, list_models, load_official_crate
    from .rate import measure_srr


__getattr__, __dir__ = _lazy_attributes(__name__, _LAZY, globals())
