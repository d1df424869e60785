"""Checkpoints: everything a killed run needs to continue as if it had not stopped.

One safetensors file per run directory, replaced atomically (write to a temporary file, fsync,
rename, fsync the directory) after every ``every``-th completed round and after the last: the
global parameters, the algorithm's server-side tensors (``ServerState.extras``: server optimiser
moments, SCAFFOLD's ``c``, FedBuff's buffer), the contents of the client-state store (SCAFFOLD's
``c_i``, FedDyn's ``h_i``, Ditto's personal models), the round, the metric rows written so far
and the loop's own counters (simulated time, tasks handed out). Samplers and client batch orders
derive from (seed, round) and carry no other state, so a resumed synchronous run ends with the
identical model. Simulations and deployment servers write the same file.

A file that cannot be read, or whose keys, types or JSON are wrong, is refused with a
:class:`CheckpointError` naming the file and the key.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedloom.algorithms.client_store import ClientStateStore
from fedloom.core.errors import CheckpointError
from fedloom.core.packages import ServerState
from fedloom.runtime.sinks import Row, Sink

FILENAME = "checkpoint.safetensors"
FORMAT = "fedloom-checkpoint/1"
RETRY_SECONDS = (0.5, 2.0, 5.0)  # pauses before each new attempt at a failed write
COUNTERS = ("sim_time", "starts", "selector")  # the loops' numbers in 'info'
MAX_ROUND = 1 << 53

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A loop's state after a completed round (or async model version).

    Attributes:
        state: the server state.
        store: every ``(key, client_id) -> tensor`` of the client-state store.
        rows: the metric rows written so far.
        info: the loop's counters (``sim_time``, ``starts``), JSON numbers.
    """

    state: ServerState
    store: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    rows: tuple[Row, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


def store_contents(store: ClientStateStore | None) -> dict[tuple[str, int], torch.Tensor]:
    """Every (key, client id) -> tensor a client-state store holds."""
    return {} if store is None else {entry: value.clone() for entry, value in store.items()}


def restore_store(store: ClientStateStore | None,
                  contents: dict[tuple[str, int], torch.Tensor]) -> None:
    """Make ``store`` hold exactly ``contents`` (entries written after the checkpoint go)."""
    if store is None:
        return
    store.clear()
    for (key, cid), value in contents.items():
        store.put(cid, key, value)


def save_checkpoint(directory: Path, ckpt: Checkpoint, *,
                    retries: Sequence[float] = RETRY_SECONDS) -> Path:
    """Write ``directory/checkpoint.safetensors`` atomically; returns its path.

    A failed write (``OSError`` or safetensors' own error: a full disk, no file descriptor
    left) is logged and tried again after each of ``retries`` seconds; the last failure raises
    :class:`CheckpointError`. The previous checkpoint stays intact throughout."""
    for attempt, pause in enumerate((*retries, None), start=1):
        try:
            return _write(directory, ckpt)
        except CheckpointError as err:
            if pause is None:
                raise
            log.warning("%s (attempt %d of %d); trying again in %g s", err, attempt,
                        len(retries) + 1, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises


def _write(directory: Path, ckpt: Checkpoint) -> Path:
    tensors = {"params": ckpt.state.params.contiguous()}
    tensors.update({f"extras/{k}": v.contiguous() for k, v in ckpt.state.extras.items()})
    tensors.update({f"store/{key}/{cid}": v.contiguous() for (key, cid), v in ckpt.store.items()})
    meta = {"format": FORMAT, "round": str(ckpt.state.round),
            "rows": json.dumps(list(ckpt.rows)), "info": json.dumps(ckpt.info)}
    target = directory / FILENAME
    tmp = directory / f".{FILENAME}.tmp"
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"cannot write the checkpoint {target}: {err}") from None
    return target


def load_checkpoint(directory: Path) -> Checkpoint:
    """The checkpoint of run directory ``directory``, checked key by key."""
    path = directory / FILENAME
    if not path.exists():
        raise CheckpointError(f"{directory} holds no checkpoint ({FILENAME}): nothing to resume "
                              "(a run writes one after each completed round with "
                              "checkpoint.every=N; a server always does)")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} cannot be read: {err}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: key 'format' = {meta.get('format')!r}, expected "
                              f"{FORMAT!r}")
    if "params" not in tensors or tensors["params"].dim() != 1:
        raise CheckpointError(f"{path}: tensor 'params' is missing or not a flat vector")
    state = ServerState(round=_round(path, meta), params=tensors["params"], extras={
        k.removeprefix("extras/"): v for k, v in tensors.items() if k.startswith("extras/")})
    rows = _json(path, meta, "rows", list)
    if not all(isinstance(r, dict) for r in rows):
        raise CheckpointError(f"{path}: key 'rows' must be a JSON list of objects")
    info = _json(path, meta, "info", dict)
    for key in COUNTERS:
        value = info.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value >= 0):
            raise CheckpointError(f"{path}: key 'info' holds {key} = {value!r}, expected a "
                                  "number >= 0")
    return Checkpoint(state=state, store=_store(path, tensors), rows=tuple(rows), info=info)


def _round(path: Path, meta: dict[str, str]) -> int:
    text = meta.get("round")
    if text is None or not _is_count(text):
        raise CheckpointError(f"{path}: key 'round' = {text!r}, expected a round number")
    return int(text)


def _is_count(text: str) -> bool:
    """Plain ASCII digits of a number below 2^53 (``'²'.isdigit()`` is true, ``int`` fails)."""
    return text.isascii() and text.isdigit() and int(text) < MAX_ROUND


def _json(path: Path, meta: dict[str, str], key: str, kind: type[Any]) -> Any:
    try:
        value = json.loads(meta.get(key, "null"))
    except (ValueError, RecursionError) as err:  # nesting too deep is a RecursionError
        raise CheckpointError(f"{path}: key {key!r} is not valid JSON "
                              f"({type(err).__name__}: {err})") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: key {key!r} must be a JSON {kind.__name__}, "
                              f"got {type(value).__name__}")
    return value


def _store(path: Path, tensors: dict[str, torch.Tensor]) -> dict[tuple[str, int], torch.Tensor]:
    store: dict[tuple[str, int], torch.Tensor] = {}
    for name, value in tensors.items():
        if name.startswith("store/"):
            key, _, cid = name.removeprefix("store/").rpartition("/")
            if not key or not _is_count(cid):
                raise CheckpointError(f"{path}: tensor {name!r} is not 'store/KEY/CLIENT_ID'")
            store[(key, int(cid))] = value
    return store


def rows_up_to(rows: Sequence[Row], round: int) -> list[Row]:
    return [r for r in rows if isinstance(r.get("round"), int) and int(r["round"] or 0) <= round]


def check_resumable(ckpt: Checkpoint, expected: ServerState, where: Path) -> None:
    """Refuse a checkpoint that does not fit this run's model and algorithm, naming the key."""
    path = where / FILENAME
    got, want = ckpt.state, expected
    if got.params.shape != want.params.shape or got.params.dtype != want.params.dtype:
        raise CheckpointError(f"{path}: tensor 'params' has {got.params.numel()} values of "
                              f"{got.params.dtype}, this run's model {want.params.numel()} of "
                              f"{want.params.dtype}")
    if set(got.extras) != set(want.extras):
        raise CheckpointError(f"{path}: the algorithm's tensors are {sorted(got.extras)}, this "
                              f"run's algorithm keeps {sorted(want.extras)}")
    for key, value in want.extras.items():
        if got.extras[key].shape != value.shape:
            raise CheckpointError(f"{path}: tensor 'extras/{key}' has shape "
                                  f"{tuple(got.extras[key].shape)}, expected {tuple(value.shape)}")


class Checkpointer:
    """Saves a loop's :class:`Checkpoint` into ``directory`` every ``every`` rounds (and after
    the last), before the round's row reaches the sinks: a run killed between the two is
    resumed from the checkpoint, whose rows then replace ``metrics.jsonl``'s.
    """

    def __init__(self, directory: Path, *, every: int = 1) -> None:
        if every < 1:
            raise CheckpointError(f"checkpoint.every = {every}: must be >= 1")
        self.directory = directory
        self.every = every

    def due(self, round: int, last: int) -> bool:
        return round % self.every == 0 or round >= last


def save_if_due(checkpointer: Checkpointer | None, version: int, *, last: int,
                snapshot: Callable[[], Checkpoint]) -> None:
    """Write ``snapshot()`` when ``checkpointer`` is due at ``version``; a write that fails is
    logged and the run goes on (the next due round tries again)."""
    if checkpointer is None or not checkpointer.due(version, last):
        return
    try:
        save_checkpoint(checkpointer.directory, snapshot())
    except CheckpointError as err:
        log.error("round %s: %s; the run goes on, the last checkpoint written stays",
                  version, err)


def record(row: Row, *, last: int, rows: list[Row], sinks: Sequence[Sink],
           checkpointer: Checkpointer | None, snapshot: Callable[[], Checkpoint]) -> None:
    """A loop's completed round: keep its row, checkpoint when due, then tell the sinks."""
    rows.append(row)
    version = row.get("round")
    if isinstance(version, int):
        save_if_due(checkpointer, version, last=last, snapshot=snapshot)
    for sink in sinks:
        sink.log(row)
