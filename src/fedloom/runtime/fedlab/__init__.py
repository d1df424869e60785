"""FedLab's cross-process runtime on fedloom: ``DistNetwork``, message codes, client and server
managers, handlers and a serial trainer, for programs written against FedLab.

Names (each module is imported on first use, so ``import fedloom.runtime.fedlab`` is cheap):

* :class:`MessageCode`, :class:`MessageError`, :class:`PayloadError` (``codes``)
* :class:`DistNetwork` (``network``): ``send(content, message_code, dst)``,
  ``recv(src) -> (sender_rank, message_code, content)`` over ``torch.distributed``
* :class:`ClientManager`, :class:`PassiveClientManager`, :class:`ActiveClientManager` and
  FedLab 1.x's :class:`ClientCommunicationTopology`, :class:`ClientSyncTop`,
  :class:`ClientActiveTopology` (``client``)
* :class:`ServerManager`, :class:`SynchronousServerManager`,
  :class:`AsynchronousServerManager` (``server``), :class:`Coordinator` (``coordinator``)
* :class:`FedAvgServerHandler`, :class:`FedAsyncServerHandler` (``handlers``) and
  :class:`SerialTrainer` (``trainer``), on fedloom's flat parameters, algorithms and local SGD

Example (``examples/fedlab_cross_process`` runs this on MNIST)::

    network = DistNetwork(address=("127.0.0.1", 3001), world_size=3, rank=0)
    handler = FedAvgServerHandler(model, global_round=3, sample_ratio=0.5)
    SynchronousServerManager(network, handler, mode="GLOBAL").run()
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedloom.runtime.fedlab.client import (
        ActiveClientManager,
        ClientActiveTopology,
        ClientCommunicationTopology,
        ClientManager,
        ClientSyncTop,
        PassiveClientManager,
        Trainer,
    )
    from fedloom.runtime.fedlab.codes import MessageCode, MessageError, PayloadError
    from fedloom.runtime.fedlab.coordinator import Coordinator
    from fedloom.runtime.fedlab.handlers import FedAsyncServerHandler, FedAvgServerHandler
    from fedloom.runtime.fedlab.manager import NetworkManager
    from fedloom.runtime.fedlab.network import DistNetwork
    from fedloom.runtime.fedlab.server import (
        AsynchronousServerManager,
        ServerHandler,
        ServerManager,
        SynchronousServerManager,
    )
    from fedloom.runtime.fedlab.trainer import SerialTrainer

_WHERE = {
    "MessageCode": "codes", "MessageError": "codes", "PayloadError": "codes",
    "DistNetwork": "network", "NetworkManager": "manager", "Coordinator": "coordinator",
    "ClientManager": "client", "PassiveClientManager": "client",
    "ActiveClientManager": "client", "ClientCommunicationTopology": "client",
    "ClientSyncTop": "client", "ClientActiveTopology": "client", "Trainer": "client",
    "ServerManager": "server", "SynchronousServerManager": "server",
    "AsynchronousServerManager": "server", "ServerHandler": "server",
    "FedAvgServerHandler": "handlers", "FedAsyncServerHandler": "handlers",
    "SerialTrainer": "trainer",
}

__all__ = [
    "MessageCode", "MessageError", "PayloadError", "DistNetwork", "NetworkManager",
    "Coordinator", "ClientManager", "PassiveClientManager", "ActiveClientManager",
    "ClientCommunicationTopology", "ClientSyncTop", "ClientActiveTopology", "Trainer",
    "ServerManager", "SynchronousServerManager", "AsynchronousServerManager", "ServerHandler",
    "FedAvgServerHandler", "FedAsyncServerHandler", "SerialTrainer",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fedloom.runtime.fedlab' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedloom.runtime.fedlab.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
