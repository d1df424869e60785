"""What the distributed fleet's ranks send each other. Nothing is pickled between ranks.

A *body* is one uint8 tensor: 8 bytes giving the length of a JSON header, the JSON header (task
or result metadata and where each tensor lies), padding to 16 bytes, then the tensors' bytes,
each 16-byte aligned. Receivers read the tensors as views of the body, so a K x P gather or the
round's model broadcast is one collective on one buffer and the bits arrive unchanged whatever
the dtypes. Tensors shared by several tasks (the global model) are sent once.

Every control message starts with a fixed int64 *control* tensor ``[op, round, body_len, reuse]``
broadcast by rank 0; ``reuse`` says the tensors of the previous body still stand (the model just
evaluated is the model the next round trains from), so the body then holds only the JSON.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from enum import IntEnum
from typing import Any

import torch

from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientFailure, ClientResult, Downlink, Outcome

ALIGN = 16
CONTROL_SIZE = 4


class Op(IntEnum):
    STOP = 0
    FIT = 1  # train the share, gather every update to rank 0 (exact)
    REDUCE = 2  # train the share, reduce the example-weighted sum to rank 0
    EVALUATE = 3  # evaluate a slice of the test set, reduce the sums to rank 0


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def control(op: Op, round: int = 0, body_len: int = 0, reuse: bool = False) -> torch.Tensor:
    return torch.tensor([int(op), round, body_len, int(reuse)], dtype=torch.int64)


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"not a torch dtype: {name!r}")
    return dtype


class TensorTable:
    """Tensors to send, each once (by identity), with the index every reference uses."""

    def __init__(self) -> None:
        self.tensors: list[torch.Tensor] = []
        self._index: dict[int, int] = {}

    def add(self, tensor: torch.Tensor) -> int:
        key = id(tensor)
        if key not in self._index:
            self._index[key] = len(self.tensors)
            self.tensors.append(tensor)
        return self._index[key]


def pack(meta: object, tensors: Sequence[torch.Tensor],
         device: torch.device | str = "cpu") -> torch.Tensor:
    """One body holding ``meta`` (JSON) and the bytes of ``tensors``."""
    offsets: list[int] = []
    offset = 0
    for t in tensors:
        offsets.append(offset)
        offset = align(offset + t.numel() * t.element_size())
    slots = [{"offset": o, "dtype": str(t.dtype), "shape": list(t.shape)}
             for o, t in zip(offsets, tensors)]
    header = json.dumps({"meta": meta, "slots": slots}).encode()
    start = align(8 + len(header))
    body = torch.empty(start + offset, dtype=torch.uint8, device=device)
    prefix = len(header).to_bytes(8, "little") + header
    body[:len(prefix)].copy_(torch.frombuffer(bytearray(prefix), dtype=torch.uint8))
    for t, o in zip(tensors, offsets):
        lo = start + o
        nbytes = t.numel() * t.element_size()
        body[lo:lo + nbytes].view(t.dtype).copy_(t.detach().reshape(-1))
    return body


def unpack(body: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
    """The JSON metadata and the tensors (views of ``body``, on its device) of a body."""
    head = body[:8].cpu().numpy().tobytes()
    length = int.from_bytes(head, "little")
    decoded = json.loads(body[8:8 + length].cpu().numpy().tobytes())
    start = align(8 + length)
    tensors = []
    for slot in decoded["slots"]:
        dtype = _dtype(slot["dtype"])
        shape = tuple(slot["shape"])
        numel = 1
        for s in shape:
            numel *= s
        lo = start + slot["offset"]
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        tensors.append(body[lo:lo + nbytes].view(dtype).view(shape))
    return decoded["meta"], tensors


def encode_round(tasks: Sequence[Downlink], world: int
                 ) -> tuple[list[dict[str, Any]], TensorTable, list[TensorTable]]:
    """A cohort's task metadata, dealt over ``world`` ranks (``tasks`` sorted by client id; rank
    r trains tasks r, r + world, ...), and where each tensor goes: one that tasks of two or more
    ranks use (the global model) into the broadcast table; one that only rank r >= 1 uses (a
    client's own state, SCAFFOLD's c_i) into rank r's table, sent to it alone; one that only
    rank 0 uses nowhere (rank 0 trains from its own tensors). References: index i >= 0 into
    the broadcast tensors, -1 - j for the rank's own j-th tensor, None for rank 0's."""
    users: dict[int, set[int]] = {}
    for i, t in enumerate(tasks):
        for tensor in (t.params, *t.extras.values()):
            users.setdefault(id(tensor), set()).add(i % world)
    shared, private = TensorTable(), [TensorTable() for _ in range(world)]

    def ref(tensor: torch.Tensor, rank: int) -> int | None:
        if len(users[id(tensor)]) > 1:
            return shared.add(tensor)
        return None if rank == 0 else -1 - private[rank].add(tensor)

    meta = [{"client_id": t.client_id, "round": t.round, "config": dataclasses.asdict(t.config),
             "params": ref(t.params, i % world),
             "extras": {k: ref(v, i % world) for k, v in t.extras.items()}}
            for i, t in enumerate(tasks)]
    return meta, shared, private


def decode_share(round: int, meta: Sequence[dict[str, Any]], rank: int, world: int,
                 shared: Sequence[torch.Tensor], own: Sequence[torch.Tensor]) -> list[Downlink]:
    """Rank ``rank``'s tasks of a round :func:`encode_round` described."""
    def tensor(ref: int) -> torch.Tensor:
        return shared[ref] if ref >= 0 else own[-1 - ref]

    return [Downlink(round=int(m.get("round", round)), client_id=int(m["client_id"]),
                     params=tensor(m["params"]),
                     config=ClientConfig(**m["config"]),
                     extras={k: tensor(i) for k, i in m["extras"].items()})
            for m in meta[rank::world]]


def encode_outcomes(outcomes: Sequence[Outcome], table: TensorTable | None) -> list[dict[str, Any]]:
    """Outcome metadata; result tensors go into ``table`` (None: metadata only, for reduce)."""
    meta: list[dict[str, Any]] = []
    for o in outcomes:
        if isinstance(o, ClientFailure):
            meta.append({"kind": "failure", "round": o.round, "client_id": o.client_id,
                         "stage": o.stage, "message": o.message})
            continue
        meta.append({"kind": "result", "round": o.round, "client_id": o.client_id,
                     "num_examples": o.num_examples, "num_steps": o.num_steps,
                     "metrics": {k: [m.total, m.weight] for k, m in o.metrics.items()},
                     "params": None if table is None else table.add(o.params),
                     "extras": {} if table is None else
                     {k: table.add(v) for k, v in o.extras.items()}})
    return meta


#: the params of a result whose update was reduced on its rank rather than sent
NOT_SENT = torch.empty(0)


def decode_outcomes(meta: Sequence[dict[str, Any]],
                    tensors: Sequence[torch.Tensor]) -> list[Outcome]:
    out: list[Outcome] = []
    for m in meta:
        if m["kind"] == "failure":
            out.append(ClientFailure(round=m["round"], client_id=m["client_id"],
                                     stage=m["stage"], message=m["message"]))
            continue
        out.append(ClientResult(
            round=m["round"], client_id=m["client_id"],
            params=NOT_SENT if m["params"] is None else tensors[m["params"]],
            num_examples=m["num_examples"], num_steps=m["num_steps"],
            metrics={k: Mean(float(t), float(w)) for k, (t, w) in m["metrics"].items()},
            extras={k: tensors[i] for k, i in m["extras"].items()}))
    return out
