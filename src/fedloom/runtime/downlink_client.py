"""A deployed client's side of downlink compression: it rebuilds the model it is sent.

With ``compression.downlink`` a fit task carries the model encoded (half precision, or the
changes since the model this client last received: :mod:`fedloom.compression.downlink`).
:class:`ReceivingClient` wraps a client: it rebuilds the model from the task's wire form and
the model it kept for that client id (:func:`~fedloom.compression.downlink.receive`), keeps the
new one with its version, and hands the inner client a plain task. A task whose changes start
from a model it does not hold fails (the server then sends the whole model). The kept models
live in a client-state store: on disk under ``state_dir`` for a process that answers for many
client ids (``fedloom client`` with a config), in memory otherwise.

Example:
    >>> from fedloom.compression.downlink import VERSION
    >>> from fedloom.core.packages import ClientConfig
    >>> class Echo(Client):
    ...     def run_fit(self, downlink, layout):
    ...         return ClientResult(round=downlink.round, client_id=downlink.client_id,
    ...                             params=downlink.params, num_examples=1, num_steps=1)
    >>> client = ReceivingClient(Echo(), block=4)
    >>> down = Downlink(round=3, client_id=1, params=torch.ones(2), config=ClientConfig(),
    ...                 extras={VERSION: torch.tensor(3)})
    >>> client.run_fit(down, ParamLayout.from_module(torch.nn.Linear(1, 1))).params
    tensor([1., 1.])
    >>> client.kept(1)[0]
    3
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from fedloom.algorithms.client_store import ClientStateStore, MemoryStore
from fedloom.compression.downlink import DOWN, HALF, VERSION, receive
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink
from fedloom.runtime.clients import Client, WrappedClient

#: the store's keys (versions are float32 there: exact up to 2**24 rounds)
KEPT_MODEL, KEPT_VERSION = "downlink.model", "downlink.version"


class ReceivingClient(WrappedClient):
    """``inner`` given the model each task's wire form decodes to (see the module docstring).

    Args:
        block: ``compression.block`` of the run (the changes' values per norm).
        store: where each client id's last model and its version are kept (default: memory).
    """

    def __init__(self, inner: Client, *, block: int,
                 store: ClientStateStore | None = None) -> None:
        super().__init__(inner)
        self.block = block
        self.store: ClientStateStore = store or MemoryStore()
        self._lock = threading.Lock()

    def kept(self, client_id: int) -> tuple[int, torch.Tensor] | None:
        """The version and model last kept for ``client_id`` (None: none)."""
        version = self.store.get(client_id, KEPT_VERSION)
        model = self.store.get(client_id, KEPT_MODEL)
        if version is None or model is None or int(version[0]) < 0:
            return None
        return int(version[0]), model

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        cid, extras = downlink.client_id, downlink.extras
        with self._lock:
            params = receive(extras, downlink.params, self.kept(cid), block=self.block)
            if VERSION in extras:
                self.store.put(cid, KEPT_MODEL, params)
                self.store.put(cid, KEPT_VERSION, torch.tensor([float(int(extras[VERSION]))]))
            elif HALF not in extras:  # a whole model without a version: nothing to build on
                self.store.put(cid, KEPT_VERSION, torch.tensor([-1.0]))
        plain = {k: v for k, v in extras.items() if not k.startswith(DOWN)}
        return self.inner.run_fit(dataclasses.replace(downlink, params=params, extras=plain),
                                  layout)


__all__ = ["KEPT_MODEL", "KEPT_VERSION", "ReceivingClient"]
