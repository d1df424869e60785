"""An averaging algorithm whose clients send their update through an uplink codec.

:class:`Compressed` wraps an algorithm whose uplink is a model (FedAvg and its family): the
client's end step (:attr:`~fedloom.algorithms.base.LocalSpec.finish`) encodes its update
``params - received`` and decodes it again, so the server aggregates exactly what it would
decode; the rows' ``bytes_up`` count the codec's size (:class:`CompressedSizes`). With error
feedback each client's residual (what its codec could not send) is kept in the run's
client-state store under ``compression_residual``, so it scales to many clients and survives
a checkpoint. A simulated client is stateless, so the residual rides in its downlink's and
result's extras: that is client-local state, never counted as traffic.

Example:
    >>> from fedloom.algorithms.client_store import MemoryStore
    >>> from fedloom.algorithms.fedavg import FedAvg
    >>> from fedloom.compression.config import CompressionConfig, Uplink
    >>> algo = compress(FedAvg(), CompressionConfig(uplink=Uplink.FP16), seed=0,
    ...                 store=MemoryStore())
    >>> algo.name, algo.sizes.uplink(ClientResult(round=1, client_id=0, params=torch.zeros(10),
    ...                                            num_examples=1, num_steps=1))
    ('fedavg', 20)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedloom.algorithms.base import Algorithm, Finish
from fedloom.algorithms.client_store import ClientStateStore
from fedloom.algorithms.wrapped import Wrapped
from fedloom.compression.codecs import Codec, with_feedback
from fedloom.compression.config import UPDATE_UPLINK, CompressionConfig, make_codec
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.rng import torch_generator
from fedloom.core.traffic import payload_bytes

RESIDUAL = "compression_residual"
PURPOSE = "compression"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Encode:
    """The client's end step: the inner one, then the update through the codec."""

    codec: Codec
    feedback: bool
    seed: int
    inner: Finish | None

    def __call__(self, result: ClientResult, downlink: Downlink) -> ClientResult:
        if self.inner is not None:
            result = self.inner(result, downlink)
        gen = torch_generator(self.seed, downlink.round, downlink.client_id, PURPOSE)
        update = (result.params - downlink.params).to(torch.float32)
        residual = downlink.extras.get(RESIDUAL) if self.feedback else None
        decoded, residual = with_feedback(self.codec, update, residual, gen)
        extras = dict(result.extras)
        if self.feedback:
            extras[RESIDUAL] = residual
        params = downlink.params + decoded.to(downlink.params.dtype)
        return dataclasses.replace(result, params=params, extras=extras)


@dataclass(frozen=True, slots=True)
class CompressedSizes:
    """Payload sizes with the update encoded by ``codec`` (residuals are client-local)."""

    codec: Codec

    def downlink(self, task: Downlink) -> int:
        return payload_bytes([task.params, *(v for k, v in task.extras.items() if k != RESIDUAL)])

    def uplink(self, result: ClientResult) -> int:
        return self.codec.nbytes(result.params.numel()) + payload_bytes(
            v for k, v in result.extras.items() if k != RESIDUAL)


class Compressed(Wrapped):
    """``inner`` with its clients' updates sent through ``codec`` (see the module docstring)."""

    def __init__(self, inner: Algorithm, codec: Codec, *, feedback: bool, seed: int,
                 store: ClientStateStore) -> None:
        super().__init__(inner, dataclasses.replace(inner.local, finish=_Encode(
            codec=codec, feedback=feedback, seed=seed, inner=inner.local.finish)))
        self.codec, self.feedback, self.store = codec, feedback, store
        self.reducible = False  # error feedback needs each client's residual, not a mean
        self.asynchronous = False
        self.sizes = CompressedSizes(codec)

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        tasks = self.inner.configure(round, state, cohort, client)
        if not self.feedback:
            return tasks
        out = []
        for task in tasks:
            residual = self.store.get(task.client_id, RESIDUAL)
            if residual is not None:
                task = dataclasses.replace(task, extras={**task.extras, RESIDUAL: residual})
            out.append(task)
        return out

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        plain = []
        for r in results:
            if RESIDUAL in r.extras:
                self.store.put(r.client_id, RESIDUAL, r.extras[RESIDUAL])
                r = dataclasses.replace(r, extras={k: v for k, v in r.extras.items()
                                                   if k != RESIDUAL})
            plain.append(r)
        return self.inner.aggregate(round, state, plain)


def compress(algorithm: Algorithm, cfg: CompressionConfig, *, seed: int,
             store: ClientStateStore) -> Compressed:
    """``algorithm`` with ``cfg``'s uplink codec; ConfigError for an algorithm whose uplink is
    not an update."""
    if algorithm.name not in UPDATE_UPLINK or algorithm.asynchronous:
        raise ConfigError(f"compression.uplink = {cfg.uplink.value!r}: {algorithm.name} does not "
                          f"send a model update the codec can compress (supported: "
                          f"{', '.join(sorted(UPDATE_UPLINK))})")
    return Compressed(algorithm, make_codec(cfg), feedback=cfg.feedback, seed=seed, store=store)


__all__ = ["RESIDUAL", "UPDATE_UPLINK", "Compressed", "CompressedSizes", "compress"]
