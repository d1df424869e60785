"""The fleet seam: where clients run. Fleets change how clients run, never what they compute.

A :class:`Fleet` runs a round's tasks (``fit``); :class:`FleetBase` supplies the defaults of its
other members, so a fleet implements only what it does differently. A fleet that also takes
tasks one at a time and answers as they finish is an :class:`AsyncFleet` (the gRPC fleet on the
wall clock; :class:`fedloom.runtime.simulated_clock.SimulatedClock` over any fleet on a
simulated one): the one async loop drives either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from fedloom.core.metrics import Mean
from fedloom.core.packages import Downlink, Outcome
from fedloom.core.threads import torch_threads
from fedloom.core.traffic import Traffic


class Fleet(Protocol):
    """Runs a round's client tasks and returns one outcome per task, sorted by client id.

    Attributes:
        is_worker: this process serves another's fleet (a torchrun rank other than 0) and
            calls :meth:`serve` instead of running a loop.
    """

    is_worker: bool

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]: ...

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None:
        """Test metrics spread over the fleet's workers, or None: the server evaluates."""
        ...

    def client_losses(self, params: torch.Tensor,
                      client_ids: Sequence[int]) -> dict[int, Mean] | None:
        """Each client's training loss at ``params`` computed where the clients are, or None:
        the server computes them from its copy of the data (simulations)."""
        ...

    def serve(self) -> None:
        """On a worker process: answer the fleet's owner until it says stop."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class Metered(Protocol):
    """A fleet that measures the bytes its fit tasks really move (remote clients); the round
    loop reports those instead of the sizes a simulation computes."""

    def traffic(self) -> Traffic:
        """Running totals since the fleet started (a round's are the difference)."""
        ...


class FleetBase:
    """Defaults: no worker processes to serve, evaluation and client losses left to the
    server, nothing to close. ``evaluates_on_clients``: :meth:`evaluate` asks the clients
    (who are then busy while they train)."""

    is_worker: bool = False
    evaluates_on_clients: bool = False

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None:
        return None

    def client_losses(self, params: torch.Tensor,
                      client_ids: Sequence[int]) -> dict[int, Mean] | None:
        return None

    def serve(self) -> None:
        raise RuntimeError(f"{type(self).__name__} has no worker processes to serve")

    def start(self) -> None:
        """Begin, in the background, the start-up ``fit`` would otherwise do (worker
        processes); a run built from a config calls it once the fleet exists."""

    def close(self) -> None:
        pass


class WrappedFleet(FleetBase):
    """A fleet that changes how ``inner`` fits and leaves the rest to it (evaluation, client
    losses, worker ranks, closing): subclasses implement ``fit``."""

    def __init__(self, inner: Fleet) -> None:
        self.inner = inner
        self.is_worker = inner.is_worker
        self.evaluates_on_clients = isinstance(inner, FleetBase) and inner.evaluates_on_clients

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None:
        return self.inner.evaluate(params)

    def client_losses(self, params: torch.Tensor,
                      client_ids: Sequence[int]) -> dict[int, Mean] | None:
        return self.inner.client_losses(params, client_ids)

    def serve(self) -> None:
        self.inner.serve()

    def close(self) -> None:
        self.inner.close()


def meter_of(fleet: object) -> Metered | None:
    """Who measures ``fleet``'s traffic: ``fleet`` itself or, through its
    :class:`WrappedFleet` layers (decoding, attacks, secure aggregation), the first inner
    fleet that is :class:`Metered`; None when none is (a simulation counts its bytes)."""
    while not isinstance(fleet, Metered):
        if not isinstance(fleet, WrappedFleet):
            return None
        fleet = fleet.inner
    return fleet


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """A submitted task's outcome, as an async fleet delivers it.

    Attributes:
        task_id: what :meth:`AsyncFleet.submit` returned for the task.
        outcome: the client's result or failure.
        compute_seconds: wall seconds this process spent training to produce it (simulated
            clocks train lazily; 0 where clients train elsewhere).
    """

    task_id: int
    outcome: Outcome
    compute_seconds: float = 0.0


@runtime_checkable
class AsyncFleet(Protocol):
    """Clients that take one task at a time and answer when they finish, on some clock.

    Attributes:
        simulated: ``now()`` is simulated time (rows report it as ``sim_time``).
        is_worker: as :attr:`Fleet.is_worker`.
    """

    simulated: bool
    is_worker: bool

    def idle_clients(self) -> Sequence[int]:
        """Clients that could take a task now, sorted."""
        ...

    def submit(self, task: Downlink) -> int | None:
        """Start ``task``; its task id, or None when its client cannot take it."""
        ...

    def collect(self, timeout: float) -> Arrival | None:
        """The next finished task (None when none finished within ``timeout`` seconds)."""
        ...

    def forget(self, task_ids: Sequence[int]) -> None:
        """Give up tasks in flight: their clients are idle again, late answers are dropped."""
        ...

    def now(self) -> float:
        """Seconds on this fleet's clock."""
        ...

    def reachable(self) -> bool:
        """Whether any client can still answer (a deployment with nobody connected cannot)."""
        ...

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None: ...

    def serve(self) -> None: ...

    def close(self) -> None: ...


class Serving(Protocol):
    """A fleet a worker process serves (:meth:`Fleet.serve`) and then closes."""

    def serve(self) -> None: ...

    def close(self) -> None: ...


def serve_as_worker(fleet: Serving, threads: int | None) -> None:
    """Answer the owner of ``fleet`` until it says stop, under ``threads`` torch threads, then
    close it: the whole run of a process that serves another's fleet (a torchrun rank other
    than 0)."""
    with torch_threads(threads):
        try:
            fleet.serve()
        finally:
            fleet.close()
