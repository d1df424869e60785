"""A deployed client's side of downlink compression: it rebuilds the model it is sent.

With ``compression.downlink`` a fit task carries the model encoded (half precision, or the
changes since the model this client last received: :mod:`fedloom.compression.downlink`).
:class:`ReceivingClient` wraps a client: it rebuilds the model from the task's wire form and
the model it kept for that client id (:func:`~fedloom.compression.downlink.receive`), keeps the
new one with its version, and hands the inner client a plain task. A task whose changes start
from a model it does not hold fails (the server then sends the whole model).

Example:
    >>> from fedloom.compression.downlink import VERSION
    >>> class Echo(Client):
    ...     def run_fit(self, downlink, layout):
    ...         return ClientResult(round=downlink.round, client_id=downlink.client_id,
    ...                             params=downlink.params, num_examples=1, num_steps=1)
    >>> client = ReceivingClient(Echo(), block=4)
    >>> down = Downlink(round=3, client_id=1, params=torch.ones(2), config=ClientConfig(),
    ...                 extras={VERSION: torch.tensor(3)})
    >>> client.run_fit(down, ParamLayout.from_module(torch.nn.Linear(1, 1))).params
    tensor([1., 1.])
    >>> client.kept[1][0]
    3
"""

from __future__ import annotations

import dataclasses
import threading

import torch

from fedloom.compression.downlink import DOWN, HALF, VERSION, receive
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink
from fedloom.runtime.clients import Client, WrappedClient


class ReceivingClient(WrappedClient):
    """``inner`` given the model each task's wire form decodes to (see the module docstring).

    Args:
        block: ``compression.block`` of the run (the changes' values per norm).
    """

    def __init__(self, inner: Client, *, block: int) -> None:
        super().__init__(inner)
        self.block = block
        self.kept: dict[int, tuple[int, torch.Tensor]] = {}  # client id -> (version, model)
        self._lock = threading.Lock()

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        cid, extras = downlink.client_id, downlink.extras
        with self._lock:
            params = receive(extras, downlink.params, self.kept.get(cid), block=self.block)
            if VERSION in extras:
                self.kept[cid] = (int(extras[VERSION]), params)
            elif HALF not in extras:
                self.kept.pop(cid, None)
        plain = {k: v for k, v in extras.items() if not k.startswith(DOWN)}
        return self.inner.run_fit(dataclasses.replace(downlink, params=params, extras=plain),
                                  layout)


__all__ = ["ReceivingClient"]
