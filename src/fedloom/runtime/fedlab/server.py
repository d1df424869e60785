"""FedLab's server managers on rank 0: synchronous rounds and asynchronous updates.

Both start the same way (:meth:`ServerManager.setup`): join the network, receive ``SetUp``
(how many clients it holds) from every client process in rank order, and build the
:class:`Coordinator` that numbers the clients; the handler's ``num_clients`` is then the total.

* :class:`SynchronousServerManager`, until ``handler.if_stop``: draw the round's clients
  (``handler.sample_clients()``), send each process ``[its client ids, *handler.downlink_package]``
  as ``ParameterUpdate``, then give every ``ParameterUpdate`` that arrives to
  ``handler.load(payload)`` until it returns True (the round is aggregated). At the end each
  process gets ``Exit`` (with its ids and the final model) and answers ``Exit``.
* :class:`AsynchronousServerManager`, until ``handler.if_stop``: answer each
  ``ParameterRequest`` with ``handler.downlink_package``; give each ``ParameterUpdate`` to
  ``handler.load`` as it arrives (FedLab queues it for an updater thread; here it is applied
  before the next message is read, so the order of updates is the order of arrival). At the
  end every process's next request is answered with ``Exit`` (an update still in flight is
  dropped) and the process answers ``Exit``.

A message with another code, or a payload the handler refuses with a
:class:`~fedloom.runtime.fedlab.codes.PayloadError`, stops the server with a
:class:`MessageError` naming the sender and the code.
"""

from __future__ import annotations

import logging
from typing import Protocol

import torch

from fedloom.runtime.fedlab.codes import MessageCode, PayloadError
from fedloom.runtime.fedlab.coordinator import Coordinator, id_mode
from fedloom.runtime.fedlab.manager import NetworkManager, handing_over, single_int
from fedloom.runtime.fedlab.network import DistNetwork

log = logging.getLogger(__name__)


class ServerHandler(Protocol):
    """What the managers use of a handler (FedLab's ``ServerHandler`` contract)."""

    num_clients: int

    @property
    def downlink_package(self) -> list[torch.Tensor]: ...

    @property
    def if_stop(self) -> bool: ...

    def load(self, payload: list[torch.Tensor]) -> bool | None:
        """Take one client's package; True when it completed a (synchronous) round."""
        ...


class SyncServerHandler(ServerHandler, Protocol):
    def sample_clients(self) -> list[int]:
        """The clients of the next round."""
        ...


class ServerManager(NetworkManager):
    """Rank 0: learns the clients of every process (see the module doc).

    Args:
        network: rank 0's end of the network.
        handler: the global model and how results update it.
        mode: ``"LOCAL"`` (each process is told its own client indices) or ``"GLOBAL"``
            (the ids across all processes).
    """

    def __init__(self, network: DistNetwork, handler: ServerHandler,
                 mode: str = "LOCAL") -> None:
        super().__init__(network)
        if network.rank != 0:
            raise ValueError(f"{type(self).__name__} runs on rank 0, not rank {network.rank}")
        self._handler = handler
        self.mode = id_mode(mode)
        self.coordinator: Coordinator | None = None

    @property
    def handler(self) -> ServerHandler:
        return self._handler

    def setup(self) -> None:
        """Join the network; receive every process's client count; build the coordinator."""
        super().setup()
        counts: dict[int, int] = {}
        for rank in range(1, self._network.world_size):
            sender, code, content = self.receive(rank, MessageCode.SetUp)
            counts[sender] = handing_over(sender, code, 0, _client_count, content)
        self.coordinator = Coordinator(counts, self.mode.value)
        self._handler.num_clients = self.coordinator.total
        log.info("server: %s", self.coordinator)

    def _coordinator(self) -> Coordinator:
        if self.coordinator is None:
            raise RuntimeError(f"{type(self).__name__}: setup() has not run")
        return self.coordinator

    def _load(self, sender: int, code: MessageCode,
              payload: list[torch.Tensor] | None) -> bool:
        return bool(handing_over(sender, code, 0, self._handler.load, payload or []))

    def _await_goodbyes(self, ranks: range) -> None:
        for rank in ranks:
            self.receive(rank, MessageCode.Exit)


def _client_count(content: list[torch.Tensor] | None) -> int:
    count = single_int(content, "the number of clients")
    if count < 1:
        raise PayloadError(f"the process holds {count} clients; it must hold at least one")
    return count


class SynchronousServerManager(ServerManager):
    """Synchronous FL: rounds of broadcast, collect, aggregate (see the module doc)."""

    def __init__(self, network: DistNetwork, handler: SyncServerHandler,
                 mode: str = "LOCAL") -> None:
        super().__init__(network, handler, mode)
        self._sync_handler = handler

    def main_loop(self) -> None:
        while not self._handler.if_stop:
            self.activate_clients()
            while True:
                sender, code, payload = self.receive(None, MessageCode.ParameterUpdate)
                if self._load(sender, code, payload):
                    break

    def activate_clients(self) -> None:
        """Send each process of the round's clients ``[its ids, *downlink]``."""
        clients = self._sync_handler.sample_clients()
        log.info("server: round clients %s", clients)
        for rank, ids in self._coordinator().map_id_list(clients).items():
            self._network.send(content=[torch.tensor(ids, dtype=torch.int64),
                                        *self._handler.downlink_package],
                               message_code=MessageCode.ParameterUpdate, dst=rank)

    def shutdown(self) -> None:
        self.shutdown_clients()
        super().shutdown()

    def shutdown_clients(self) -> None:
        """``Exit`` (with the final model) to every process, then wait for their ``Exit``."""
        coordinator = self._coordinator()
        for rank, ids in coordinator.map_id_list(range(coordinator.total)).items():
            self._network.send(content=[torch.tensor(ids, dtype=torch.int64),
                                        *self._handler.downlink_package],
                               message_code=MessageCode.Exit, dst=rank)
        self._await_goodbyes(range(1, self._network.world_size))


class AsynchronousServerManager(ServerManager):
    """Asynchronous FL: the model on request, an update on every arrival (module doc)."""

    def __init__(self, network: DistNetwork, handler: ServerHandler,
                 mode: str = "LOCAL") -> None:
        super().__init__(network, handler, mode)

    def main_loop(self) -> None:
        while not self._handler.if_stop:
            sender, code, payload = self.receive(None, MessageCode.ParameterRequest,
                                                 MessageCode.ParameterUpdate)
            if code == MessageCode.ParameterRequest:
                self._network.send(content=self._handler.downlink_package,
                                   message_code=MessageCode.ParameterUpdate, dst=sender)
            else:
                self._load(sender, code, payload)

    def shutdown(self) -> None:
        self.shutdown_clients()
        super().shutdown()

    def shutdown_clients(self) -> None:
        """Answer every process's next request with ``Exit``, then wait for their ``Exit``."""
        ranks = range(1, self._network.world_size)
        for rank in ranks:
            while True:
                _, code, _ = self.receive(rank, MessageCode.ParameterRequest,
                                          MessageCode.ParameterUpdate)
                if code == MessageCode.ParameterRequest:
                    break
                log.info("server: dropping an update from rank %d that came after the end",
                         rank)
            self._network.send(message_code=MessageCode.Exit, dst=rank)
        self._await_goodbyes(ranks)
