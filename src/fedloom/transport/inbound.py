"""What a client sends on its stream: frames assembled into packages, checked, matched to
their tasks and passed on as answers.

A package that fails a check is rejected with a named reason (logged, sent back, its task a
:class:`~fedloom.core.packages.ClientFailure`); a fatal rejection (broken framing) also closes
that client's stream. A package must be complete within its transfer deadline
(:meth:`Limits.package_seconds`), or it is dropped as ``too_slow`` with the stream. Client text
reaches the log escaped (:func:`~fedloom.transport.conduct.clean`), a few lines per client and
window; a client rejected more than ``max_violations`` times in a window loses its stream.
Nobody else's stream is touched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import queue
import time
from collections.abc import AsyncIterator, Callable

from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientFailure
from fedloom.core.traffic import Meter
from fedloom.transport.admission import Limits
from fedloom.transport.bulk_channel import BulkChannel
from fedloom.transport.codec import MessageRejected, Package, Rejection
from fedloom.transport.conduct import Conduct, Throttle, clean, held_back
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import Event, Handlers, MessageType
from fedloom.transport.messages import ReplySchema
from fedloom.transport.sessions import Answer, Connection, Session, Task, header_frame

log = logging.getLogger(__name__)


class Inbound:
    """Reads clients' streams for a server and puts answers and failures on ``inbox``.

    Args:
        layout: replies are checked against it.
        schema: what each fit reply must carry for the algorithm (None: parameters only).
        bulk: the server's bulk channel, once it has one.
        conduct: counts each client's violations (shared with the admission, which refuses a
            client over the limit until its window ends).
        traffic: counts the bytes of accepted fit replies (payload and framing).
    """

    def __init__(self, *, layout: ParamLayout, schema: ReplySchema | None, limits: Limits,
                 handlers: Handlers, inbox: queue.Queue[Answer | Connection],
                 bulk: Callable[[], BulkChannel | None], conduct: Conduct | None = None,
                 traffic: Meter | None = None) -> None:
        self.layout, self.schema, self.limits = layout, schema, limits
        self.traffic = traffic or Meter()
        self.handlers, self.inbox, self.bulk = handlers, inbox, bulk
        self.conduct = conduct or Conduct(max_violations=limits.max_violations,
                                          window=limits.violation_window)
        self.throttle = Throttle(burst=limits.log_burst, window=limits.violation_window)

    async def _receive_bulk(self, session: Session) -> None:
        """Read the pending package's payload from the bulk connection, then take it."""
        bulk = self.bulk()
        assert bulk is not None
        header = session.assembler.pending
        try:
            pkg = await bulk.receive(session)
        except MessageRejected as rejection:
            if rejection.fatal:
                raise
            self._reject(session, rejection, header)  # the package is lost, not the stream
            return
        self._take(session, pkg)

    def drop(self, session: Session, reason: str, stage: str = "disconnect") -> None:
        """Fail the session's open tasks and close it. ``stage`` says why: ``disconnect``, the
        connection went (its tasks may be sent again when the client is back); ``cut_off``,
        the server closed it for what the client did (they are not)."""
        for task in list(session.tasks.values()):
            self.fail(session, task, stage, reason)
        session.close(reason)

    def fail(self, session: Session, task: Task, stage: str, message: str) -> None:
        session.tasks.pop(task.task_id, None)
        failure = ClientFailure(round=task.round, client_id=task.client_id, stage=stage,
                                message=message)
        self.inbox.put(Answer(task_id=task.task_id, client_id=task.client_id, failure=failure))
        self.handlers.emit(Event(kind=MessageType.FAILURE, client_id=task.client_id,
                                 round=task.round, task_id=task.task_id,
                                 detail={"stage": stage, "message": message}))

    async def read(self, requests: AsyncIterator[bytes], session: Session) -> None:
        deadline = math.inf  # when the package in progress must be complete
        try:
            while session.close_reason is None:
                timeout = None  # between packages a client may be silent (it is training)
                if not session.assembler.busy:
                    deadline = math.inf
                else:
                    timeout = min(self.limits.idle_timeout,
                                  max(deadline - time.monotonic(), 0))
                try:
                    raw = await asyncio.wait_for(anext(requests), timeout)
                except StopAsyncIteration:
                    session.assembler.end()
                    break
                self._receive(session, raw)
                if session.assembler.busy and deadline == math.inf:
                    deadline = time.monotonic() + self.limits.package_seconds(
                        session.assembler.pending.payload_bytes)  # type: ignore[union-attr]
                if session.assembler.bulk_pending:
                    left = deadline - time.monotonic()
                    async with asyncio.timeout(None if left == math.inf else max(left, 0)):
                        await self._receive_bulk(session)
        except MessageRejected as rejection:
            self._reject(session, rejection, None)
        except TimeoutError:
            self._timed_out(session, deadline)
        except asyncio.CancelledError:
            pass
        except Exception as err:  # the stream broke (reset, oversized gRPC message, ...)
            log.info("client %d: stream ended: %s", session.client_id, clean(err))
        finally:
            session.close(session.close_reason or "disconnected")

    def _timed_out(self, session: Session, deadline: float) -> None:
        """A package stalled (idle) or missed its transfer deadline (too slow)."""
        header = session.assembler.pending
        if time.monotonic() < deadline - 0.05 or header is None:
            self.drop(session, f"idle for {self.limits.idle_timeout} s in the middle of a "
                               "package", stage="cut_off")
            return
        size = header.payload_bytes
        self._reject(session, MessageRejected(
            Rejection.TOO_SLOW, f"a package of {size} bytes was not complete after "
            f"{self.limits.package_seconds(size):.1f} s (limits: {self.limits.transfer_grace:g}"
            f" s + {self.limits.min_transfer_rate:g} bytes/s)", fatal=True), header)

    def _receive(self, session: Session, raw: bytes) -> None:
        session.received_bytes += len(raw)
        pending = session.assembler.pending
        pkg: Package | None = None
        try:
            pkg = session.frame(raw)
        except MessageRejected as rejection:
            self._reject(session, rejection, pending or session.assembler.pending)
            return
        if pkg is not None:
            self._take(session, pkg)

    def _take(self, session: Session, pkg: Package) -> None:
        """Match a complete package to its task and pass the answer on."""
        h, received = pkg.header, session.received_bytes
        session.received_bytes = 0  # the stream frames of this package (the payload if bulk)
        try:
            answer = session.answer(pkg, self.layout, self.schema)
            if answer is not None and answer.result is not None:
                self.traffic.received(payload=h.payload_bytes,
                                      total=received + (h.payload_bytes if h.bulk else 0))
        except MessageRejected as rejection:
            self._reject(session, rejection, pkg.header)
            return
        if answer is not None:
            if answer.failure is not None:  # the client's own words: escaped for every log
                answer = dataclasses.replace(answer, failure=dataclasses.replace(
                    answer.failure, message=clean(answer.failure.message)))
            self._accept(answer)

    def _accept(self, answer: Answer) -> None:
        self.inbox.put(answer)
        kind = (MessageType.FAILURE if answer.failure else MessageType.FIT_REPLY if answer.result
                else MessageType.EVALUATE_REPLY if answer.metrics is not None
                else MessageType.MESSAGE_REPLY if answer.message is not None
                else MessageType.PROPERTIES_REPLY)
        detail: dict[str, object] = {}
        if answer.message is not None:
            detail["msg_type"] = answer.message.msg_type
        if answer.result is not None:
            detail["num_examples"] = answer.result.num_examples
        if answer.failure is not None:
            detail.update(stage=answer.failure.stage, message=answer.failure.message)
        round_ = (answer.result.round if answer.result else answer.failure.round
                  if answer.failure else None)
        self.handlers.emit(Event(kind=kind, client_id=answer.client_id, round=round_,
                                 task_id=answer.task_id, detail=detail))

    def _reject(self, session: Session, rejection: MessageRejected,
                header: pb.Header | None) -> None:
        session.received_bytes = 0
        cid = session.client_id
        logged, held = self.throttle.allow((cid, rejection.reason))
        if logged:
            log.warning("client %d: %s%s", cid, clean(rejection), held_back(held))
        self.handlers.emit(Event(kind=MessageType.REJECTED, client_id=session.client_id,
                                 task_id=None if header is None else header.task_id,
                                 detail={"reason": rejection.reason.value,
                                         "detail": rejection.detail}))
        lost = list(session.tasks.values()) if rejection.fatal else [session.task_of(header)]
        for task in lost:
            if task is not None:
                self.fail(session, task, "validate", clean(rejection))
        notice = pb.Header(kind=pb.REJECTED, task_id=0 if header is None else header.task_id,
                           reason=str(rejection)[:4000])
        session.outbox.put_nowait([header_frame(notice)])
        over = self.conduct.violation(cid)
        if rejection.fatal:
            self.drop(session, clean(rejection))
        elif over:
            reason = (f"rejected ({Rejection.VIOLATIONS.value}): more than "
                      f"{self.limits.max_violations} rejected messages in "
                      f"{self.limits.violation_window:g} s")
            log.warning("client %d: %s; its stream is closed", cid, reason)
            self.drop(session, reason, stage="cut_off")
