"""Sweep files: parse, check strictly (every problem at once, each naming its key) and expand
into one :class:`SweepPoint` per task; the format is in :mod:`fedloom.sweeps.sweep`.

Every task's config is built with :func:`fedloom.app.config.load_config` here, before anything runs,
so a key that does not exist in the run config stops the sweep with the key and the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloom.app.config import RunConfig, config_to_yaml, load_config
from fedloom.core.errors import ConfigError
from fedloom.core.validate import Problems
from fedloom.scheduler.task import id_problem

KEYS = ("name", "base", "overrides", "grid", "runs", "seeds", "target_accuracy", "slots",
        "memory_mb", "oom_retries")
_RUN_KEYS = ("id", "overrides")
_SLOT_KEYS = ("cpu", "per_gpu")
_DOTTED = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")

Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPoint:
    """One task: a configuration (``config_id``, shared by its seeds) and a seed."""

    task_id: str
    config_id: str
    seed: int | None
    params: dict[str, Scalar]  # grid values (and ``run``: the run id) of the configuration
    overrides: tuple[str, ...]
    fingerprint: str  # hash of the resolved run config


@dataclass(frozen=True, slots=True, kw_only=True)
class Sweep:
    name: str
    path: Path
    base: Path | None
    target_accuracy: float | None
    cpu_slots: int | None
    per_gpu: int | None
    memory_mb: int | None
    oom_retries: int
    grid_keys: tuple[str, ...]
    points: tuple[SweepPoint, ...]


def _yaml(path: Path) -> Any:
    import yaml

    def mapping(loader: Any, node: Any, deep: bool = False) -> Any:
        keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
        for key in keys:
            if keys.count(key) > 1:
                raise ConfigError(f"{key} = ...: duplicate key in {path} (line "
                                  f"{node.start_mark.line + 1})")
        return loader.construct_mapping(node, deep)

    strict: Any = type("StrictLoader", (yaml.SafeLoader,), {})  # a private copy to extend
    strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    if not path.is_file():
        raise ConfigError(f"sweep file {str(path)!r} does not exist")
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=strict)
    except yaml.YAMLError as err:
        raise ConfigError(f"sweep file {str(path)!r} is not valid YAML: {err}") from None


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strings(value: object, key: str, p: Problems) -> list[str]:
    """A list of ``key=value`` strings, or [] after recording what is wrong."""
    if not isinstance(value, list):
        p.add(key, value, "must be a list of key=value strings")
        return []
    for i, item in enumerate(value):
        if not isinstance(item, str) or "=" not in item:
            p.add(f"{key}[{i}]", item, "must be a key=value string, e.g. client.lr=0.05")
    return [v for v in value if isinstance(v, str) and "=" in v]


def _base(value: object, sweep_path: Path, p: Problems) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str):
        p.add("base", value, "must be the path of a run config")
        return None
    tried = [Path(value)] if Path(value).is_absolute() else [sweep_path.parent / value,
                                                             Path.cwd() / value]
    found = next((t for t in tried if t.is_file()), None)
    if found is None:
        p.add("base", value, f"file not found (looked at {', '.join(map(str, tried))})")
    return found


def _grid(value: object, p: Problems) -> dict[str, list[Scalar]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.add("grid", value, "must be a mapping of dotted run-config keys to lists of values")
        return {}
    grid: dict[str, list[Scalar]] = {}
    for key, values in value.items():
        if not isinstance(key, str) or not _DOTTED.fullmatch(key):
            p.add(f"grid.{key}", values, "the key must be a dotted run-config key, e.g. client.lr")
        elif not isinstance(values, list) or not values or any(
                isinstance(v, (list, dict)) for v in values):
            p.add(f"grid.{key}", values, "must be a non-empty list of plain values")
        elif len(set(map(json.dumps, values))) < len(values):
            p.add(f"grid.{key}", values, "lists a value twice")
        else:
            grid[key] = values
    return grid


def _runs(value: object, p: Problems) -> list[tuple[str | None, list[str]]]:
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        p.add("runs", value, "must be a non-empty list of {id, overrides} mappings")
        return []
    runs: list[tuple[str | None, list[str]]] = []
    first: dict[str, int] = {}
    for i, entry in enumerate(value):
        if not isinstance(entry, dict):
            p.add(f"runs[{i}]", entry, "must be a mapping with an id and overrides")
            continue
        for key in entry:
            if key not in _RUN_KEYS:
                p.add(f"runs[{i}].{key}", entry[key],
                      f"unknown key; allowed keys here: {', '.join(_RUN_KEYS)}")
        run_id = entry.get("id")
        problem = id_problem(run_id)
        if problem or not isinstance(run_id, str):
            p.add(f"runs[{i}].id", run_id, problem or "must be a string")
        elif run_id in first:
            p.add(f"runs[{i}].id", run_id, f"duplicate task id (also runs[{first[run_id]}].id)")
        else:
            first[run_id] = i
            runs.append((run_id, _strings(entry.get("overrides", []), f"runs[{i}].overrides", p)))
    return runs


def _seeds(value: object, p: Problems) -> list[int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or not value or not all(_is_int(s) and s >= 0 for s in value)
            or len(set(value)) < len(value)):
        p.add("seeds", value, "must be a non-empty list of distinct integers >= 0")
        return None
    return value


def _slots(value: object, p: Problems) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.add("slots", value, "must be a mapping such as {cpu: 2, per_gpu: 4}")
        return {}
    for key, n in value.items():
        if key not in _SLOT_KEYS:
            p.add(f"slots.{key}", n, f"unknown key; allowed keys here: {', '.join(_SLOT_KEYS)}")
        elif not _is_int(n) or n < 1:
            p.add(f"slots.{key}", n, "must be an integer >= 1")
    return {k: n for k, n in value.items() if k in _SLOT_KEYS and _is_int(n) and n >= 1}


def _slug(value: Scalar) -> str:
    text = json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    return _UNSAFE.sub("_", text).strip("_") or "_"


def _override(key: str, value: Scalar) -> str:
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Parse, expand and validate a sweep file; ``overrides`` apply to every task (after the
    file's). Raises one ConfigError listing every problem; nothing is run or written."""
    path = Path(path)
    data = _yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {str(path)!r} must hold a mapping at the top level")
    p = Problems()
    for key in data:
        if key not in KEYS:
            p.add(str(key), data[key], f"unknown key; allowed keys: {', '.join(KEYS)}")
    name = data.get("name", path.stem)
    if id_problem(name):
        p.add("name", name, str(id_problem(name)))
    base = _base(data.get("base"), path, p)
    common = [*_strings(data.get("overrides", []), "overrides", p), *overrides]
    grid, runs, seeds = _grid(data.get("grid"), p), _runs(data.get("runs"), p), _seeds(
        data.get("seeds"), p)
    slots = _slots(data.get("slots"), p)
    target = data.get("target_accuracy")
    p.check(target is None or (isinstance(target, (int, float)) and not isinstance(target, bool)
                               and 0 < target <= 1),
            "target_accuracy", target, "must be a number in (0, 1] or null")
    memory_mb, retries = data.get("memory_mb"), data.get("oom_retries", 2)
    p.check(memory_mb is None or (_is_int(memory_mb) and memory_mb > 0), "memory_mb", memory_mb,
            "must be a positive integer (MiB) or null (learned)")
    p.check(_is_int(retries) and retries >= 0, "oom_retries", retries, "must be an integer >= 0")
    points: list[SweepPoint] = []
    if base is not None or data.get("base") is None:  # check the configs of what did parse
        points = _expand(base, common, grid, runs, seeds, p)
    p.raise_if_any()
    return Sweep(name=name, path=path, base=base, target_accuracy=target,
                 cpu_slots=slots.get("cpu"), per_gpu=slots.get("per_gpu"), memory_mb=memory_mb,
                 oom_retries=retries, grid_keys=tuple(grid), points=tuple(points))


def _expand(base: Path | None, common: list[str], grid: dict[str, list[Scalar]],
            runs: Sequence[tuple[str | None, list[str]]], seeds: list[int] | None,
            p: Problems) -> list[SweepPoint]:
    """Every (run, grid point, seed) as a point; each config checked by load_config."""
    points: list[SweepPoint] = []
    made: dict[str, str] = {}
    failures: dict[str, list[str]] = {}
    variants: Sequence[tuple[str | None, list[str]]] = runs or [(None, [])]
    for (run_id, run_overrides), combo in itertools.product(variants, _combos(grid)):
        parts = ([run_id] if run_id else []) + [f"{k}-{_slug(v)}" for k, v in combo]
        config_id = "_".join(parts) or "base"
        params: dict[str, Scalar] = {"run": run_id} if run_id else {}
        params.update(combo)
        config_overrides = [*common, *run_overrides, *(_override(k, v) for k, v in combo)]
        for seed in seeds if seeds is not None else [None]:
            task_id = config_id if seed is None else f"{config_id}_seed-{seed}"
            origin = ", ".join(f"{k}={v!r}" for k, v in params.items()) or "the base config"
            problem = id_problem(task_id)
            if problem:
                p.add("task_id", task_id, f"{problem} (from {origin}; give shorter run ids)")
                continue
            if task_id in made:
                p.add("task_id", task_id, f"duplicate task id: made by {made[task_id]} and by "
                      f"{origin}; values must differ in letters, digits, '.' or '-'")
                continue
            made[task_id] = origin
            task_overrides = (*config_overrides, *(() if seed is None else (f"seed={seed}",)))
            try:
                cfg = load_config(base, task_overrides)
            except ConfigError as err:
                for problem in err.problems:
                    where = _where(problem, grid, common, runs, run_id)
                    failures.setdefault(f"{where}{problem}", []).append(task_id)
                continue
            points.append(SweepPoint(task_id=task_id, config_id=config_id, seed=seed,
                                     params=params, overrides=task_overrides,
                                     fingerprint=fingerprint(cfg)))
    for problem, task_ids in failures.items():
        count = f" (in {len(task_ids)} tasks)" if len(task_ids) > 1 else f" (task {task_ids[0]})"
        p.items.append(problem + count)
    return points


def _combos(grid: dict[str, list[Scalar]]) -> list[tuple[tuple[str, Scalar], ...]]:
    return [tuple(zip(grid, values)) for values in itertools.product(*grid.values())]


def _where(problem: str, grid: Mapping[str, object], common: Sequence[str],
           runs: Sequence[tuple[str | None, list[str]]], run_id: str | None) -> str:
    """Which part of the sweep file brought the key a run-config problem names."""
    key = problem.split(" = ", 1)[0]
    if key in grid:
        return "grid."
    if any(o.split("=", 1)[0] == key for o in common):
        return "overrides: "
    for i, (rid, overrides) in enumerate(runs):
        if rid == run_id and any(o.split("=", 1)[0] == key for o in overrides):
            return f"runs[{i}].overrides: "
    return "base: "


def fingerprint(cfg: RunConfig) -> str:
    """Identifies a run config's work (its resolved YAML, without ``out`` and ``name``)."""
    text = config_to_yaml(dataclasses.replace(cfg, out=None, name="run"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
