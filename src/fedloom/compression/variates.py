"""SCAFFOLD's control variate through the uplink codec, beside the model update.

A SCAFFOLD client sends its new control variate ``c_i`` (as long as the trainable values)
besides its model. With ``compression.uplink`` it sends the change ``c_i - m`` through the same
codec, where ``m`` is the client's copy of what the server holds for it (its *mirror*); the
server adds the decoded change to its stored ``c_i`` and the client adds it to ``m``, so both
hold the same value. ``c_i - m`` is taken afresh each round, so what one round's codec lost
is in the next change: the mirror is this tensor's error-feedback residual, kept apart from
the model update's.

The mirror is client state (the client-state store stands in for a simulated client's
memory; a deployed client keeps it). Each task carries the round the server last stored this
client's ``c_i`` (``codec.c_version``, 8 bytes); a client whose mirror is of another
round (its last result was not used, or it lost its state) sends its change from zero instead
and says so (``codec.c_from`` = -1), so the two never drift apart. A reply whose change
starts from a round the server does not hold is refused with the reason.

Example:
    >>> from fedloom.compression.codecs import Float16
    >>> from fedloom.core.packages import ClientConfig
    >>> down = Downlink(round=2, client_id=0, params=torch.zeros(1), config=ClientConfig(),
    ...                 extras={C_VERSION: torch.tensor(0)})
    >>> out = encode_variate(Float16(), "c_i", {"c_i": torch.tensor([0.5, -1.0])}, down, None)
    >>> sorted(out), out[C_MIRROR].tolist()
    (['codec.c_from', 'codec.c_i/values', 'compression_c_mirror', \
'compression_c_mirror_version'], [0.5, -1.0])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedloom.algorithms.client_store import ClientStateStore
from fedloom.compression.payload import (
    Codec,
    Encoded,
    Invalid,
    InvalidPayload,
    checked_decode,
    int64_scalar,
)
from fedloom.core.packages import ClientResult, Downlink

C_MIRROR = "compression_c_mirror"
C_MIRROR_VERSION = "compression_c_mirror_version"
C_VERSION = "codec.c_version"  # downlink: the round the server stored this client's c_i
C_FROM = "codec.c_from"  # uplink: the round the change starts from, -1: from zero
#: client state of the mirror (never sent)
MIRROR_STATE = frozenset({C_MIRROR, C_MIRROR_VERSION})
#: algorithms whose result carries a tensor the server stores per client: (extra, store key)
STORED_EXTRAS: Mapping[str, tuple[str, str]] = {"scaffold": ("c_i", "c")}
PURPOSE = "compression_c"

__all__ = ["C_FROM", "C_MIRROR", "C_MIRROR_VERSION", "C_VERSION", "MIRROR_STATE",
           "STORED_EXTRAS", "check_variate", "decode_variate", "encode_variate", "prefix",
           "store_variate_version", "variate_version"]


def prefix(extra: str) -> str:
    """The extras carrying ``extra``'s encoded change (``codec.<extra>/<tensor name>``)."""
    return f"codec.{extra}/"


def encode_variate(codec: Codec, extra: str, extras: Mapping[str, torch.Tensor],
                   downlink: Downlink, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
    """The result's extras with ``extra`` replaced by its encoded change from the mirror, the
    round it starts from, and the new mirror (client state)."""
    out = {k: v for k, v in extras.items() if k != extra and k not in MIRROR_STATE}
    new = extras[extra].to(torch.float32)
    server = int(downlink.extras.get(C_VERSION, int64_scalar(0)))
    mirror = downlink.extras.get(C_MIRROR)
    mirror_round = int(downlink.extras.get(C_MIRROR_VERSION, torch.tensor(0.0)))
    if mirror is None and server == 0:  # nothing stored on either side yet: both zero
        mirror = torch.zeros_like(new)
    start = server if mirror is not None and mirror_round == server else -1
    base = mirror if start >= 0 and mirror is not None else torch.zeros_like(new)
    enc = codec.encode(new - base, gen)
    out.update({prefix(extra) + k: t for k, t in enc.tensors.items()})
    out[C_FROM] = int64_scalar(start)
    out[C_MIRROR] = base + codec.decode(enc)
    out[C_MIRROR_VERSION] = torch.tensor(float(downlink.round))
    return out


def variate_version(store: ClientStateStore, client_id: int) -> torch.Tensor:
    """The round the server last stored this client's variate (0: never), for its task."""
    kept = store.get(client_id, C_VERSION)
    return int64_scalar(0 if kept is None else int(kept.reshape(-1)[0]))


def store_variate_version(store: ClientStateStore, result: ClientResult) -> None:
    """Record that the server now stores ``result``'s variate (the algorithm has stored it:
    a version is never written for a variate that was not)."""
    store.put(result.client_id, C_VERSION, torch.tensor([float(result.round)]))


def _encoded(extra: str, result: ClientResult, numel: int) -> Encoded:
    start = prefix(extra)
    return Encoded(tensors={k.removeprefix(start): v for k, v in result.extras.items()
                            if k.startswith(start)}, numel=numel)


def check_variate(codec: Codec, extra: str, numel: int, task: Downlink,
                  result: ClientResult) -> None:
    """Raise :class:`~fedloom.compression.payload.InvalidPayload` unless the result's encoded
    change is one the codec could have made and starts from zero or the round its task
    named."""
    start = result.extras.get(C_FROM)
    if start is None or start.dtype != torch.int64 or start.numel() != 1:
        raise InvalidPayload(Invalid.NAMES, f"{C_FROM}: missing or not one int64")
    sent = int(task.extras.get(C_VERSION, int64_scalar(0)))
    if int(start) not in (-1, sent):
        raise InvalidPayload(Invalid.BAD_VALUE, f"{extra} change from round {int(start)}; "
                             f"the server holds round {sent}'s (or -1: from zero)")
    checked_decode(codec, _encoded(extra, result, numel), f"the {extra} change")


def decode_variate(codec: Codec, extra: str, key: str, numel: int, store: ClientStateStore,
                   result: ClientResult) -> ClientResult:
    """``result`` with ``extra`` rebuilt from its checked change (stored value or zero plus the
    decoded change); once the algorithm has stored it, :func:`store_variate_version`."""
    start = int(result.extras[C_FROM])
    stored = store.get(result.client_id, key)
    base = torch.zeros(numel) if start < 0 or stored is None else stored.to(torch.float32)
    value = base + codec.decode(_encoded(extra, result, numel))
    extras = {k: v for k, v in result.extras.items()
              if not k.startswith(prefix(extra)) and k != C_FROM}
    extras[extra] = value
    return ClientResult(round=result.round, client_id=result.client_id, params=result.params,
                        num_examples=result.num_examples, num_steps=result.num_steps,
                        metrics=result.metrics, extras=extras)
