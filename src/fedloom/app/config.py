"""Run configuration: YAML mapped one-to-one onto typed, frozen dataclasses.

OmegaConf loads the YAML and merges dotted command-line overrides (``client.lr=0.05``); the merged
mapping is then checked against the dataclasses below, and every problem (unknown key, wrong type,
impossible value) is reported at once in one :class:`ConfigError`, each naming the key, the value
and what is allowed.

Example:
    >>> cfg = load_config(None, ["rounds=3", "data.name=synthetic", "model.name=logreg"])
    >>> cfg.rounds, cfg.data.name, cfg.model.name
    (3, 'synthetic', 'logreg')
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedloom.aggregators.rules import REGISTRY as AGGREGATORS
from fedloom.aggregators.rules import AggregatorConfig
from fedloom.algorithms.fedavg import FedAvgOptions
from fedloom.algorithms.registry import AlgorithmConfig, registry
from fedloom.app.config_checks import check_sections
from fedloom.attacks.config import OPTIONS as ATTACK_OPTIONS
from fedloom.attacks.config import AttackConfig, attack_from_mapping
from fedloom.compression.config import CompressionConfig
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig
from fedloom.core.validate import Problems
from fedloom.data.config import DataConfig
from fedloom.fleets.config import FleetConfig
from fedloom.models import ModelConfig
from fedloom.privacy.config import PrivacyConfig
from fedloom.runtime.clock import ClockConfig
from fedloom.runtime.sampling import SamplerName
from fedloom.runtime.sinks import SinkName
from fedloom.secagg.config import SecAggConfig
from fedloom.topology.config import TopologyConfig
from fedloom.training.evaluation import EvalConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class CohortConfig:
    """``size`` clients take part in each round, chosen by ``sampler``; ``dropout`` of them
    never answer (simulated); a round needs ``min_success`` usable results (null = every client
    that was asked) and is run again with a fresh cohort up to ``retries`` times before the run
    stops with the failures. Null means the mode's default: in simulation every client and no
    retry (a failure there is a bug to see); in a deployment half the cohort (rounded up) and
    10 retries, each after waiting for enough connected clients."""

    size: int = 10
    sampler: SamplerName = SamplerName.UNIFORM
    min_success: int | None = None
    dropout: float = 0.0
    retries: int | None = None

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.size >= 1, "size", self.size, "must be >= 1")
        p.check(self.min_success is None or 1 <= self.min_success <= self.size, "min_success",
                self.min_success, f"must be in [1, cohort.size = {self.size}] or null (all)")
        p.check(0 <= self.dropout < 1, "dropout", self.dropout, "must be in [0, 1)")
        p.check(self.retries is None or self.retries >= 0, "retries", self.retries,
                "must be >= 0 or null (the mode's default)")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointConfig:
    """``every``: write the run directory's checkpoint after every this many rounds (and after
    the last), so ``fedloom run --resume RUN_DIR`` continues a killed run; 0: none (a
    deployment server checkpoints after every round unless told a larger ``every``)."""

    every: int = 0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.every >= 0, "every", self.every, "must be >= 0 (0: no checkpoints)")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """A whole simulation run. ``out`` null means ``runs/<name>-<timestamp>``; ``state_dir``
    holds per-client algorithm state in memory-mapped files (null: in memory); ``sinks``: where
    the rows go besides ``metrics.jsonl`` (always written): ``[jsonl, tensorboard]`` adds
    event files under ``RUN_DIR/tensorboard``."""

    name: str = "run"
    rounds: int = 50
    seed: int = 0
    out: str | None = None
    state_dir: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=lambda: AlgorithmConfig(
        options=FedAvgOptions()))
    aggregator: AggregatorConfig = field(default_factory=AggregatorConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    cohort: CohortConfig = field(default_factory=CohortConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    topology: TopologyConfig | None = None
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    privacy: PrivacyConfig | None = None
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    sinks: tuple[SinkName, ...] = (SinkName.JSONL,)

    def __post_init__(self) -> None:
        p = Problems()
        names = [str(s) for s in self.sinks]
        p.check(SinkName.JSONL in self.sinks and len(set(names)) == len(names), "sinks", names,
                "must name jsonl (metrics.jsonl, the source of truth) and each sink once, "
                "e.g. [jsonl, tensorboard]")
        p.check(self.rounds >= 1, "rounds", self.rounds, "must be >= 1")
        p.check(self.seed >= 0, "seed", self.seed, "must be >= 0")
        p.check(self.cohort.size <= self.data.num_clients, "cohort.size", self.cohort.size,
                f"must be <= data.num_clients ({self.data.num_clients})")
        check_sections(self, p)
        p.raise_if_any()


_BAD = object()


def _convert(tp: Any, value: Any, key: str, p: Problems) -> Any:
    """``value`` as type ``tp``, or ``_BAD`` after recording why not."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, key, p)
    if tp is Any:
        return value
    if tp is AlgorithmConfig:
        return _algorithm_from_mapping(value, p, key)
    if tp is AggregatorConfig:
        return _aggregator_from_mapping(value, p, key)
    if tp is AttackConfig:
        return _attack_from_mapping(value, p, key)
    if origin in (tuple, list):
        return _sequence(tp, value, key, p)
    if origin is dict:
        if not isinstance(value, Mapping):
            p.add(key, value, "must be a mapping")
            return _BAD
        (_, inner) = typing.get_args(tp)
        items = {str(k): _convert(inner, v, f"{key}.{k}", p) for k, v in value.items()}
        return _BAD if any(v is _BAD for v in items.values()) else items
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            p.add(key, value, "must be a mapping (a YAML section)")
            return _BAD
        return from_mapping(tp, value, key, p)
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        allowed = [m.value for m in tp]
        if isinstance(value, bool) and {"on", "off"} <= set(allowed):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if value not in allowed:
            p.add(key, value, f"must be one of {', '.join(allowed)}")
            return _BAD
        return tp(value)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }[tp](value)
    if not ok:
        p.add(key, value, f"must be {'a number' if tp is float else 'of type ' + tp.__name__}")
        return _BAD
    return float(value) if tp is float else value


def _sequence(tp: Any, value: Any, key: str, p: Problems) -> Any:
    """A YAML list as ``tuple[T, ...]``, ``tuple[A, B]`` or ``list[T]``."""
    if not isinstance(value, list | tuple):
        p.add(key, value, "must be a list")
        return _BAD
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            p.add(key, value, f"must be a list of {len(args)}")
            return _BAD
        kinds = list(args)
    else:
        kinds = [args[0]] * len(value)
    items = [_convert(k, v, f"{key}[{i}]", p) for i, (k, v) in enumerate(zip(kinds, value))]
    return _BAD if any(v is _BAD for v in items) else tuple(items)


def from_mapping(cls: type[Any], data: Mapping[str, Any], prefix: str, p: Problems) -> Any:
    """Build dataclass ``cls`` from ``data``, recording every problem in ``p``."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    bad = False
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            p.add(path, value, f"unknown key; allowed keys here: {', '.join(names)}")
            bad = True
            continue
        converted = _convert(hints[key], value, path, p)
        if converted is _BAD:
            bad = True
            if dataclasses.is_dataclass(hints[key]):  # a broken section: its defaults stand in
                continue
        else:
            kwargs[key] = converted
    try:  # with the bad keys left at their defaults, so value checks still report the rest
        built = cls(**kwargs)
    except ConfigError as err:
        p.extend(prefix, err)
        return _BAD
    return _BAD if bad else built


def _named(data: Any, p: Problems, key: str, default: str,
           known: Mapping[str, Any]) -> tuple[str, Any] | None:
    """A ``{name: ..., option: ...}`` section: its registered name and its typed options
    (None after recording what is wrong)."""
    if not isinstance(data, Mapping):
        p.add(key, data, "must be a mapping with a 'name'")
        return None
    rest = dict(data)
    name = rest.pop("name", default)
    if name not in known:
        p.add(f"{key}.name", name, f"must be one of {', '.join(sorted(known))}")
        return None
    options = from_mapping(known[name].options, rest, key, p)
    return None if options is _BAD else (name, options)


def _algorithm_from_mapping(data: Any, p: Problems, key: str = "algorithm") -> Any:
    named = _named(data, p, key, "fedavg", registry())
    return _BAD if named is None else AlgorithmConfig(name=named[0], options=named[1])


def _aggregator_from_mapping(data: Any, p: Problems, key: str) -> Any:
    named = _named(data, p, key, "mean", AGGREGATORS)
    return _BAD if named is None else AggregatorConfig(name=named[0], options=named[1])


def _attack_from_mapping(data: Any, p: Problems, key: str) -> Any:
    if not isinstance(data, Mapping):
        p.add(key, data, "must be a mapping with a 'name'")
        return _BAD
    try:
        name, fraction, rest = attack_from_mapping(data)
    except ConfigError as err:
        p.extend("", err)
        return _BAD
    options = from_mapping(ATTACK_OPTIONS[name], rest, key, p)
    fraction = _convert(float, fraction, f"{key}.fraction", p)
    if fraction is not _BAD and not 0 <= fraction < 1:
        p.add(f"{key}.fraction", fraction, "must be in [0, 1)")
        return _BAD
    if options is _BAD or fraction is _BAD:
        return _BAD
    try:
        return AttackConfig(name=name, fraction=fraction, options=options)
    except ConfigError as err:
        p.extend(key, err)
        return _BAD


def parse_run_config(data: Mapping[str, Any]) -> RunConfig:
    """A :class:`RunConfig` from a plain mapping; raises one ConfigError listing every problem."""
    p = Problems()
    cfg = from_mapping(RunConfig, data, "", p)
    p.raise_if_any()
    assert isinstance(cfg, RunConfig)  # from_mapping records a problem whenever it returns _BAD
    return cfg


def _load_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        loaded = OmegaConf.load(path)
    except (YAMLError, OmegaConfBaseException) as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(OmegaConf.to_container(loaded), dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return loaded


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a YAML config (or the defaults when None) and apply dotted overrides."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    p = Problems()
    merged = OmegaConf.create({}) if path is None else _load_yaml(Path(path))
    if path is not None and "name" not in merged:
        merged["name"] = Path(path).stem
    for item in overrides:
        if "=" not in item:
            p.add(item, None, "an override must look like key=value, e.g. client.lr=0.05")
            continue
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except (OmegaConfBaseException, ValueError, TypeError) as err:
            p.add(item.split("=", 1)[0], item.split("=", 1)[1], f"cannot apply override: {err}")
    p.raise_if_any()
    container = OmegaConf.to_container(merged, resolve=True)
    assert isinstance(container, dict)
    # YAML may hold non-string keys; from_mapping reports them as unknown keys.
    return parse_run_config(typing.cast("dict[str, Any]", container))


def config_to_dict(cfg: Any) -> Any:
    """A plain, YAML-ready mapping of a config (enums as strings; algorithm options inline)."""
    if isinstance(cfg, AlgorithmConfig | AggregatorConfig):
        return {"name": cfg.name, **config_to_dict(cfg.options)}
    if isinstance(cfg, AttackConfig):
        return {"name": cfg.name.value, "fraction": cfg.fraction, **config_to_dict(cfg.options)}
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, StrEnum):
        return cfg.value
    if isinstance(cfg, tuple | list):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


def config_to_yaml(cfg: RunConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(config_to_dict(cfg)))
