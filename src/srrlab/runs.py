"""The run folder, its statuses and the tidy row: one owner each.

A training run writes one folder (``srrlab train --out D``, :func:`srrlab.train.train`)::

    config.json                 TrainConfig, the resolved model config, versions
    metrics.jsonl               one line per epoch (epoch 0 = at initialisation)
    summary.json                status, epochs, final metrics, wall time
    weights_init.safetensors    weights at initialisation
    weights_final.safetensors   weights when the run ended
    layerwise.jsonl             per-layer SRR tables every ``srr_every`` epochs, per protocol, if asked
    checkpoint/                 the newest complete checkpoint (for --resume; owned by the trainer)

:class:`RunFolder` is the only code that knows these names. :func:`tidy_row` is the only code that
names the ``hp.*`` / ``gen.*`` / ``measure.*`` columns of the tidy tables that measures and studies
produce (docs/study.md). The status words of runs and of study points live here too.
"""
from __future__ import annotations

import csv
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import load_weights, read_json, read_jsonl, save_weights, write_json, write_jsonl
from .options import EXECUTION_SETTINGS

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch

    from .models import CRATE

__all__ = ["RunFolder", "tidy_row", "run_hparams", "variant_of", "RUN_STATUSES", "STUDY_STATUSES", "FINAL_STATUSES",
           "MEASURABLE_STATUSES", "CORRELATED_STATUSES", "STATUS_OF_RUN", "GEN_KEYS", "RECORD_KEYS",
           "READING_SEP", "measure_key", "parse_measure_key", "read_tidy_table", "TEXT_COLUMNS"]

# -- statuses ---------------------------------------------------------------------------------
#: ``summary.json`` status of a training run: still ``running``; stopped at the target CE
#: (``converged``); at the epoch limit with a target (``not-converged``) or without one
#: (``completed``); ``diverged`` (a non-finite loss).
RUN_STATUSES = ("running", "converged", "not-converged", "completed", "diverged")
#: Status of a study grid point (the study database).
STUDY_STATUSES = ("pending", "running", "done", "not-converged", "diverged", "failed")
#: A study point in one of these is finished (never run again).
FINAL_STATUSES = ("done", "not-converged", "diverged", "failed")
#: Points whose model was measured.
MEASURABLE_STATUSES = ("done", "not-converged")
#: Points that enter a correlation table by default: the models that reached the stopping target.
CORRELATED_STATUSES = ("done",)
#: Training status → study status.
STATUS_OF_RUN = {"converged": "done", "completed": "done", "not-converged": "not-converged", "diverged": "diverged"}

# -- the tidy row -----------------------------------------------------------------------------
#: ``gen.*`` columns taken from a run's summary.
GEN_KEYS = ("status", "epochs", "train_ce", "test_ce", "train_acc", "test_acc", "gap_ce", "gap_err", "wall_time_s")
#: ``gen.*`` columns that say how the row was measured (:func:`srrlab.measures.compute_measures`' record).
RECORD_KEYS = ("protocol", "measure_network", "protocol_train_acc", "protocol_images")
#: The TrainConfig fields a single run's row carries as ``hp.*`` (besides the model options).
#: A measure taken on a second network reading is keyed ``<name>@<network>`` (its column
#: ``measure.<name>@<network>``); the plain ``<name>`` is the reading in ``gen.measure_network``.
READING_SEP = "@"
_RUN_HP_KEYS = ("model", "dataset", "lr", "batch_size", "weight_decay", "optimizer", "epochs", "seed", "augment")


def variant_of(model: str) -> str:
    """The variant of a ``<variant>-<size>`` model name (``crate-c-digits`` → ``crate-c``)."""
    from .models.registry import parse_model_name

    return parse_model_name(model)[0]


def run_hparams(config: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters of one run's ``config.json``: the training settings that change results
    and every model option."""
    train = config["train"]
    return {**{k: train[k] for k in _RUN_HP_KEYS}, **train["model_options"]}


def measure_key(name: str, network: str | None = None) -> str:
    """The key (and, after ``measure.``, the column name) of measure ``name`` taken on ``network``:
    ``name`` itself for the primary reading (``network=None``), ``name@network`` for another one."""
    return name if network is None else f"{name}{READING_SEP}{network}"


def parse_measure_key(key: str) -> tuple[str, str | None]:
    """``"l2@protocol"`` → ``("l2", "protocol")``; ``"l2"`` → ``("l2", None)`` (the primary reading).
    A ``measure.`` prefix is removed first."""
    if key.startswith("measure."):
        key = key[len("measure."):]
    name, sep, network = key.partition(READING_SEP)
    return (name, network) if sep else (name, None)


def tidy_row(hp: Mapping[str, Any], summary: Mapping[str, Any] | None = None,
             measures: Mapping[str, Any] | None = None, *, measure_names: Iterable[str] | None = None,
             **identity: Any) -> dict[str, Any]:
    """One row of a tidy table: ``identity`` columns as given (``run``, ``id``, ``status``, …), then
    ``hp.*`` (with ``hp.variant`` from ``hp["model"]``; execution settings such as ``device`` are not
    hyperparameters and are left out), ``gen.*`` (:data:`GEN_KEYS` and
    :data:`RECORD_KEYS` from the summary; missing ones are None) and ``measure.*`` (in the order of
    ``measure_names``, default the order of ``measures``)."""
    row: dict[str, Any] = dict(identity)
    row.update({f"hp.{k}": v for k, v in hp.items() if k not in EXECUTION_SETTINGS})
    if "model" in hp:
        row["hp.variant"] = variant_of(hp["model"])
    summary = summary or {}
    row.update({f"gen.{k}": summary.get(k) for k in GEN_KEYS + RECORD_KEYS})
    measures = measures or {}
    row.update({f"measure.{name}": measures.get(name) for name in (measure_names if measure_names is not None
                                                                   else measures)})
    return row


#: Columns of a tidy table that hold text whatever their values look like (a run id may be all digits).
TEXT_COLUMNS = ("run", "id", "status", "error", "warnings", "hp.model", "hp.variant", "hp.dataset", "gen.status",
                "gen.protocol", "gen.measure_network")
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?inf")
_BOOL = {"True": True, "False": False}


def read_tidy_table(path: str | os.PathLike, *, text: Iterable[str] = ()) -> pd.DataFrame:
    """A tidy table written with ``DataFrame.to_csv(path, index=False)`` (a study's or an export's
    ``runs.csv``, ``srrlab measure``'s CSV), read back as the table that was written.

    Each cell becomes the Python value it was written from and the frame is built from those rows as
    :func:`tidy_row`'s records are, so dtypes come out as in the original (``StudyStore.table()``):
    floats bit-identical (pandas writes the shortest repr), ``int64``/``float64``/``bool``/text columns,
    an empty cell as None — except in ``hp.*`` columns, where it is a setting the row lacks (a grouped
    axis that sets it in other rows only), as in the original. A column is text when it is one of
    :data:`TEXT_COLUMNS` or ``text``, or when any of its cells is neither a number nor True/False;
    a text column whose every value reads as a number (a setting ``"2"``) must be named in ``text``
    (:func:`srrlab.study.transfer.read_results` names a study's from its spec). Limits, where CSV
    cannot tell: an empty string reads as None, a column without any value as None in every row
    (``object``, whether it held None or NaN), and None and NaN read alike (pandas compares them equal).
    """
    import pandas as pd

    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or rows[0] == []:
        return pd.DataFrame()
    header, body = rows[0], rows[1:]
    bad = [i + 2 for i, r in enumerate(body) if len(r) != len(header)]
    if bad:
        raise ValueError(f"{path}: line(s) {', '.join(map(str, bad[:5]))} have a different number of cells than the "
                         f"header ({len(header)}): not a table written by DataFrame.to_csv; restore the file")
    text = set(TEXT_COLUMNS) | set(text)
    columns = [_cells(name, [r[j] for r in body], name in text) for j, name in enumerate(header)]
    records = [{name: col[i] for name, col in zip(header, columns) if col[i] is not _LACKS}
               for i in range(len(body))]
    return pd.DataFrame(records).reindex(columns=header)


_LACKS = object()  # an hp.* cell of a row that lacks the setting: left out of its record


def _cells(name: str, cells: list[str], text: bool) -> list[Any]:
    """The Python values of one column's cells (see :func:`read_tidy_table`)."""
    empty = None if not name.startswith("hp.") or all(c == "" for c in cells) else _LACKS
    if not text and all(c == "" or c in _BOOL or _FLOAT.fullmatch(c) for c in cells):
        return [empty if c == "" else _BOOL[c] if c in _BOOL else int(c) if _INT.fullmatch(c) else float(c)
                for c in cells]
    return [empty if c == "" else c for c in cells]


# -- the run folder ---------------------------------------------------------------------------
class RunFolder:
    """One training run's folder: the names of its files, and reading and writing them.

    Every write is atomic (:mod:`srrlab.io`). Reading a folder that is not a run folder raises one
    ``FileNotFoundError`` naming the folder and how to make one.
    """

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    LAYERWISE = "layerwise.jsonl"
    CHECKPOINT = "checkpoint"
    LATEST = "latest.json"  # inside CHECKPOINT: the pointer to the newest complete checkpoint
    WEIGHTS = {"init": "weights_init.safetensors", "final": "weights_final.safetensors"}
    #: The files that hold a run's results, everything but the checkpoint (what a study export carries).
    RESULT_FILES = (CONFIG, SUMMARY, METRICS, LAYERWISE, *WEIGHTS.values())

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- what is there --------------------------------------------------------------------
    def is_run(self) -> bool:
        return (self.path / self.CONFIG).exists()

    def require(self) -> RunFolder:
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path} is not a run folder: it does not exist; check the path (a run "
                                    f"folder is what `srrlab train --out DIR` writes)")
        if not self.is_run():
            raise FileNotFoundError(f"{self.path} is not a run folder (no {self.CONFIG}); start it with "
                                    f"`srrlab train --out {self.path}`")
        return self

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / self.CHECKPOINT

    def has_checkpoint(self) -> bool:
        """Whether the run can be resumed (it wrote at least one complete checkpoint)."""
        return (self.checkpoint_dir / self.LATEST).exists()

    def weights_path(self, which: str) -> Path:
        if which not in self.WEIGHTS:
            raise ValueError(f"which must be 'final' or 'init', got {which!r}")
        return self.path / self.WEIGHTS[which]

    # -- records --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """``config.json``: ``{"train": TrainConfig fields, "model": CRATEConfig fields, "versions": …}``."""
        path = self.require().path / self.CONFIG
        config = read_json(path)
        if not (isinstance(config, dict) and all(isinstance(config.get(k), dict) for k in ("train", "model"))):
            raise ValueError(f"{path} is not a run configuration (it needs the tables \"train\" and \"model\" that "
                             "`srrlab train` writes): the file is damaged; restore it, or delete the folder and "
                             "train again")
        return config

    def write_config(self, train: Mapping[str, Any], model: Mapping[str, Any], versions: Mapping[str, str]) -> None:
        write_json(self.path / self.CONFIG, {"train": dict(train), "model": dict(model), "versions": dict(versions)})

    def summary(self) -> dict[str, Any] | None:
        """``summary.json``, or None before the first epoch ended."""
        path = self.path / self.SUMMARY
        return read_json(path) if path.exists() else None

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json(self.path / self.SUMMARY, dict(summary))

    def metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / self.METRICS)

    def write_metrics(self, rows: Iterable[Mapping[str, Any]]) -> None:
        write_jsonl(self.path / self.METRICS, rows)

    def layerwise(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / self.LAYERWISE)

    def write_layerwise(self, rows: Iterable[Mapping[str, Any]]) -> None:
        write_jsonl(self.path / self.LAYERWISE, rows)

    @property
    def layerwise_path(self) -> Path:
        return self.path / self.LAYERWISE

    # -- weights --------------------------------------------------------------------------
    def save_weights(self, which: str, state_dict: Mapping[str, torch.Tensor], epoch: int) -> None:
        save_weights(self.weights_path(which), state_dict, {"epoch": str(epoch)})

    def has_weights(self, which: str) -> bool:
        return self.weights_path(which).exists()

    def load_model(self, which: str = "final", device: str | torch.device = "cpu") -> CRATE:
        """The run's model with its ``"final"`` or ``"init"`` weights."""
        from .models import create_model

        path = self.weights_path(which)
        if not path.exists():
            why = "the run has not finished" if which == "final" else "not a run folder"
            raise FileNotFoundError(f"{path} does not exist ({why}, or its study was exported with --no-weights)")
        saved = self.config()
        model = create_model(saved["train"]["model"], **{k: v for k, v in saved["model"].items() if k != "variant"})
        model.load_state_dict(load_weights(path))
        return model.to(device)

    def label(self) -> str:
        """``<model> · seed <s>`` from the config, else the folder name."""
        try:
            cfg = self.config()["train"]
            return f"{cfg['model']} · seed {cfg['seed']}"
        except (OSError, KeyError, ValueError):
            return self.path.name
