"""Study specifications: a TOML file naming the dataset, fixed settings, grid axes, stopping rule
and measures of a generalisation study (docs/theory.md §6)."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from ..data import DATASETS
from ..measures import MEASURES, MeasureSettings
from ..measures.context import NETWORKS
from ..models import SIZES, VARIANTS, CRATEConfig
from ..names import PRESET_FILES, preset_names  # owned there: the command line lists them without torch
from ..options import EXECUTION_SETTINGS, check_keys, is_none
from ..runs import measure_key, parse_measure_key
from ..train import TrainConfig

__all__ = ["StudySpec", "SpecError", "PRESETS", "REPLICATION_AXES", "load_spec", "point_id", "group_label", "preset_names"]

#: Study presets shipped in the package (``srrlab/study/presets/<name>.toml``).
PRESETS = preset_names("study")

_TOP = {"name", "dataset", "data_dir", "data_seed", "data_options", "fixed", "grid", "measures", "report", "group"}
#: How a study trains the grid points that can share one stacked program (srrlab.train.group):
#: "auto" groups them on CUDA, where it pays, and trains them alone on a CPU (docs/performance.md);
#: "on" always groups, "off" never does. Like the execution settings it changes no result's meaning.
GROUP_MODES = ("auto", "on", "off")
#: Keys of the ``[report]`` table: how the population is reported (they never change a run).
REPORT_KEYS = {"by", "include_not_converged"}
_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {
    "model", "model_options", "dataset", "data_dir", "data_seed", "data_options"}
_MODEL_KEYS = {f.name for f in dataclasses.fields(CRATEConfig)} - {"variant"}
_SPECIAL = {"model", "variant", "size", "dataset"}
SETTING_KEYS = _TRAIN_KEYS | _MODEL_KEYS | _SPECIAL
#: Grid axes that replicate a design rather than vary it: their values add models (another
#: initialisation and data order) but they are not hyperparameter axes of the analysis, so they
#: are neither axes of ψ nor levels of the within-level check (docs/study.md, "Seeds").
REPLICATION_AXES = ("seed",)
#: Optional settings that the string "none" unsets (TOML has no null).
_NULLABLE = {"target_ce", "srr_eps", "srr_images", "eps", "temperature"}


class SpecError(ValueError):
    """An invalid study specification; the message names the offending key."""


def point_id(point: dict[str, Any]) -> str:
    """A stable 12-hex-digit id of a grid point (its sorted JSON)."""
    return hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class StudySpec:
    """A parsed study: every grid point's settings are ``fixed`` overridden by the point's axes.

    Setting keys are :class:`~srrlab.train.TrainConfig` fields (``lr``, ``batch_size``,
    ``epochs``, ``target_ce``, ``optimizer``, ``seed``, …), :class:`~srrlab.models.CRATEConfig`
    fields (``dim``, ``depth``, ``heads``, ``dropout``, …), and ``model`` (a full name such as
    ``crate-t-digits``) or ``variant`` + ``size`` (``model = f"{variant}-{size}"``), and
    ``dataset`` (top level, fixed, or an axis). A *grouped axis* has tables as values, each setting
    several settings together (e.g. ``arm = [{name = "CE", srr_reg = 0.0}, {name = "CE+SRR",
    srr_reg = 0.001, srr_layers = "last"}]``); its ``hp.<axis>`` column holds the tables' names.

    Measures are taken under one or more *network readings* (``networks``, values of
    :data:`srrlab.measures.context.NETWORKS`): the first is the primary reading, keyed by the plain
    measure name; every other one adds ``name@network`` for each measure that is not
    ``network_free`` (:attr:`measure_keys`).
    """

    name: str
    dataset: str  # "" when the dataset is a setting (fixed or a grid axis)
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    measures: list[str]
    measure_settings: dict[str, Any] = field(default_factory=dict)
    networks: list[str] = field(default_factory=list)  # the readings, primary first; [] = [the settings' network]
    data_dir: str | None = None
    data_seed: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    # [report]: strata (one correlation table per value of these settings, e.g. ["dim"]: one table per
    # width, as the paper's Table 1) and whether runs that missed the stopping target enter the tables
    report_by: list[str] = field(default_factory=list)
    include_not_converged: bool = False
    group: str = "auto"  # GROUP_MODES
    source: str = ""  # the TOML text, for the report

    def __post_init__(self) -> None:
        if not self.networks:
            self.networks = [MeasureSettings.from_dict(self.measure_settings).network]

    # -- parsing ------------------------------------------------------------------------
    @classmethod
    def from_toml(cls, text: str, source_name: str = "<spec>") -> StudySpec:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"{source_name}: not valid TOML ({exc})") from None
        spec = cls.from_dict(data)
        spec.source = text
        return spec

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StudySpec:
        check_keys(d, _TOP, "top-level key", error=SpecError)
        if not isinstance(d.get("name"), str):
            raise SpecError("key 'name' is required and must be a string")
        for key in ("fixed", "grid", "data_options"):
            if not isinstance(d.get(key, {}), dict):
                raise SpecError(f"key {key!r} must be a table (e.g. [{key}] on its own line, then key = value lines)")
        fixed = dict(d.get("fixed", {}))
        grid = dict(d.get("grid", {}))
        given = "dataset" in fixed or "dataset" in grid
        if "dataset" in d and given:
            raise SpecError("'dataset' is given both at the top level and as a setting; keep one")
        if "dataset" not in d and not given:
            raise SpecError("key 'dataset' is required: a string at the top level, or a fixed setting or "
                            "grid axis (e.g. dataset = [\"cifar10\", \"cifar100\"] under [grid])")
        if "dataset" in d and not isinstance(d["dataset"], str):
            raise SpecError("key 'dataset' must be a string")
        if "dataset" in d and d["dataset"] not in DATASETS:
            raise SpecError(f"key 'dataset': {d['dataset']!r} is not one of {', '.join(DATASETS)}")
        if not grid:
            raise SpecError("key 'grid' is missing or empty: a study needs at least one grid axis, e.g. [grid] "
                            "seed = [0, 1, 2] (to train one model, use `srrlab train`)")
        for axis, values in grid.items():
            if not isinstance(values, list) or not values:
                raise SpecError(f"grid axis {axis!r} must be a non-empty list of values")
            if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
                raise SpecError(f"grid axis {axis!r} repeats a value: {values}")
        grouped = {a for a, values in grid.items() if _is_grouped(values)}
        for axis in grouped:
            _check_grouped_axis(axis, grid[axis], fixed, {a for a in grid if a != axis})
        for key in [*fixed, *(a for a in grid if a not in grouped)]:
            if key not in SETTING_KEYS:
                raise SpecError(f"unknown setting {key!r}; valid settings: model or variant + size, dataset, "
                                f"training options ({', '.join(sorted(_TRAIN_KEYS))}), "
                                f"model options ({', '.join(sorted(_MODEL_KEYS))}); "
                                "or a grouped axis whose values are tables of settings")
        both = sorted(set(fixed) & set(grid))
        if both:
            raise SpecError(f"setting {both[0]!r} is both fixed and a grid axis; keep one")
        m = d.get("measures", {})
        if not isinstance(m, dict):
            raise SpecError("key 'measures' must be a table with 'names' and optional 'networks' and 'settings'")
        check_keys(m, ("names", "networks", "settings"), "key", prefix="measures.", error=SpecError)
        names = m.get("names", "all")
        names = list(MEASURES) if names == "all" else names
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SpecError("key 'measures.names' must be \"all\" or a list of measure names")
        for n in names:
            if n not in MEASURES:
                raise SpecError(f"key 'measures.names': unknown measure {n!r}; available: {', '.join(MEASURES)}")
        settings = dict(m.get("settings", {}))
        try:
            primary = MeasureSettings.from_dict(settings).network
        except ValueError as exc:
            raise SpecError(f"key 'measures.settings': {exc}") from None
        networks = _parse_networks(m.get("networks", [primary]), settings)
        report = d.get("report", {})
        if not isinstance(report, dict):
            raise SpecError("key 'report' must be a table, e.g. [report] by = [\"dim\"]")
        check_keys(report, REPORT_KEYS, "key", prefix="report.", error=SpecError)
        by = report.get("by", [])
        by = [by] if isinstance(by, str) else by
        if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
            raise SpecError("key 'report.by' must be a list of setting names, e.g. by = [\"dim\"]")
        for b in by:
            if b not in grid and b not in fixed and b not in SETTING_KEYS:
                raise SpecError(f"key 'report.by': {b!r} is not a grid axis or setting of this study "
                                f"(grid axes: {', '.join(grid) or 'none'})")
        include = report.get("include_not_converged", False)
        if not isinstance(include, bool):
            raise SpecError("key 'report.include_not_converged' must be true or false")
        group = d.get("group", "auto")
        if group not in GROUP_MODES:
            raise SpecError(f"key 'group' must be one of {', '.join(map(repr, GROUP_MODES))}, got {group!r}")
        spec = cls(name=d["name"], dataset=d.get("dataset", ""), fixed=fixed, grid=grid, measures=names,
                   measure_settings=settings, networks=networks, data_dir=d.get("data_dir"),
                   data_seed=int(d.get("data_seed", 0)), data_options=dict(d.get("data_options", {})),
                   report_by=list(by), include_not_converged=include, group=group)
        for point in spec.points():
            spec.train_config(point)  # every point must give a valid run
        return spec

    # -- the grid -----------------------------------------------------------------------
    @property
    def axes(self) -> list[str]:
        """Grid axes that take at least two values, replication axes (:data:`REPLICATION_AXES`: the
        seed) excepted: the axes of the correlation analysis, strata included."""
        return [a for a, v in self.grid.items() if len(v) >= 2 and a not in REPLICATION_AXES]

    @property
    def replicates(self) -> int:
        """How many models each design point has: the product of the replication axes' sizes (1 without)."""
        n = 1
        for a in REPLICATION_AXES:
            n *= len(self.grid.get(a, [None]))
        return n

    @property
    def grouped_axes(self) -> list[str]:
        """Axes whose values are tables of settings (each sets several settings at once)."""
        return [a for a, values in self.grid.items() if _is_grouped(values)]

    @property
    def datasets(self) -> list[str]:
        """The dataset(s) of the study: the top-level one, or the values of the ``dataset`` setting."""
        if self.dataset:
            return [self.dataset]
        if "dataset" in self.fixed:
            return [self.fixed["dataset"]]
        return list(self.grid["dataset"])

    def points(self) -> list[dict[str, Any]]:
        """Every grid point, in the order of the Cartesian product of the axes as written."""
        axes = list(self.grid)
        return [dict(zip(axes, values)) for values in itertools.product(*(self.grid[a] for a in axes))]

    def settings(self, point: dict[str, Any]) -> dict[str, Any]:
        """``fixed`` overridden by the point, with ``model`` resolved from ``variant``/``size``, ``dataset``
        filled in, and each grouped axis replaced by its settings plus its label (``point[axis]["name"]``)."""
        s = {**self.fixed}
        for key, value in point.items():
            if isinstance(value, dict):
                s.update({k: v for k, v in value.items() if k != "name"})
                s[key] = group_label(value)
            else:
                s[key] = value
        s.setdefault("dataset", self.dataset)
        if s["dataset"] not in DATASETS:
            raise SpecError(f"setting 'dataset': {s['dataset']!r} is not one of {', '.join(DATASETS)}")
        if "model" in s and ("variant" in s or "size" in s):
            raise SpecError("give either 'model' or 'variant' + 'size', not both")
        if "model" not in s:
            if "variant" not in s or "size" not in s:
                raise SpecError("the model is missing: set 'model' (e.g. \"crate-t-digits\") or 'variant' and 'size'")
            if s["variant"] not in VARIANTS:
                raise SpecError(f"setting 'variant': {s['variant']!r} is not one of {', '.join(VARIANTS)}")
            if s["size"] not in SIZES:
                raise SpecError(f"setting 'size': {s['size']!r} is not one of {', '.join(SIZES)}")
            s["model"] = f"{s['variant']}-{s['size']}"
        return s

    def train_config(self, point: dict[str, Any]) -> TrainConfig:
        s = self.settings(point)
        # TOML has no null: the string "none" unsets an optional setting (target_ce = "none": fixed epochs)
        s = {k: None if k in _NULLABLE and is_none(v) else v for k, v in s.items()}
        train = {k: v for k, v in s.items() if k in _TRAIN_KEYS}
        model_options = {k: v for k, v in s.items() if k in _MODEL_KEYS}
        try:
            cfg = TrainConfig(model=s["model"], model_options=model_options, dataset=s["dataset"],
                              data_dir=self.data_dir, data_seed=self.data_seed, data_options=self.data_options, **train)
            from ..models import model_config

            model_config(cfg.model, **model_options)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"grid point {point}: {exc}") from None
        return cfg

    # -- measures and their network readings ----------------------------------------------------
    @property
    def primary_network(self) -> str:
        """The network of the primary reading (``networks[0]``), whose measures are keyed by their plain name."""
        return self.networks[0]

    def reading_settings(self, network: str | None = None) -> MeasureSettings:
        """The measure settings of the reading on ``network`` (default: the primary one)."""
        network = self._reading(network)
        return dataclasses.replace(MeasureSettings.from_dict(self.measure_settings), network=network)

    def reading_names(self, network: str | None = None) -> list[str]:
        """The measures taken under the reading on ``network``: every measure for the primary reading,
        the ones that are not ``network_free`` for another (a network-free one would repeat its value)."""
        network = self._reading(network)
        if network == self.primary_network:
            return list(self.measures)
        return [n for n in self.measures if not MEASURES[n].network_free]

    def reading_key(self, name: str, network: str | None = None) -> str:
        """The key holding measure ``name``'s value under the reading on ``network`` (default: the
        primary one): the plain name for the primary reading or a ``network_free`` measure, else
        :func:`srrlab.runs.measure_key` ``(name, network)``."""
        network = self._reading(network)
        if network == self.primary_network or (name in MEASURES and MEASURES[name].network_free):
            return name
        return measure_key(name, network)

    @property
    def measure_keys(self) -> list[str]:
        """Every measure key of the study, in column order: the primary reading's names in spec order,
        then each other reading's ``name@network`` keys (:meth:`reading_names`)."""
        return [self.reading_key(n, net) for net in self.networks for n in self.reading_names(net)]

    def keys_by_network(self, keys: list[str]) -> list[tuple[str, list[str]]]:
        """``keys`` as ``(network, measure names)`` per reading, in reading order (readings without a key
        left out): what one :func:`~srrlab.measures.compute_measures` call per network evaluates."""
        names: dict[str, list[str]] = {net: [] for net in self.networks}
        for key in keys:
            name, network = parse_measure_key(key)
            network = network or self.primary_network
            if network not in names:
                raise ValueError(f"measure key {key!r}: {network!r} is not a network reading of study {self.name!r} "
                                 f"(readings: {', '.join(self.networks)})")
            names[network].append(name)
        return [(net, group) for net, group in names.items() if group]

    def _reading(self, network: str | None) -> str:
        if network is None:
            return self.primary_network
        if network not in self.networks:
            raise ValueError(f"{network!r} is not a network reading of study {self.name!r} (readings: "
                             f"{', '.join(self.networks)}); add it under [measures] networks")
        return network

    def with_measures(self, names: Sequence[str] = (), networks: Sequence[str] = ()) -> StudySpec:
        """This spec with the measures ``names`` (``"all"``: every registered one) and the network
        readings ``networks`` added, as a new spec whose source is this spec's TOML text with
        ``measures.names`` and ``measures.networks`` edited in place (tomlkit: comments, order and every
        other key kept; the result is checked to parse back to this spec plus the additions). Adding
        measures changes no fingerprint: a study accepts the result and measures only what it lacks."""
        names = list(MEASURES) if "all" in names else list(names)
        unknown = [n for n in names if n not in MEASURES]
        if unknown:
            raise SpecError(f"unknown measure{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"available: {', '.join(MEASURES)}")
        bad = [n for n in networks if n not in NETWORKS]
        if bad:
            raise SpecError(f"unknown network {bad[0]!r}; a network reading is one of {', '.join(NETWORKS)}")
        wanted = dataclasses.replace(self, measures=list(dict.fromkeys([*self.measures, *names])),
                                     networks=list(dict.fromkeys([*self.networks, *networks])))
        default = [MeasureSettings.from_dict(self.measure_settings).network]
        try:
            text = _with_measures_text(self.source, wanted.measures,
                                       None if wanted.networks == default else wanted.networks)
            spec = StudySpec.from_toml(text, "the spec with the measures added")
        except (SpecError, ValueError):  # tomlkit's parse errors are ValueErrors
            spec = None
        if spec is None or {**spec.to_dict(), "source": ""} != {**wanted.to_dict(), "source": ""}:
            raise SpecError("cannot rewrite the measures of this spec: write them as a [measures] table (names, "
                            "networks) with an optional [measures.settings] table, or edit the spec yourself and "
                            "run `srrlab study run SPEC --dir DIR`")
        return spec

    def fingerprint(self) -> str:
        """Hash of what a run computes and measures: everything but the grid's values, the ``[report]``
        options, the fixed execution settings (:data:`srrlab.options.EXECUTION_SETTINGS`: device, compile,
        eval_batch_size), the measure names and the extra network readings. Equal fingerprints may differ
        only by added grid points, added or dropped measures and readings, how they are reported and
        where they run; the measure settings, the primary reading's network included
        (:meth:`effective_measure_settings`), count. Grid point ids hash the point alone."""
        d = self.to_dict()
        d["grid"] = sorted(d["grid"])
        d["fixed"] = {k: v for k, v in d["fixed"].items() if k not in EXECUTION_SETTINGS}
        d["measure_settings"] = self.effective_measure_settings()
        for key in ("source", "report_by", "include_not_converged", "group", "measures", "networks"):
            d.pop(key, None)
        return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()

    def effective_measure_settings(self) -> dict[str, Any]:
        """``[measures.settings]`` as written, with ``network`` set to the primary reading's network
        (however it was given): the measure settings that a stored value depends on."""
        return {**self.measure_settings, "network": self.primary_network}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_networks(networks: Any, settings: dict[str, Any]) -> list[str]:
    """``[measures] networks``, checked: a non-empty list of distinct :data:`NETWORKS` (a string is a
    list of one) whose first agrees with ``[measures.settings] network`` when both are given."""
    networks = [networks] if isinstance(networks, str) else networks
    if not isinstance(networks, list) or not networks or not all(isinstance(n, str) for n in networks):
        raise SpecError(f"key 'measures.networks' must be a non-empty list of networks, e.g. networks = "
                        f"[\"trained\", \"protocol\"] (from {', '.join(NETWORKS)}), got {networks!r}")
    for n in networks:
        if n not in NETWORKS:
            raise SpecError(f"key 'measures.networks': unknown network {n!r}; available: {', '.join(NETWORKS)}")
    if len(set(networks)) != len(networks):
        raise SpecError(f"key 'measures.networks' repeats a network: {networks}")
    if "network" in settings and settings["network"] != networks[0]:
        raise SpecError(f"key 'measures.settings.network' ({settings['network']!r}) differs from the first of "
                        f"'measures.networks' ({networks[0]!r}), the primary reading; drop measures.settings.network "
                        "or list it first in networks")
    return list(networks)


def _with_measures_text(source: str, names: list[str], networks: list[str] | None) -> str:
    """``source`` (a spec's TOML text) with ``[measures] names`` (and ``networks``, or none when it is
    the default) set, edited in place by tomlkit: comments, order and every other key kept, whether
    ``measures`` is a table, an inline table or dotted keys."""
    import tomlkit

    doc = tomlkit.parse(source)
    if "measures" not in doc:
        doc["measures"] = tomlkit.table()
    measures = doc["measures"]
    measures["names"] = names
    if networks is not None:
        measures["networks"] = networks
    elif "networks" in measures:
        del measures["networks"]
    return tomlkit.dumps(doc)


def _is_grouped(values: list[Any]) -> bool:
    """A grouped axis: every value is a table of settings."""
    return all(isinstance(v, dict) for v in values)


def group_label(value: dict[str, Any]) -> str:
    """The label of a grouped-axis value: its ``name``, else ``key=value`` pairs."""
    if "name" in value:
        return str(value["name"])
    return ", ".join(f"{k}={v}" for k, v in sorted(value.items()))


def _check_grouped_axis(axis: str, values: list[dict[str, Any]], fixed: dict[str, Any], others: set[str]) -> None:
    if axis in SETTING_KEYS:
        raise SpecError(f"grid axis {axis!r} is a setting; its values must be plain values, not tables "
                        "(give a grouped axis a name that is not a setting, e.g. 'arm')")
    labels = []
    for value in values:
        for key in value:
            if key == "name":
                if not isinstance(value[key], str):
                    raise SpecError(f"grid axis {axis!r}: 'name' must be a string, got {value[key]!r}")
                continue
            if key not in SETTING_KEYS:
                raise SpecError(f"grid axis {axis!r}: unknown setting {key!r} in {value}; a grouped value "
                                "sets study settings (training options, model options, dataset, model)")
            if key in fixed or key in others:
                raise SpecError(f"grid axis {axis!r} sets {key!r}, which is also "
                                f"{'fixed' if key in fixed else 'a grid axis'}; keep one")
        labels.append(group_label(value))
    if len(set(labels)) != len(labels):
        raise SpecError(f"grid axis {axis!r}: two values have the same name {labels}; names label the table rows")


def load_spec(spec: str | os.PathLike, *, kind: str = "study") -> StudySpec:
    """A preset name or the path of a TOML file. ``kind="study"``: the presets of
    :func:`preset_names` (``presets/<name>.toml``: ``demo``, ``paper``); ``kind="regularize"``: the
    regularisation experiment's presets (``presets/regularize-<name>.toml``: ``demo``, ``fmnist``,
    ``paper``)."""
    if kind not in PRESET_FILES:
        raise ValueError(f"kind must be one of {', '.join(PRESET_FILES)}, got {kind!r}")
    text_name = os.fspath(spec)
    names = preset_names(kind)
    if text_name in names:
        file = PRESET_FILES[kind].format(name=text_name)
        text = resources.files("srrlab.study").joinpath("presets", file).read_text(encoding="utf-8")
        return StudySpec.from_toml(text, f"preset {text_name}")
    path = Path(text_name)
    if not path.is_file():
        raise SpecError(f"{kind} spec {text_name!r} is neither a preset ({', '.join(names)}) nor a TOML file")
    return StudySpec.from_toml(path.read_text(encoding="utf-8"), str(path))
