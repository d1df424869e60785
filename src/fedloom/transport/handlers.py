"""Event handlers registered per message type, on both sides (FederatedScope's style).

The server emits ``CONNECTED``, ``DISCONNECTED``, ``REFUSED``, ``REJECTED``, ``FIT_REPLY``,
``EVALUATE_REPLY``, ``PROPERTIES_REPLY``, ``FAILURE``, ``ROUND_START`` and ``ROUND_END``; a client
emits ``WELCOME``, ``PROPERTIES``, ``FIT``, ``EVALUATE``, ``RECONNECT``, ``EXIT``, ``REJECTED``
and, after answering, ``FIT_REPLY`` / ``EVALUATE_REPLY`` / ``FAILURE``. A handler gets one
:class:`Event`; an exception in a handler is logged and never stops the run. Server handlers
run on the server's network thread: keep them short and do not call the server from them.

Handlers can also act (FederatedScope's ``register_handlers``, FedML's
``register_message_receive_handler``): the one acting handler of a message type answers it. A
client answers a user message type the server sends (:meth:`GrpcFleet.request`) with its acting
handler's return value, which reaches the caller; an acting handler for ``properties``, ``fit``
or ``evaluate`` replaces the client's default answer (see :mod:`fedloom.runtime.acting`); on the
server, the acting handler of a reply's type is called with each reply. :meth:`Handlers.remove`
takes observers and acting handlers away again (the default answers come back).

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
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from fedloom.core.errors import ConfigError

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
    MESSAGE = "message"
    MESSAGE_REPLY = "message_reply"


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
Value = float | int | str | bool | torch.Tensor
SERVER = -1  # a Message's sender or receiver when it is the server
GET_PARAMETERS = "get_parameters"  # Flower's request for a client's model; answered by default
MSG_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")


def check_msg_type(msg_type: object) -> str:
    """A user message type: a letter, then up to 63 letters, digits or ``_.:-``."""
    if not isinstance(msg_type, str) or not MSG_TYPE.fullmatch(msg_type):
        raise ConfigError(f"message type {str(msg_type)[:80]!r}: use a letter, then up to 63 "
                          "letters, digits or _.:-")
    return msg_type


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """A message between the server and one client (FederatedScope's ``Message``): its type,
    who sent it to whom (client ids; :data:`SERVER` for the server), the round (``state``) and
    its content: named numbers, text, flags and tensors."""

    msg_type: str
    sender: int = SERVER
    receiver: int = SERVER
    state: int = 0
    content: Mapping[str, Value] = field(default_factory=dict)


Reply = Mapping[str, Value] | Message | None
Actor = Callable[[Message], Reply]


class Handlers:
    """Handlers by message type: observers (several per type, called in order, their return
    ignored) and at most one acting handler per type, whose return value is the answer."""

    def __init__(self) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._actors: dict[str, Actor] = {}

    def register(self, kind: MessageType | str, handler: Handler) -> Handler:
        """Call ``handler`` on every event of ``kind``; returns it (usable as a decorator
        factory through :meth:`on`)."""
        key = kind.value if isinstance(kind, MessageType) else check_msg_type(kind)
        self._handlers.setdefault(key, []).append(handler)
        return handler

    def on(self, kind: MessageType | str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""
        return lambda handler: self.register(kind, handler)

    def register_handlers(self, msg_type: MessageType | str, callback_func: Actor,
                          send_msg: object = None) -> None:
        """Make ``callback_func`` the acting handler of ``msg_type`` (FederatedScope's name),
        replacing the one before it or the default answer. ``send_msg`` (what the handler
        sends, in FederatedScope's bookkeeping) is accepted for its code and not used."""
        key = msg_type.value if isinstance(msg_type, MessageType) else check_msg_type(msg_type)
        self._actors[key] = callback_func

    def register_message_receive_handler(self, msg_type: MessageType | str,
                                         handler_callback_func: Actor) -> None:
        """FedML's name for :meth:`register_handlers`."""
        self.register_handlers(msg_type, handler_callback_func)

    def add_message_listener(self, msg_type: MessageType | str, listener: Handler) -> None:
        """An observer of ``msg_type`` (FedML's name for :meth:`register`)."""
        self.register(msg_type, listener)

    def remove(self, msg_type: MessageType | str, handler: object = None) -> bool:
        """Remove ``handler`` (an observer or the acting handler) from ``msg_type``, or every
        handler of it when None; True when something was removed."""
        key = str(msg_type.value if isinstance(msg_type, MessageType) else msg_type)
        observers = self._handlers.get(key, [])
        kept = [] if handler is None else [h for h in observers if h is not handler]
        removed = len(kept) != len(observers)
        self._handlers[key] = kept
        if key in self._actors and handler in (None, self._actors[key]):
            del self._actors[key]
            removed = True
        return removed

    remove_message_listener = remove  # FedML's name

    def actor(self, msg_type: str) -> Actor | None:
        """The acting handler of ``msg_type`` (None: the default answer, or none)."""
        return self._actors.get(msg_type)

    def act(self, message: Message) -> Message:
        """Answer ``message`` with its acting handler (the reply keeps the message type
        unless the handler returns a :class:`Message`). Raises ConfigError without one."""
        actor = self._actors.get(message.msg_type)
        if actor is None:
            raise ConfigError(f"no handler is registered for message type {message.msg_type!r}")
        reply = actor(message)
        if isinstance(reply, Message):
            return reply
        return Message(msg_type=message.msg_type, sender=message.receiver,
                       receiver=message.sender, state=message.state, content=dict(reply or {}))

    def emit(self, event: Event) -> None:
        """Call the observers of the event's kind (and of its ``detail["msg_type"]``, for
        user messages)."""
        handlers = list(self._handlers.get(event.kind.value, ()))
        msg_type = event.detail.get("msg_type")
        if isinstance(msg_type, str) and msg_type != event.kind.value:
            handlers += self._handlers.get(msg_type, ())
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # a user's handler must not take the server or client down
                log.exception("handler %r for %s failed", handler, event.kind.value)
