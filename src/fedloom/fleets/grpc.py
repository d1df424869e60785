"""The fleet of remote clients: a round's tasks go to connected clients over gRPC.

:class:`GrpcFleet` implements :class:`fedloom.fleets.Fleet`, so the server runs the very
:class:`~fedloom.runtime.loop.ServerLoop` and algorithm objects a simulation runs. ``fit`` sends
each task to its client (the round's model is cut into chunk frames once for the whole cohort)
and collects the answers until every task is answered, ``close_at`` results are in, or the round
deadline passes. A task whose client is not connected waits ``absent_timeout`` seconds for it; a
task whose client's connection goes mid-task (killed and restarted, or superseded by a new
connection for its id) is sent again when the id is back within ``rejoin_timeout`` (at most
``MAX_RESENDS`` times: the
same task gives the same result, so a round stays exact); late answers are discarded. Each missing
answer is a :class:`ClientFailure` value, and ``cohort.min_success`` decides whether the round
stands.

It is also an :class:`~fedloom.fleets.base.AsyncFleet` on the wall clock (``submit`` one task,
``collect`` answers as they come), which the async loop drives for FedAsync and FedBuff.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from fedloom.core.errors import ClientError, TransportError
from fedloom.core.metrics import Mean, combine
from fedloom.core.packages import ClientConfig, ClientFailure, Downlink, Outcome
from fedloom.core.traffic import Traffic
from fedloom.fleets.base import Arrival, FleetBase
from fedloom.transport.codec import ChunkCache
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import (
    GET_PARAMETERS,
    Event,
    Message,
    MessageType,
    Value,
    check_msg_type,
)
from fedloom.transport.messages import (
    PARAMS,
    Scalar,
    downlink_to_package,
    evaluate_to_package,
    message_to_package,
)
from fedloom.transport.service import FederationServer, Outgoing
from fedloom.transport.sessions import Answer, Connection, Task

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPolicy:
    """When a round closes.

    Attributes:
        round_timeout: seconds from the start of a round to its deadline.
        absent_timeout: seconds a task waits for its client to connect.
        close_at: close the round once this many results are in (None: wait for every task).
        evaluate_on_clients: ``evaluate`` asks every connected client for its metrics instead
            of leaving evaluation to the server.
        rejoin_timeout: seconds a task whose client's connection was lost mid-task waits for
            the client id to connect again (then it is sent again: a client killed and
            restarted, or superseded by a new connection, keeps its place in the round).
        max_examples: the most examples a client may claim for a fit result (an int for every
            client, or per client id, e.g. the counts the server's copy of the partition
            gives); a larger claim makes the result a failure (an update weighted by a forged
            count could outweigh every honest one). None: no bound.
    """

    round_timeout: float = 600.0
    absent_timeout: float = 30.0
    close_at: int | None = None
    evaluate_on_clients: bool = False
    max_examples: int | Mapping[int, int] | None = None
    rejoin_timeout: float = 5.0

    def example_bound(self, client_id: int) -> int | None:
        bound = self.max_examples
        if bound is None or isinstance(bound, int):
            return bound
        return bound.get(client_id, 0)


MAX_RESENDS = 3  # a task lost with its connection is sent again at most this often per round


def _lost(answer: Answer) -> bool:
    """The task failed because its client's connection went, not because of what it sent."""
    return answer.failure is not None and answer.failure.stage == "disconnect"


class GrpcFleet(FleetBase):
    """Runs a round's tasks on the clients connected to ``server``."""

    simulated = False  # as an async fleet, its clock is the wall clock

    def __init__(self, server: FederationServer, policy: RoundPolicy | None = None) -> None:
        self.server = server
        self.policy = policy or RoundPolicy()
        self.evaluates_on_clients = self.policy.evaluate_on_clients
        self._ids = itertools.count(1)
        self._busy: dict[int, int] = {}  # task id -> client id, tasks in flight (async mode)
        self._closed = False
        self._started = time.monotonic()

    def traffic(self) -> Traffic:
        """Fit packages sent and fit replies accepted, as measured on the streams."""
        return self.server.traffic.total()

    # -- connections -------------------------------------------------------------------------

    def wait_for_clients(self, count: int, timeout: float) -> None:
        """Block until ``count`` clients are connected; TransportError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.server.connected()) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"only {len(self.server.connected())} of {count} clients "
                                     f"connected within {timeout:g} s")
            self._next(min(left, 1.0))

    def _next(self, timeout: float) -> Answer | Connection | None:
        try:
            return self.server.inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    # -- sync rounds -----------------------------------------------------------------------

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        start = time.monotonic()
        deadline = start + self.policy.round_timeout
        absent_deadline = start + self.policy.absent_timeout
        self.server.handlers.emit(Event(kind=MessageType.ROUND_START, round=round,
                                        detail={"cohort": [t.client_id for t in tasks]}))
        cache = ChunkCache()
        waiting = {t.client_id: t for t in tasks}
        open_tasks: dict[int, Downlink] = {}
        outcomes: dict[int, Outcome] = {}
        resent: Counter[int] = Counter()
        rejoin: dict[int, tuple[float, ClientFailure]] = {}  # lost tasks waiting for their id
        while waiting or open_tasks:
            if waiting:
                open_tasks.update(self._send_fits(waiting, cache))
            now = time.monotonic()
            for cid in [c for c, (until, _) in rejoin.items() if now >= until and c in waiting]:
                del waiting[cid]
                outcomes[cid] = rejoin.pop(cid)[1]  # it did not come back: its loss stands
            if waiting and now >= absent_deadline:
                for cid, t in waiting.items():
                    outcomes[cid] = rejoin.pop(cid, (0.0, ClientFailure(
                        round=t.round, client_id=cid, stage="connect",
                        message=f"not connected within {self.policy.absent_timeout:g} s")))[1]
                waiting.clear()
            if now >= deadline or self._enough(outcomes):
                break
            until = min(deadline, absent_deadline, *(u for u, _ in rejoin.values())) \
                if waiting else deadline
            item = self._next(min(until - now, 1.0))
            if isinstance(item, Answer) and item.task_id in open_tasks:
                task = open_tasks.pop(item.task_id)
                if _lost(item) and resent[task.client_id] < MAX_RESENDS:
                    # the client's connection went (killed and back, or superseded by a new
                    # connection for its id): the same task again gives the same result
                    resent[task.client_id] += 1
                    waiting[task.client_id] = task
                    assert item.failure is not None
                    rejoin[task.client_id] = (time.monotonic() + self.policy.rejoin_timeout,
                                              item.failure)
                    continue
                rejoin.pop(task.client_id, None)
                outcomes[task.client_id] = self._bounded(self._outcome(item, task))
        self._close_round(round, open_tasks, outcomes, time.monotonic() >= deadline)
        self.server.handlers.emit(Event(kind=MessageType.ROUND_END, round=round, detail={
            "results": sum(not isinstance(o, ClientFailure) for o in outcomes.values())}))
        return [outcomes[cid] for cid in sorted(outcomes)]

    def _enough(self, outcomes: dict[int, Outcome]) -> bool:
        close_at = self.policy.close_at
        return close_at is not None and sum(
            not isinstance(o, ClientFailure) for o in outcomes.values()) >= close_at

    def _send_fits(self, waiting: dict[int, Downlink],
                   cache: ChunkCache) -> dict[int, Downlink]:
        """Send the waiting tasks whose clients are connected; returns them by task id."""
        connected = set(self.server.connected())
        ready = [t for cid, t in waiting.items() if cid in connected]
        sends = []
        for task in ready:
            task_id = next(self._ids)
            out = Outgoing(*downlink_to_package(task_id, task))
            sends.append((Task(task_id=task_id, kind=pb.FIT, round=task.round,
                               client_id=task.client_id), out, task))
        sent: dict[int, Downlink] = {}
        for (meta, _, task), ok in zip(sends, self.server.dispatch(
                [(meta, out) for meta, out, _ in sends], cache)):
            if ok:
                sent[meta.task_id] = task
                del waiting[task.client_id]
        return sent

    @staticmethod
    def _outcome(answer: Answer, task: Downlink) -> Outcome:
        if answer.result is not None:
            return answer.result
        if answer.failure is not None:
            return answer.failure
        return ClientFailure(round=task.round, client_id=task.client_id, stage="validate",
                             message="the answer to a fit task carried no result")

    def _bounded(self, outcome: Outcome) -> Outcome:
        """A result claiming more examples than the policy allows becomes a failure."""
        if isinstance(outcome, ClientFailure):
            return outcome
        bound = self.policy.example_bound(outcome.client_id)
        if bound is None or outcome.num_examples <= bound:
            return outcome
        return ClientFailure(round=outcome.round, client_id=outcome.client_id, stage="validate",
                             message=f"claims {outcome.num_examples} examples, at most {bound} "
                             "allowed (max_examples)")

    def _close_round(self, round: int, open_tasks: dict[int, Downlink],
                     outcomes: dict[int, Outcome], timed_out: bool) -> None:
        if not open_tasks:
            return
        why = (f"no result within the round deadline ({self.policy.round_timeout:g} s)"
               if timed_out else f"the round closed at {self.policy.close_at} results")
        for task in open_tasks.values():
            outcomes[task.client_id] = ClientFailure(round=round, client_id=task.client_id,
                                                     stage="deadline", message=why)
        self.server.expire(open_tasks)

    # -- async mode ------------------------------------------------------------------------

    def submit(self, task: Downlink) -> int | None:
        """Send one fit task now; its task id, or None when its client is not connected."""
        task_id = next(self._ids)
        out = Outgoing(*downlink_to_package(task_id, task))
        meta = Task(task_id=task_id, kind=pb.FIT, round=task.round, client_id=task.client_id)
        if not self.server.dispatch([(meta, out)])[0]:
            return None
        self._busy[task_id] = task.client_id
        return task_id

    def forget(self, task_ids: Sequence[int]) -> None:
        """Give up tasks in flight: their clients count as idle, their late results are dropped."""
        for task_id in task_ids:
            self._busy.pop(task_id, None)
        self.server.expire(task_ids)

    def idle_clients(self) -> list[int]:
        """Connected clients with no task in flight."""
        busy = set(self._busy.values())
        return [c for c in self.server.connected() if c not in busy]

    def collect(self, timeout: float) -> Arrival | None:
        """The next answer to a submitted task (None when none came within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            item = self._next(min(left, 1.0))
            if isinstance(item, Answer):
                client_id = self._busy.pop(item.task_id, None)
                if client_id is not None:
                    return Arrival(task_id=item.task_id, outcome=self._bounded(
                        item.result or item.failure or ClientFailure(
                            round=0, client_id=client_id, stage="validate",
                            message="the answer carried no result")))
        return None

    def now(self) -> float:
        return time.monotonic() - self._started

    def reachable(self) -> bool:
        return bool(self._busy) or bool(self.server.connected())

    # -- evaluation and properties ------------------------------------------------------------

    def evaluate(self, params: torch.Tensor) -> dict[str, Mean] | None:
        """None (the server evaluates) unless ``evaluate_on_clients``: then the example-weighted
        metrics every connected client reports on its own data."""
        if not self.policy.evaluate_on_clients:
            return None
        answers = self._ask(pb.EVALUATE, params)
        bags = [a.metrics for a in answers if a.metrics is not None]
        return combine(bags) if bags else None

    def client_losses(self, params: torch.Tensor,
                      client_ids: Sequence[int]) -> dict[int, Mean] | None:
        """Each connected client of ``client_ids`` evaluates ``params`` on its own data (its
        ``test_loss``); clients that do not answer are missing."""
        wanted = set(client_ids)
        answers = self._ask(pb.EVALUATE, params, [c for c in self.server.connected()
                                                  if c in wanted])
        return {a.client_id: a.metrics["test_loss"] for a in answers
                if a.metrics is not None and "test_loss" in a.metrics}

    def properties(self) -> dict[int, dict[str, Scalar]]:
        """Every connected client's properties (Flower's ``get_properties``)."""
        return {a.client_id: dict(a.values or {}) for a in self._ask(pb.PROPERTIES, None)}

    def request(self, msg_type: str, content: Mapping[str, Value] | None = None, *,
                client_ids: Sequence[int] | None = None,
                round: int = 0) -> dict[int, Message]:
        """Send a user message type to clients (default: every connected one) and return the
        replies of those whose acting handler answered within the round timeout. Each reply
        is also given to the server's acting handler of the reply's type, if one is
        registered (FederatedScope's server-side callbacks).

        Example: ``fleet.request("ask_for_join_in_info", {"num_sample": True})``.
        """
        message = Message(msg_type=check_msg_type(msg_type), state=round,
                          content=dict(content or {}))
        replies: dict[int, Message] = {}
        for answer in self._ask(pb.MESSAGE, None, client_ids, message=message):
            assert answer.message is not None
            replies[answer.client_id] = answer.message
            if self.server.handlers.actor(answer.message.msg_type) is not None:
                self.server.handlers.act(answer.message)
        return replies

    def request_each(self, msg_type: str, contents: Mapping[int, Mapping[str, Value]], *,
                     round: int = 0) -> dict[int, Message]:
        """:meth:`request` with a content of its own for each client (the keys of
        ``contents``), sent together; the replies of those that answered in time."""
        check_msg_type(msg_type)
        messages = {cid: Message(msg_type=msg_type, state=round, content=dict(content))
                    for cid, content in contents.items()}
        answers = self._ask(pb.MESSAGE, None, list(messages), message=messages)
        return {a.client_id: a.message for a in answers if a.message is not None}

    def initial_parameters(self, client_id: int) -> torch.Tensor:
        """The model client ``client_id`` starts from (Flower's ``get_parameters``, asked
        when the server has no initial parameters), checked against the layout."""
        reply = self.request(GET_PARAMETERS, client_ids=[client_id]).get(client_id)
        params = None if reply is None else reply.content.get(PARAMS)
        layout = self.server.layout
        if not isinstance(params, torch.Tensor) or tuple(params.shape) != (layout.size,) \
                or params.dtype != layout.dtype:
            raise ClientError(f"client {client_id} gave no initial parameters: need {PARAMS!r}, "
                              f"{layout.size} values of {layout.dtype}", client_id=client_id)
        return params

    def _ask(self, kind: pb.Kind, params: torch.Tensor | None,
             client_ids: Sequence[int] | None = None, *,
             message: Message | Mapping[int, Message] | None = None) -> list[Answer]:
        cache = ChunkCache()
        sends: list[tuple[Task, Outgoing | list[bytes]]] = []
        for cid in self.server.connected() if client_ids is None else client_ids:
            task_id = next(self._ids)
            tensors: dict[str, torch.Tensor] = {}
            if message is not None:
                one = message if isinstance(message, Message) else message[cid]
                header, tensors = message_to_package(task_id, one, client_id=cid)
            elif params is None:
                header = pb.Header(task_id=task_id, kind=kind, client_id=cid)
            else:
                header, tensors = evaluate_to_package(task_id, round=0, client_id=cid,
                                                      params=params, config=ClientConfig())
            sends.append((Task(task_id=task_id, kind=kind, round=header.round, client_id=cid),
                          Outgoing(header, tensors)))
        open_ids = {meta.task_id for (meta, _), ok in zip(sends, self.server.dispatch(sends, cache))
                    if ok}
        answers: list[Answer] = []
        deadline = time.monotonic() + self.policy.round_timeout
        while open_ids and (left := deadline - time.monotonic()) > 0:
            item = self._next(min(left, 1.0))
            if isinstance(item, Answer) and item.task_id in open_ids:
                open_ids.discard(item.task_id)
                if item.failure is None:
                    answers.append(item)
        self.server.expire(open_ids)
        return sorted(answers, key=lambda a: a.client_id)

    def close(self) -> None:
        """Tell every client the run is over."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(TransportError):  # the server stopped already
                self.server.finish("the run is over")
