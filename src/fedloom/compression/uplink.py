"""An averaging algorithm whose clients send their update through an uplink codec.

:class:`Compressed` wraps an algorithm whose uplink is a model (FedAvg and its family, and
SCAFFOLD, whose control variate goes through the codec too: :mod:`.variates`). The
client's end step (:func:`compressed_local`, run by simulated and deployed clients alike)
encodes its update ``params - received`` and puts the codec's tensors in the result's extras
under ``codec/<name>``: that is all a deployed client sends for its update (no ``params``).
The server side decodes them (:func:`decode_update`, run by
:class:`~fedloom.fleets.decoding.DecodingFleet` on every fleet, so a simulation aggregates
exactly what a deployment decodes) after the codec has checked them (``validate``). The
rows' ``bytes_up`` count the tensors a result carries (:class:`CompressedSizes`), which are the
bytes a deployed client's reply carries.

Error feedback: each client keeps what its codec could not send (``compression_residual``) and
adds it to its next update; a warm-started codec (PowerSGD) keeps its factors
(``compression_warm``) the same way. A deployed client keeps them itself
(:class:`~fedloom.runtime.local_state.StatefulClient`); a simulated client is stateless, so
the run's client-state store stands in for its memory and the residual rides in its downlink's
and result's extras, never counted as traffic (it scales to many clients and survives a
checkpoint).

DP composes as post-processing: the end step runs after the client's clipping and noise, so
the codec sees only the noised update and the accountant is unchanged (build the privacy
wrapper first, then :func:`compress`).

Example:
    >>> from fedloom.algorithms.client_store import MemoryStore
    >>> from fedloom.algorithms.fedavg import FedAvg
    >>> from fedloom.compression.config import CompressionConfig, Uplink
    >>> algo = compress(FedAvg(), CompressionConfig(uplink=Uplink.FP16), seed=0,
    ...                 store=MemoryStore())
    >>> algo.name, algo.sizes.uplink(ClientResult(
    ...     round=1, client_id=0, params=torch.zeros(10), num_examples=1, num_steps=1,
    ...     extras={ENCODED + "values": torch.zeros(10, dtype=torch.float16)}))
    ('fedavg', 20)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedloom.algorithms.base import Algorithm, Finish, LocalSpec, ResultNeeds
from fedloom.algorithms.client_store import ClientStateStore
from fedloom.algorithms.wrapped import Wrapped
from fedloom.compression.codecs import Codec, Encoded, WarmStarted, compress_update
from fedloom.compression.config import UPDATE_UPLINK, CompressionConfig, make_codec
from fedloom.compression.downlink import CODED
from fedloom.compression.payload import checked_decode
from fedloom.compression.variates import (
    C_FROM,
    C_VERSION,
    MIRROR_STATE,
    STORED_EXTRAS,
    check_variate,
    decode_variate,
    encode_variate,
    prefix,
    store_variate_version,
    variate_version,
)
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.core.rng import torch_generator
from fedloom.core.traffic import payload_bytes

RESIDUAL = "compression_residual"
#: a warm-started codec's state between rounds (PowerSGD's factors)
WARM = "compression_warm"
#: the prefix of the extras that carry an encoded update (``codec/<tensor name>``)
ENCODED = "codec/"
#: every extra the uplink codec adds to a package starts with this (any dtype on the wire)
CODEC_EXTRAS = "codec"
#: extras that are a client's own memory, never sent
CLIENT_LOCAL = frozenset({RESIDUAL, WARM, *MIRROR_STATE})
PURPOSE = "compression"
VARIATE = "compression_variate"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Encode:
    """The client's end step: the inner one (DP's clip and noise among them), then the update
    through the codec; the result carries the encoding and, for simulated fleets' buffers, the
    model it decodes to."""

    codec: Codec
    feedback: bool
    seed: int
    inner: Finish | None
    variate: str | None = None  # an extra sent as a change too (SCAFFOLD's c_i)

    def __call__(self, result: ClientResult, downlink: Downlink) -> ClientResult:
        if self.inner is not None:
            result = self.inner(result, downlink)
        gen = torch_generator(self.seed, downlink.round, downlink.client_id, PURPOSE)
        update = (result.params - downlink.params).to(torch.float32)
        step = compress_update(self.codec, update, residual=downlink.extras.get(RESIDUAL),
                               warm=downlink.extras.get(WARM), gen=gen, feedback=self.feedback)
        extras = {k: v for k, v in result.extras.items() if k not in CLIENT_LOCAL}
        extras.update({ENCODED + name: t for name, t in step.encoded.tensors.items()})
        if step.residual is not None:
            extras[RESIDUAL] = step.residual
        if step.warm is not None:
            extras[WARM] = step.warm
        if self.variate is not None and self.variate in extras:
            gen = torch_generator(self.seed, downlink.round, downlink.client_id, VARIATE)
            extras = encode_variate(self.codec, self.variate, extras, downlink, gen)
        params = downlink.params + step.decoded.to(downlink.params.dtype)
        return dataclasses.replace(result, params=params, extras=extras)


def compressed_local(cfg: CompressionConfig, local: LocalSpec, *, seed: int,
                     layout: ParamLayout | None = None, algorithm: str = "") -> LocalSpec:
    """``local`` whose uplink goes through ``cfg``'s codec (a deployed client calls this after
    :func:`fedloom.privacy.private.private_local`, so the codec sees the noised update);
    ``algorithm`` names one whose stored extra goes through it too (SCAFFOLD's c_i)."""
    if not cfg.enabled:
        return local
    variate = STORED_EXTRAS.get(algorithm, ("", ""))[0] or None
    return dataclasses.replace(local, finish=_Encode(
        codec=make_codec(cfg, layout), feedback=cfg.feedback, seed=seed, inner=local.finish,
        variate=variate))


def encoded_of(result: ClientResult, numel: int) -> Encoded | None:
    """The encoded update a result carries (None: it carries its update as ``params``)."""
    tensors = {k.removeprefix(ENCODED): v for k, v in result.extras.items()
               if k.startswith(ENCODED)}
    return Encoded(tensors=tensors, numel=numel) if tensors else None


def template(codec: Codec, numel: int) -> dict[str, torch.Tensor]:
    """The tensors ``codec`` makes for ``numel`` values (their names, dtypes and shapes)."""
    return codec.encode(torch.zeros(numel), torch.Generator().manual_seed(0)).tensors


def decode_update(codec: Codec, task: Downlink, result: ClientResult,
                  variate: tuple[str, int] | None = None) -> ClientResult:
    """``result`` with ``params = task.params + decode(update)`` when it carries an encoded
    update, checked first by the codec (:class:`~fedloom.compression.payload.InvalidPayload`
    with a named reason: wrong tensors, indices out of range or repeated, non-finite values);
    unchanged otherwise. ``variate`` (extra, length): an extra whose encoded change is checked
    too (decoded against the server's store by :meth:`Compressed.aggregate`)."""
    received = task.params
    enc = encoded_of(result, received.numel())
    if enc is None:
        return result
    update = checked_decode(codec, enc, "the update")
    if variate is not None:
        check_variate(codec, variate[0], variate[1], task, result)
    return dataclasses.replace(result, params=received + update.to(received.dtype))


@dataclass(frozen=True, slots=True)
class CompressedSizes:
    """Payload sizes as sent: a package's tensors but client-local state; a task's ``params``
    only when the model is not encoded (:mod:`fedloom.compression.downlink`), a result's only
    when its update is not."""

    def downlink(self, task: Downlink) -> int:
        extras = [v for k, v in task.extras.items() if k not in CLIENT_LOCAL]
        coded = any(k.startswith(CODED) for k in task.extras)
        return payload_bytes(extras if coded else [task.params, *extras])

    def uplink(self, result: ClientResult) -> int:
        extras = [v for k, v in result.extras.items() if k not in CLIENT_LOCAL]
        encoded = any(k.startswith(ENCODED) for k in result.extras)
        return payload_bytes(extras if encoded else [result.params, *extras])


def _plain(extras: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in extras.items() if k not in CLIENT_LOCAL and not k.startswith(ENCODED)}


class Compressed(Wrapped):
    """``inner`` with its clients' updates sent through ``codec`` (see the module docstring).

    Args:
        clients_keep_state: the clients keep their residuals themselves (a deployment); False:
            the store stands in for simulated clients' memory.
    """

    def __init__(self, inner: Algorithm, codec: Codec, *, feedback: bool, seed: int,
                 store: ClientStateStore, clients_keep_state: bool = False,
                 layout: ParamLayout | None = None) -> None:
        stored = STORED_EXTRAS.get(inner.name)
        if stored is not None and layout is None:
            raise ConfigError(f"compression of {inner.name}'s {stored[0]} needs the model's "
                              "layout (its length)")
        #: the extra sent as a change against the store, its store key and length
        self.variate = None if stored is None or layout is None else (
            stored[0], stored[1], inner.result_needs(layout).extras[stored[0]])
        super().__init__(inner, dataclasses.replace(inner.local, finish=_Encode(
            codec=codec, feedback=feedback, seed=seed, inner=inner.local.finish,
            variate=None if stored is None else stored[0])))
        self.codec, self.feedback = codec, feedback
        self.store: ClientStateStore = store
        self.clients_keep_state = clients_keep_state
        # client state (a residual, warm factors) is per result; otherwise the mean will do
        self.reducible = inner.reducible and not feedback and not isinstance(codec, WarmStarted)
        self.asynchronous = False
        self.sizes = CompressedSizes()

    def result_needs(self, layout: ParamLayout) -> ResultNeeds:
        """The inner algorithm's extras and the codec's tensors (what a reply must carry)."""
        needs = self.inner.result_needs(layout)
        extras = dict(needs.extras)
        extras.update({ENCODED + k: t.numel()
                       for k, t in template(self.codec, layout.size).items()})
        if self.variate is not None:
            name, _, size = self.variate
            del extras[name]
            extras.update({prefix(name) + k: t.numel()
                           for k, t in template(self.codec, size).items()})
            extras[C_FROM] = 1
        return dataclasses.replace(needs, extras=extras)

    def configure(self, round: int, state: ServerState, cohort: Sequence[int],
                  client: ClientConfig) -> list[Downlink]:
        tasks = self.inner.configure(round, state, cohort, client)
        if self.variate is not None:  # the round each client's c_i was stored
            tasks = [dataclasses.replace(t, extras={
                **t.extras, C_VERSION: variate_version(self.store, t.client_id)}) for t in tasks]
        if self.clients_keep_state:
            return tasks
        out = []
        for task in tasks:
            kept = {k: v for k in sorted(CLIENT_LOCAL)
                    if (v := self.store.get(task.client_id, k)) is not None}
            out.append(dataclasses.replace(task, extras={**task.extras, **kept}) if kept
                       else task)
        return out

    def aggregate(self, round: int, state: ServerState,
                  results: Sequence[ClientResult]) -> ServerState:
        plain, variates = [], []
        for r in results:
            for key in CLIENT_LOCAL & set(r.extras):
                if not self.clients_keep_state:
                    self.store.put(r.client_id, key, r.extras[key])
            if self.variate is not None and C_FROM in r.extras:
                name, key, size = self.variate
                r = decode_variate(self.codec, name, key, size, self.store, r)
                variates.append(r)
            plain.append(dataclasses.replace(r, extras=_plain(r.extras)))
        new = self.inner.aggregate(round, state, plain)  # stores the variates (SCAFFOLD's c_i)
        for r in variates:  # then their versions: a failure above leaves no version behind
            store_variate_version(self.store, r)
        return new


def compress(algorithm: Algorithm, cfg: CompressionConfig, *, seed: int,
             store: ClientStateStore, clients_keep_state: bool = False,
             layout: ParamLayout | None = None) -> Compressed:
    """``algorithm`` with ``cfg``'s uplink codec (PowerSGD's needs the model's ``layout``);
    ConfigError for an algorithm whose uplink is not an update."""
    if (algorithm.name not in UPDATE_UPLINK and algorithm.name not in STORED_EXTRAS) \
            or algorithm.asynchronous:
        raise ConfigError(f"compression.uplink = {cfg.uplink.value!r}: {algorithm.name} does not "
                          f"send a model update the codec can compress (supported: "
                          f"{', '.join(sorted(UPDATE_UPLINK))})")
    return Compressed(algorithm, make_codec(cfg, layout), feedback=cfg.feedback, seed=seed,
                      store=store, clients_keep_state=clients_keep_state, layout=layout)


__all__ = ["CLIENT_LOCAL", "CODEC_EXTRAS", "ENCODED", "RESIDUAL", "UPDATE_UPLINK",
           "Compressed",
           "CompressedSizes", "WARM", "compress", "compressed_local", "decode_update",
           "encoded_of", "template"]
