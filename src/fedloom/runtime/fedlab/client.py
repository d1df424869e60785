"""FedLab's client managers: one process holding several clients, trained when the server says
(passive, synchronous FL) or whenever the process is idle (active, asynchronous FL).

A *trainer* is FedLab's contract (:class:`Trainer`): ``num_clients``, ``local_process(payload,
id_list)`` and ``uplink_package``, one package (a list of tensors) per client trained.
:class:`fedloom.runtime.fedlab.SerialTrainer` is one, on fedloom's local SGD.

The protocol, one loop for both kinds (``active`` chooses):

* setup: join the network, send ``SetUp`` with the number of clients held;
* loop: (active only: send ``ParameterRequest``) receive from rank 0; on ``ParameterUpdate``
  call :meth:`ClientManager.on_receive` (train) then :meth:`ClientManager.synchronize` (send
  each package as ``ParameterUpdate``); on ``Exit`` answer ``Exit`` and leave the loop;
  any other code is a :class:`MessageError` naming the sender and the code.

A passive process gets ``[client ids, *model]`` and trains those ids. An active one gets
``[*model]`` and trains its clients one at a time in turn (``trainer.client_ids`` when the
trainer has them, else ``0 .. num_clients - 1``).

FedLab 1.x names are here too: :class:`ClientCommunicationTopology` (built from
``(backend_handler, server_addr, world_size, rank, dist_backend)``), :class:`ClientSyncTop`
(passive) and :class:`ClientActiveTopology` (active), with the same overridable ``run()``,
``on_receive(sender, message_code, payload)`` and ``synchronize()`` on the same loop.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import ClassVar, Protocol

import torch

from fedloom.runtime.fedlab.codes import MessageCode, PayloadError
from fedloom.runtime.fedlab.manager import NetworkManager, handing_over
from fedloom.runtime.fedlab.network import DistNetwork

log = logging.getLogger(__name__)

Package = Sequence[torch.Tensor]


class Trainer(Protocol):
    """FedLab's (serial) client trainer, as the managers use it."""

    @property
    def num_clients(self) -> int: ...

    def local_process(self, payload: list[torch.Tensor], id_list: list[int]) -> object:
        """Train the clients of ``id_list`` from ``payload`` (the server's downlink)."""
        ...

    @property
    def uplink_package(self) -> Sequence[Package] | Package:
        """What to send after :meth:`local_process`: one package per client (a single
        package, a list of tensors, is accepted too)."""
        ...


def packages_of(uplink: Sequence[Package] | Package) -> list[list[torch.Tensor]]:
    """FedLab's two uplink shapes (one package, or a list of packages) as a list of packages."""
    items = list(uplink)
    if items and all(isinstance(t, torch.Tensor) for t in items):
        return [items]  # type: ignore[list-item]  # one package of tensors
    packages: list[list[torch.Tensor]] = []
    for i, package in enumerate(items):
        if isinstance(package, torch.Tensor) or not all(isinstance(t, torch.Tensor)
                                                        for t in package):
            raise TypeError(f"trainer.uplink_package[{i}] is not a list of tensors; give one "
                            "package (a list of tensors) or a list of packages")
        packages.append(list(package))
    return packages


class ClientManager(NetworkManager):
    """A client process: reports its clients, then trains what the server sends.

    Args:
        network: this process's end of the network (rank >= 1).
        trainer: the clients this process holds (:class:`Trainer`).
    """

    #: request the model when idle (asynchronous FL) instead of waiting to be sent it
    active: ClassVar[bool] = False

    def __init__(self, network: DistNetwork, trainer: Trainer) -> None:
        super().__init__(network)
        if network.rank == 0:
            raise ValueError(f"{type(self).__name__}: rank 0 is the server; client processes "
                             "have ranks 1 .. world_size - 1")
        self._trainer = trainer
        self._turn = 0
        #: the content of the server's Exit message (the final model, in FedLab's sync mode)
        self.final_payload: list[torch.Tensor] | None = None

    @property
    def trainer(self) -> Trainer:
        return self._trainer

    def setup(self) -> None:
        """Join the network and report how many clients this process holds."""
        super().setup()
        count = torch.tensor([int(self._trainer.num_clients)], dtype=torch.int64)
        self._network.send(content=count, message_code=MessageCode.SetUp, dst=0)

    def main_loop(self) -> None:
        """Until the server says Exit: (request,) receive, train, upload."""
        while True:
            if self.active:
                self.request()
            sender, code, payload = self.receive(0, MessageCode.ParameterUpdate,
                                                 MessageCode.Exit)
            if code == MessageCode.Exit:
                self.final_payload = payload
                self._network.send(message_code=MessageCode.Exit, dst=0)  # the goodbye
                return
            handing_over(sender, code, self._network.rank, self.on_receive, sender, code,
                         payload)
            self.synchronize()

    def request(self) -> None:
        """Ask the server for its current model (active managers)."""
        self._network.send(message_code=MessageCode.ParameterRequest, dst=0)

    def on_receive(self, sender: int, message_code: MessageCode,
                   payload: list[torch.Tensor] | None) -> None:
        """Train on a ParameterUpdate: the ids it names (passive), or the next client in turn
        (active). A :class:`PayloadError` raised here names the sender and code."""
        if payload is None:
            raise PayloadError("no tensors; expected the model" if self.active
                               else "no tensors; expected [client ids, *model]")
        if self.active:
            ids, model = [self.next_client()], list(payload)
        else:
            if len(payload) < 2 or payload[0].dim() != 1 or payload[0].is_floating_point():
                raise PayloadError(f"expected [client ids (1-d integers), *model], got "
                                   f"{[(str(t.dtype), list(t.shape)) for t in payload]}")
            ids, model = [int(i) for i in payload[0].tolist()], list(payload[1:])
        log.debug("rank %d trains clients %s", self._network.rank, ids)
        self._trainer.local_process(payload=model, id_list=ids)

    def next_client(self) -> int:
        """The client an active manager trains next: its clients in turn."""
        ids = list(getattr(self._trainer, "client_ids", range(self._trainer.num_clients)))
        client = int(ids[self._turn % len(ids)])
        self._turn += 1
        return client

    def synchronize(self) -> None:
        """Send each package of ``trainer.uplink_package`` to the server."""
        packages = packages_of(self._trainer.uplink_package)
        if not packages:
            raise ValueError(f"rank {self._network.rank}: trainer.uplink_package is empty after "
                             "local_process; the server waits for one package per client")
        for package in packages:
            self._network.send(content=package, message_code=MessageCode.ParameterUpdate,
                               dst=0)


class PassiveClientManager(ClientManager):
    """Synchronous FL: waits for the server's ``[client ids, *model]``, trains those ids."""

    active = False


class ActiveClientManager(ClientManager):
    """Asynchronous FL: asks for the model whenever idle, trains its next client, uploads."""

    active = True


class ClientCommunicationTopology(ClientManager):
    """FedLab 1.x's client base, built from its arguments; subclass it and override ``run()``,
    ``on_receive(sender, message_code, payload)`` or ``synchronize()``. Passive by default.

    Args:
        backend_handler: the trainer (:class:`Trainer`); also ``self._backend``.
        server_addr: ``(ip, port)`` of rank 0.
        world_size: the server and every client process.
        rank: this process (>= 1).
        dist_backend: ``"gloo"`` or ``"nccl"``.
    """

    def __init__(self, backend_handler: Trainer, server_addr: tuple[str, int | str],
                 world_size: int, rank: int, dist_backend: str = "gloo") -> None:
        super().__init__(DistNetwork(address=server_addr, world_size=world_size, rank=rank,
                                     dist_backend=dist_backend), backend_handler)
        self._backend = backend_handler
        self.server_addr, self.world_size, self.rank = server_addr, world_size, rank
        self.dist_backend = dist_backend


class ClientSyncTop(ClientCommunicationTopology):
    """FedLab 1.x's synchronous client (:class:`PassiveClientManager`'s loop)."""

    active = False


class ClientActiveTopology(ClientCommunicationTopology):
    """FedLab 1.x's active client (:class:`ActiveClientManager`'s loop)."""

    active = True
