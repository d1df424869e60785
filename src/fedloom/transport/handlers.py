"""Event handlers registered per message type, on both sides (FederatedScope's style).

The server emits ``CONNECTED``, ``DISCONNECTED``, ``REFUSED``, ``REJECTED``, ``FIT_REPLY``,
``EVALUATE_REPLY``, ``PROPERTIES_REPLY``, ``FAILURE``, ``ROUND_START`` and ``ROUND_END``; a client
emits ``WELCOME``, ``PROPERTIES``, ``FIT``, ``EVALUATE``, ``RECONNECT``, ``EXIT``, ``REJECTED``
and, after answering, ``FIT_REPLY`` / ``EVALUATE_REPLY`` / ``FAILURE``. A handler gets one
:class:`Event`; an exception in a handler is logged and never stops the run. Server handlers
run on the server's network thread: keep them short and do not call the server from them.

Example:
    >>> handlers = Handlers()
    >>> seen = []
    >>> _ = handlers.register(MessageType.FIT, lambda e: seen.append(e.round))
    >>> handlers.emit(Event(kind=MessageType.FIT, client_id=3, round=1))
    >>> seen
    [1]
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

log = logging.getLogger(__name__)


class MessageType(StrEnum):
    HELLO = "hello"
    WELCOME = "welcome"
    PROPERTIES = "properties"
    FIT = "fit"
    EVALUATE = "evaluate"
    RECONNECT = "reconnect"
    EXIT = "exit"
    PROPERTIES_REPLY = "properties_reply"
    FIT_REPLY = "fit_reply"
    EVALUATE_REPLY = "evaluate_reply"
    FAILURE = "failure"
    REJECTED = "rejected"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    REFUSED = "refused"
    ROUND_START = "round_start"
    ROUND_END = "round_end"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One message or connection event. ``detail`` holds what the kind carries (a rejection's
    reason, a failure's message, a reply's ``num_examples``); never tensors or credentials."""

    kind: MessageType
    client_id: int | None = None
    round: int | None = None
    task_id: int | None = None
    detail: Mapping[str, object] = field(default_factory=dict)


Handler = Callable[[Event], None]


class Handlers:
    """Handlers by message type; several may be registered for one type (called in order)."""

    def __init__(self) -> None:
        self._handlers: dict[MessageType, list[Handler]] = {}

    def register(self, kind: MessageType | str, handler: Handler) -> Handler:
        """Call ``handler`` on every event of ``kind``; returns it (usable as a decorator
        factory through :meth:`on`)."""
        self._handlers.setdefault(MessageType(kind), []).append(handler)
        return handler

    def on(self, kind: MessageType | str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""
        return lambda handler: self.register(kind, handler)

    def emit(self, event: Event) -> None:
        for handler in self._handlers.get(event.kind, ()):
            try:
                handler(event)
            except Exception:  # a user's handler must not take the server or client down
                log.exception("handler %r for %s failed", handler, event.kind.value)
