"""Server checkpoints: everything a killed server needs to continue as if it had not stopped.

One safetensors file per run directory, replaced atomically after every completed round (write
to a temporary file, fsync, rename, fsync the directory): the global parameters, the algorithm's
server-side tensors (``ServerState.extras``: server optimiser moments, SCAFFOLD's ``c``), the
contents of the client-state store (SCAFFOLD's ``c_i``, FedDyn's ``h_i``, Ditto's personal
models), FedBuff's buffer, the sampler's state where it has one, the round number and the metric
rows written so far. Samplers and client batch orders here derive from (seed, round) and carry no
other state, so with the same seed and clients a resumed run ends with the identical model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedloom.algorithms.client_store import ClientStateStore
from fedloom.core.errors import CheckpointError
from fedloom.core.packages import ServerState
from fedloom.runtime.sinks import Row

FILENAME = "checkpoint.safetensors"
FORMAT = "fedloom-checkpoint/1"


@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """A server's state after a completed round (or async model version)."""

    state: ServerState
    store: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    buffer: tuple[torch.Tensor, ...] = ()
    rows: tuple[Row, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)


def store_contents(store: ClientStateStore) -> dict[tuple[str, int], torch.Tensor]:
    """Every (key, client id) -> tensor a client-state store holds."""
    return {entry: value.clone() for entry, value in store.items()}


def restore_store(store: ClientStateStore, contents: dict[tuple[str, int], torch.Tensor]) -> None:
    """Make ``store`` hold exactly ``contents`` (entries written after the checkpoint go)."""
    store.clear()
    for (key, cid), value in contents.items():
        store.put(cid, key, value)


def save_checkpoint(directory: Path, ckpt: Checkpoint) -> Path:
    """Write ``directory/checkpoint.safetensors`` atomically; returns its path."""
    tensors = {"params": ckpt.state.params.contiguous()}
    tensors.update({f"extras/{k}": v.contiguous() for k, v in ckpt.state.extras.items()})
    tensors.update({f"store/{key}/{cid}": v.contiguous() for (key, cid), v in ckpt.store.items()})
    tensors.update({f"buffer/{i}": v.contiguous() for i, v in enumerate(ckpt.buffer)})
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
    except OSError as err:
        raise CheckpointError(f"cannot write the checkpoint {target}: {err}") from None
    return target


def load_checkpoint(directory: Path) -> Checkpoint:
    path = directory / FILENAME
    if not path.exists():
        raise CheckpointError(f"{directory} holds no checkpoint ({FILENAME}): nothing to resume "
                              "(the server writes one after each completed round)")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} cannot be read: {err}") from None
    if meta.get("format") != FORMAT or "params" not in tensors:
        raise CheckpointError(f"{path} is not a {FORMAT} file")
    extras = {k.removeprefix("extras/"): v for k, v in tensors.items() if k.startswith("extras/")}
    store: dict[tuple[str, int], torch.Tensor] = {}
    for name, value in tensors.items():
        if name.startswith("store/"):
            key, _, cid = name.removeprefix("store/").rpartition("/")
            store[(key, int(cid))] = value
    buffer = tuple(tensors[f"buffer/{i}"] for i in range(
        sum(1 for k in tensors if k.startswith("buffer/"))))
    return Checkpoint(state=ServerState(round=int(meta["round"]), params=tensors["params"],
                                        extras=extras),
                      store=store, buffer=buffer, rows=tuple(json.loads(meta.get("rows", "[]"))),
                      info=json.loads(meta.get("info", "{}")))


def rows_up_to(rows: Sequence[Row], round: int) -> list[Row]:
    return [r for r in rows if isinstance(r.get("round"), int) and int(r["round"] or 0) <= round]
