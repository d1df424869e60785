"""The server side of uplink compression: encoded updates decoded where results arrive.

:class:`DecodingFleet` wraps any fleet (simulated or remote) of a compressed run: every
result that carries an encoded update (:data:`~fedloom.compression.uplink.ENCODED` extras) is
checked and decoded against the model its task sent
(:func:`~fedloom.compression.uplink.decode_update`), so the algorithm sees decoded parameters
and never the wire, and a simulation aggregates exactly what a deployment decodes. An encoding
that fails its check (another tensor than the codec makes, an index out of range or repeated, a
non-finite value) makes that client's result a :class:`~fedloom.core.packages.ClientFailure` at
stage ``validate`` naming why; the round goes on with the others. The bytes a round moved
are measured (or counted) below it: :func:`~fedloom.fleets.base.meter_of` looks through it.
"""

from __future__ import annotations

from collections.abc import Sequence

from fedloom.compression.codecs import Codec
from fedloom.compression.uplink import decode_update
from fedloom.core.errors import FedloomError
from fedloom.core.packages import ClientFailure, Downlink, Outcome
from fedloom.fleets.base import Fleet, WrappedFleet


class DecodingFleet(WrappedFleet):
    """``inner``'s results with their encoded updates decoded (see the module docstring);
    ``variate`` (extra, length) names a control variate whose encoded change is checked too."""

    def __init__(self, inner: Fleet, codec: Codec,
                 variate: tuple[str, int] | None = None) -> None:
        super().__init__(inner)
        self.codec, self.variate = codec, variate

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        received = {t.client_id: t for t in tasks}
        out: list[Outcome] = []
        for o in self.inner.fit(round, tasks):
            if isinstance(o, ClientFailure) or o.client_id not in received:
                out.append(o)
                continue
            try:
                out.append(decode_update(self.codec, received[o.client_id], o, self.variate))
            except (FedloomError, ValueError) as err:
                out.append(ClientFailure(round=o.round, client_id=o.client_id, stage="validate",
                                         message=f"encoded update rejected: {err}"))
        return out


__all__ = ["DecodingFleet"]
