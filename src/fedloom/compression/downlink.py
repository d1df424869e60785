"""Downlink compression: the model a client receives, as fewer bytes than float32.

``compression.downlink``:

- ``fp16``: the round's model in half precision (2 bytes a value). The client trains from the
  model it decodes, ``float32(float16(model))``, and the server knows that model exactly.
- ``delta``: the change since the model the client last received. A lossless float32 delta
  saves nothing, so the change is quantised (8-bit QSGD, 127 levels, a float32 norm per
  ``compression.block`` values: about a quarter of float32) and the server keeps a *broadcast
  chain*: ``B_r = B_(r-1) + decode(Q_r)`` with ``Q_r = QSGD(model_r - B_(r-1))``, computed
  once a round and sent to every client whose base is ``B_(r-1)``. A client reconstructs
  ``B_r`` bit for bit (the same float32 additions, in the same order), and because each change
  is taken against the chain, not the previous model, what one round's quantisation lost is
  in the next change (error feedback on the server). The server keeps the current ``B_r``
  and the last ``compression.history`` changes (bounded, whatever the number of clients) and
  each client's version (an int). A client ``k`` rounds behind gets the ``k`` changes when
  they are in the history and smaller than the model, else the whole float32 model ``B_r``;
  so does a client seen for the first time, one whose last task failed (it may or may not
  hold that round's model), and every client after a resume (the chain is not checkpointed).

In both the server trains on: each result's update ``params - B_r`` is applied to the
server's own float32 model (:meth:`Downlinked.aggregate`), so what the broadcast rounded away
never accumulates in the global model. Tasks carry their wire form in extras ``downlink/...``
(``downlink/codec/...`` present: ``params`` does not travel); rows count those bytes, and a
deployed client rebuilds the model with :func:`receive`.

Example:
    >>> from fedloom.algorithms.fedavg import FedAvg
    >>> algo = Downlinked(FedAvg(), DownlinkCoding.FP16, seed=0)
    >>> state = algo.init(torch.tensor([1.0, 1e-4]))
    >>> task, = algo.configure(1, state, [0], ClientConfig())
    >>> task.params.tolist(), sorted(task.extras)
    ([1.0, 0.00010001659393310547], ['downlink/codec/half'])
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence

import torch

from fedloom.algorithms.base import Algorithm
from fedloom.algorithms.wrapped import Wrapped
from fedloom.compression.codecs import QSGD
from fedloom.compression.config import DownlinkCoding
from fedloom.compression.payload import Encoded, decode_validated, int64_scalar, to_float16
from fedloom.core.errors import ClientError
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.rng import torch_generator

#: the prefix of every extra that is a task's downlink wire form
DOWN = "downlink/"
#: extras under this prefix encode the model: ``params`` does not travel with them
CODED = DOWN + "codec/"
HALF = CODED + "half"
VERSION = DOWN + "version"  # the chain version (round) the task's model is
BASE = DOWN + "base"  # the version the changes start from
PURPOSE = "downlink"


def delta_codec(block: int) -> QSGD:
    """The codec of one round's change of the broadcast model."""
    return QSGD(levels=127, block=block)


def _delta_tensors(deltas: Sequence[Encoded]) -> dict[str, torch.Tensor]:
    return {f"{CODED}{i}/{name}": t for i, enc in enumerate(deltas)
            for name, t in enc.tensors.items()}


class Downlinked(Wrapped):
    """``inner`` whose model goes to clients as ``coding`` says (see the module docstring)."""

    def __init__(self, inner: Algorithm, coding: DownlinkCoding, *, seed: int,
                 history: int = 3, block: int = 4096) -> None:
        super().__init__(inner)
        self.coding, self.seed, self.history = coding, seed, history
        self.codec = delta_codec(block)
        self._round = -1  # the round whose broadcast model is built
        self._model: torch.Tensor | None = None
        self._half: torch.Tensor | None = None
        self._chain: deque[tuple[int, Encoded]] = deque(maxlen=history)
        self._versions: dict[int, int] = {}

    def _broadcast(self, round: int, params: torch.Tensor) -> torch.Tensor:
        """``B_round``, built once a round (a retried round reuses it)."""
        if self._round == round and self._model is not None:
            return self._model
        if self.coding is DownlinkCoding.FP16:
            self._half = to_float16(params)
            self._model = self._half.to(params.dtype)
        elif self._model is None or self._model.shape != params.shape:
            self._model = params.clone()
        else:
            gen = torch_generator(self.seed, round, 0, PURPOSE)
            enc = self.codec.encode((params - self._model).to(torch.float32), gen)
            self._model = self._model + self.codec.decode(enc).to(params.dtype)
            self._chain.append((round, enc))
        self._round = round
        return self._model

    def _wire(self, client_id: int, round: int, size: int) -> dict[str, torch.Tensor]:
        """What travels with the model for one client (the chain's changes, or nothing but the
        version when the whole model is cheaper or the client's base is gone)."""
        if self.coding is DownlinkCoding.FP16:
            assert self._half is not None
            return {HALF: self._half}
        version = {VERSION: int64_scalar(round)}
        base = self._versions.pop(client_id, None)  # unknown until this task succeeds
        deltas = [enc for v, enc in self._chain if base is not None and v > base]
        oldest = self._chain[0][0] if self._chain else round + 1
        if base is None or not deltas or base + 1 < oldest or \
                sum(e.nbytes for e in deltas) + 8 >= 4 * size:
            return version
        return {**version, BASE: int64_scalar(base), **_delta_tensors(deltas)}

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        model = self._broadcast(round, state.params)
        out = []
        for task in self.inner.configure(round, state, cohort, client):
            wire = self._wire(task.client_id, round, model.numel())
            out.append(dataclasses.replace(task, params=model,
                                           extras={**task.extras, **wire}))
        return out

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        """Each update moved from the model the clients received onto the server's own."""
        shift = state.params - self._broadcast(round, state.params)
        moved = []
        for r in results:
            self._versions[r.client_id] = round
            moved.append(dataclasses.replace(r, params=r.params + shift.to(r.params.dtype)))
        return self.inner.aggregate(round, state, moved)


def receive(extras: Mapping[str, torch.Tensor], params: torch.Tensor,
            kept: tuple[int, torch.Tensor] | None, *, block: int) -> torch.Tensor:
    """The model a task's wire form decodes to, on a client holding ``kept`` (the version
    and model it last received; None: none). ``params`` is the float32 model when it
    travelled. ClientError when the changes start from a model this client does not hold."""
    if HALF in extras:
        return extras[HALF].to(torch.float32)
    if BASE not in extras:
        return params
    base = int(extras[BASE])
    if kept is None or kept[0] != base:
        have = "no model" if kept is None else f"version {kept[0]}"
        raise ClientError(f"the downlink sends changes from version {base}, this client holds "
                          f"{have}; the server sends the whole model next time")
    codec, model, i = delta_codec(block), kept[1], 0
    while any(k.startswith(f"{CODED}{i}/") for k in extras):
        prefix = f"{CODED}{i}/"
        enc = Encoded(tensors={k.removeprefix(prefix): v for k, v in extras.items()
                               if k.startswith(prefix)}, numel=model.numel())
        model = model + decode_validated(codec, enc).to(model.dtype)
        i += 1
    return model


__all__ = ["BASE", "CODED", "DOWN", "HALF", "VERSION", "Downlinked", "delta_codec",
           "receive"]
