"""OpenFed's ``Maintainer`` on fedloom's own server and client.

A :class:`Maintainer` drives one node of one federated group (a :class:`FederatedGroup` from
:func:`~fedloom.topology.graph.analysis`) over a ``state_dict``:

* an aggregator listens at its address with a fedloom gRPC server; ``step()`` sends its
  current model to the connected collaborators, takes their uploads (as many as
  :func:`count_step` says, within :func:`period_step`'s seconds), averages them weighted by each
  upload's ``meta["instances"]`` (example-weighted; 1 each when not given) into its
  ``state_dict`` and counts a new version;
* a collaborator connects as a fedloom client (its id: its OpenFed rank minus one);
  ``step(upload=False)`` waits for the aggregator's model and loads it into its ``state_dict``,
  ``package()`` takes the trained ``state_dict``, ``step(download=False)`` sends it.

``with maintainer:`` makes it the target of the per-step options (:func:`count_step`,
:func:`period_step`, :func:`device_alignment`), as in OpenFed. On a loopback address the
connection may go without TLS; anywhere else give ``tls``/``tokens`` (server) or
``tls``/``token`` (client), as for ``fedloom server``.

Example (OpenFed's aggregator, imports changed)::

    maintainer = Maintainer(group, network.state_dict(keep_vars=True))
    with maintainer:
        device_alignment()
        count_step(2)
    maintainer.step()
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedloom.algorithms.aggregate import weighted_mean
from fedloom.core.errors import ClientError, ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
from fedloom.runtime.client_loop import Backoff, ClientLoop
from fedloom.runtime.clients import Client
from fedloom.topology.graph import FederatedGroup, Role
from fedloom.transport.security import TlsFiles, TokenBook
from fedloom.transport.service import FederationServer

log = logging.getLogger(__name__)

LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
_current: list[Maintainer] = []


def _target(what: str) -> Maintainer:
    if not _current:
        raise ConfigError(f"{what}: call it inside `with maintainer:`")
    return _current[-1]


def count_step(counts: int) -> None:
    """An aggregator's ``step()`` ends after ``counts`` uploads (default: every
    collaborator of the group)."""
    _target("count_step").count = int(counts)


def period_step(period: float) -> None:
    """An aggregator's ``step()`` ends ``period`` seconds after it sent its model, with the
    uploads received by then."""
    _target("period_step").period = float(period)


def device_alignment() -> None:
    """Received tensors land on the device of the ``state_dict`` tensor they replace (fedloom
    always copies them there; kept for OpenFed code)."""
    _target("device_alignment").aligned = True


class _Handoff(Client):
    """The collaborator's side of the ClientLoop: fits wait for the user's upload."""

    def __init__(self) -> None:
        self.arrivals: queue.Queue[Downlink | None] = queue.Queue()
        self.replies: queue.Queue[ClientResult | None] = queue.Queue()

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        self.arrivals.put(downlink)
        reply = self.replies.get()
        if reply is None:
            raise ClientError("the collaborator stopped before it uploaded")
        return reply


class Maintainer:
    """One node's side of one federated group (see the module docstring).

    Args:
        fed_props: the group and this node's role in it (from ``analysis``).
        state_dict: the tensors exchanged (``network.state_dict(keep_vars=True)``); updated in
            place by downloads and aggregations.
        tls, tokens, token, insecure: security of the connection (see the module docstring).
    """

    def __init__(self, fed_props: FederatedGroup, state_dict: Mapping[str, torch.Tensor],
                 *, tls: TlsFiles | None = None, tokens: str | None = None,
                 token: str | None = None, insecure: bool | None = None,
                 timeout: float = 600.0) -> None:
        self.fed_props = fed_props
        self.state_dict = dict(state_dict)
        self.layout = ParamLayout.from_tensors(self.state_dict)
        self.version = 0
        self.meta: dict[str, Any] = {}
        self.data_list: list[dict[str, dict[str, torch.Tensor]]] = []
        self.meta_list: list[dict[str, Any]] = []
        self.count: int | None = None
        self.period: float | None = None
        self.aligned = False
        self.timeout = timeout
        self._packaged: torch.Tensor | None = None
        self._pending: Downlink | None = None
        address = fed_props.aggregator.host_port
        if address is None:
            raise ConfigError(f"group of {fed_props.aggregator.name!r}: its aggregator has no "
                              "tcp:// address to meet at")
        if insecure is None:
            insecure = tls is None and address.rsplit(":", 1)[0] in LOOPBACK
        self._members = sorted(n.name for n in fed_props.collaborators)
        self._close: Callable[[], object]
        if self.aggregator:
            self.server = FederationServer(
                address, layout=self.layout, tls=tls, insecure=insecure,
                tokens=TokenBook.from_file(tokens) if tokens else None,
                client_ids=range(len(self._members)), bulk_port=None).start()
            self.fleet = GrpcFleet(self.server)
            self._close = weakref.finalize(self, _close_server, self.fleet, self.server)
        else:
            self._handoff = _Handoff()
            self._loop = ClientLoop(address, client_id=fed_props.rank_of(self.nick_name) - 1,
                                    client=self._handoff, token=token, tls=tls,
                                    insecure=insecure, backoff=Backoff(give_up_after=timeout))
            self._thread = threading.Thread(target=self._serve, name="fedloom-collaborator",
                                            daemon=True)
            self._thread.start()
            self._close = weakref.finalize(self, _close_client, self._loop, self._handoff,
                                           self._thread)

    @property
    def role(self) -> Role:
        return self.fed_props.role

    @property
    def aggregator(self) -> bool:
        return self.role == Role.AGGREGATOR

    @property
    def collaborator(self) -> bool:
        return self.role == Role.COLLABORATOR

    @property
    def nick_name(self) -> str:
        return self.fed_props.nick_name

    def __enter__(self) -> Maintainer:
        _current.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _current.remove(self)

    def update_version(self, version: int | None = None) -> None:
        self.version = self.version + 1 if version is None else int(version)
        self.meta["version"] = self.version

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        self.state_dict.update(state_dict)

    def step(self, *, upload: bool = True, download: bool = True,
             meta: dict[str, Any] | None = None) -> bool:
        """An aggregator's round, or a collaborator's upload and/or download (see the module
        docstring); False when it could not be done (nobody answered, the group ended)."""
        if meta:
            self.meta.update(meta)
        if self.aggregator:
            return self._aggregate()
        ok = self._upload() if upload else True
        return (self._download() if download else True) and ok

    def package(self, optim_list: object = None, state_keys: object = None) -> None:
        """Take the ``state_dict`` as it is now for the next upload (fedloom exchanges the
        model; optimizer state stays with each node)."""
        self._packaged = self.layout.flatten(self.state_dict)

    def unpackage(self, optim_list: object = None, state_keys: object = None) -> None:
        """Load the last download into the ``state_dict`` (``step`` already does)."""
        if self._pending is not None:
            self._load(self._pending.params)

    def clear(self) -> None:
        self.data_list.clear()
        self.meta_list.clear()

    def manual_stop(self) -> None:
        """End the group: an aggregator tells its collaborators to exit."""
        self._close()

    killed = manual_stop

    # ---- the aggregator ------------------------------------------------------------------

    def _aggregate(self) -> bool:
        wanted = self.count or len(self._members)
        self.fleet.wait_for_clients(wanted, self.timeout)
        self.fleet.policy = RoundPolicy(round_timeout=self.period or self.timeout,
                                        close_at=wanted)
        params = self.layout.flatten(self.state_dict)
        tasks = [Downlink(round=self.version + 1, client_id=c, params=params,
                          config=ClientConfig()) for c in self.server.connected()]
        results = [o for o in self.fleet.fit(self.version + 1, tasks)
                   if isinstance(o, ClientResult)]
        if not results:
            return False
        for r in results:
            self.data_list.append({n: {"param": t} for n, t in
                                   self.layout.unflatten(r.params).items()})
            self.meta_list.append({"instances": r.num_examples, "version": r.round,
                                   "nick_name": self._members[r.client_id]})
        self._load(weighted_mean([r.params for r in results],
                                 [r.num_examples for r in results]))
        self.update_version()
        return True

    # ---- a collaborator ------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            self._loop.run()
        except Exception as err:  # the group is over for this node; step says False
            log.warning("collaborator %s: %s", self.nick_name, err)
        finally:
            self._handoff.arrivals.put(None)

    def _download(self) -> bool:
        downlink = self._handoff.arrivals.get()
        if downlink is None:
            self._handoff.arrivals.put(None)  # every later step says False too
            return False
        self._pending = downlink
        self._load(downlink.params)
        self.meta["version"] = self.version = downlink.round
        return True

    def _upload(self) -> bool:
        if self._pending is None:
            raise ConfigError(f"{self.nick_name}: step(download=False) uploads the answer to a "
                              "download: call step(upload=False) first")
        if self._packaged is None:
            self.package()
        assert self._packaged is not None
        self._handoff.replies.put(ClientResult(
            round=self._pending.round, client_id=self._pending.client_id,
            params=self._packaged, num_examples=int(self.meta.get("instances", 1)),
            num_steps=0))
        self._pending, self._packaged = None, None
        return True

    def _load(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            for name, value in self.layout.unflatten(flat).items():
                target = self.state_dict[name]
                target.copy_(value.to(target.device))


def _close_server(fleet: GrpcFleet, server: FederationServer) -> None:
    fleet.close()
    server.stop(grace=5.0)


def _close_client(loop: ClientLoop, handoff: _Handoff,
                  thread: threading.Thread) -> None:
    """Let the last upload reach the aggregator: wait (bounded) for its exit, then stop."""
    if thread is not threading.current_thread():  # the last reference may die in it
        thread.join(timeout=30.0)
    loop.stop()
    handoff.replies.put(None)


__all__ = ["Maintainer", "count_step", "device_alignment", "period_step"]
