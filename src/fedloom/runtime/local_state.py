"""A deployed client's own memory between rounds: extras it keeps rather than sends.

Some client halves carry state from one round to the next in their packages' extras (uplink
compression's error-feedback residual, :data:`~fedloom.compression.uplink.RESIDUAL`). In a
simulation the server's client-state store stands in for that memory; a deployed client keeps
it itself. :class:`StatefulClient` wraps a client: before a fit it puts the client id's kept
extras into the downlink, after it takes them out of the result (so they never travel) and
keeps them in a :class:`~fedloom.algorithms.client_store.ClientStateStore` (in memory, or
memory-mapped files for a process serving many client ids).

Example:
    >>> from fedloom.compression.uplink import RESIDUAL
    >>> class Keeps(Client):
    ...     def run_fit(self, downlink, layout):
    ...         seen = downlink.extras.get(RESIDUAL, torch.zeros(1))
    ...         return ClientResult(round=downlink.round, client_id=downlink.client_id,
    ...                             params=downlink.params, num_examples=1, num_steps=1,
    ...                             extras={RESIDUAL: seen + 1})
    >>> client = StatefulClient(Keeps(), keys=[RESIDUAL])
    >>> layout = ParamLayout.from_module(torch.nn.Linear(1, 1))
    >>> down = Downlink(round=1, client_id=7, params=torch.zeros(2), config=ClientConfig())
    >>> client.run_fit(down, layout).extras, client.run_fit(down, layout).extras
    ({}, {})
    >>> client.store.get(7, RESIDUAL)
    tensor([2.])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fedloom.algorithms.client_store import ClientStateStore, MemoryStore
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink
from fedloom.runtime.clients import Client, WrappedClient


class StatefulClient(WrappedClient):
    """``inner`` with the extras named ``keys`` kept here per client id (see the module
    docstring); everything else is ``inner``'s."""

    def __init__(self, inner: Client, *, keys: Iterable[str],
                 store: ClientStateStore | None = None) -> None:
        super().__init__(inner)
        self.keys = frozenset(keys)
        self.store: ClientStateStore = store or MemoryStore()

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        cid = downlink.client_id
        kept = {k: v for k in sorted(self.keys) if (v := self.store.get(cid, k)) is not None}
        sent = {k: v for k, v in downlink.extras.items() if k not in self.keys}
        result = self.inner.run_fit(dataclasses.replace(downlink, extras={**sent, **kept}),
                                    layout)
        for k in self.keys & set(result.extras):
            self.store.put(cid, k, result.extras[k])
        return dataclasses.replace(result, extras={k: v for k, v in result.extras.items()
                                                   if k not in self.keys})


__all__ = ["StatefulClient"]
