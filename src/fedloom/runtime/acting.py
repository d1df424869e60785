"""Acting handlers on a deployed client: a registered handler answers in place of the client.

:class:`ActingClient` wraps the client a :class:`~fedloom.runtime.client_loop.ClientLoop` runs.
Where an acting handler is registered (``handlers.register_handlers(kind, fn)``) for
``properties``, ``fit`` or ``evaluate``, it answers that instruction instead of the client's
default; removing it brings the default back. The handler gets a
:class:`~fedloom.transport.handlers.Message` and returns the reply's content:

* ``fit``: the message holds ``params`` (the flat global model), ``extras/<key>`` tensors and the
  round's config (``round``, ``client_id``, ``epochs``, ``lr``, ...); the reply holds ``params``
  (the new flat model), ``num_examples`` (>= 1), optionally ``num_steps``, and any other numbers
  as metrics averaged over the examples.
* ``evaluate``: the message holds ``params`` and the config; the reply holds ``num_examples``
  and the metrics (numbers, e.g. ``test_loss``).
* ``properties``: the message holds the request's values; the reply is the properties.

Example:
    >>> from fedloom.transport.handlers import Handlers
    >>> handlers = Handlers()
    >>> handlers.register_handlers("properties", lambda m: {"cores": 8})
    >>> ActingClient(Client(), handlers).get_properties({})
    {'cores': 8}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import torch

from fedloom.core.errors import ClientError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.runtime.clients import Client, task_config
from fedloom.transport.codec import Package
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import GET_PARAMETERS, SERVER, Handlers, Message, MessageType, Value
from fedloom.transport.messages import (
    EXTRAS,
    PARAMS,
    Scalar,
    message_from_package,
    message_to_package,
)

COUNTS = ("num_examples", "num_steps")


class ActingClient(Client):
    """``client``, with its answers replaced where ``handlers`` has an acting handler."""

    def __init__(self, client: Client, handlers: Handlers) -> None:
        self.client = client
        self.handlers = handlers

    def on_welcome(self, layout: ParamLayout, run_config: str) -> None:
        self.client.on_welcome(layout, run_config)

    def run_get_parameters(self, layout: ParamLayout,
                           config: dict[str, Scalar]) -> torch.Tensor:
        return self.client.run_get_parameters(layout, config)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        if self.handlers.actor(MessageType.PROPERTIES) is None:
            return self.client.get_properties(config)
        reply = self._act(MessageType.PROPERTIES, SERVER, 0, dict(config))
        return {k: _scalar(v, k) for k, v in reply.content.items()}

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        if self.handlers.actor(MessageType.FIT) is None:
            return self.client.run_fit(downlink, layout)
        content: dict[str, Value] = {PARAMS: downlink.params}
        content.update({EXTRAS + k: v for k, v in downlink.extras.items()})
        content.update(task_config(downlink.round, downlink.client_id, downlink.config))
        reply = self._act(MessageType.FIT, downlink.client_id, downlink.round, content).content
        params = reply.get(PARAMS)
        if not isinstance(params, torch.Tensor) or params.numel() != layout.size:
            raise ClientError(f"the fit handler's reply needs {PARAMS!r}: a tensor of "
                              f"{layout.size} values")
        n = _count(reply, "num_examples", 1)
        extras = {k[len(EXTRAS):]: v for k, v in reply.items()
                  if k.startswith(EXTRAS) and isinstance(v, torch.Tensor)}
        return ClientResult(round=downlink.round, client_id=downlink.client_id,
                            params=params.detach().reshape(-1).to(layout.dtype),
                            num_examples=n, num_steps=_count(reply, "num_steps", 0),
                            metrics=_metrics(reply, n), extras=extras)

    def run_evaluate(self, params: torch.Tensor, config: ClientConfig, layout: ParamLayout,
                     *, round: int, client_id: int) -> tuple[dict[str, Mean], int]:
        if self.handlers.actor(MessageType.EVALUATE) is None:
            return self.client.run_evaluate(params, config, layout, round=round,
                                            client_id=client_id)
        content: dict[str, Value] = {PARAMS: params, **task_config(round, client_id, config)}
        reply = self._act(MessageType.EVALUATE, client_id, round, content).content
        n = _count(reply, "num_examples", 1)
        return _metrics(reply, n), n

    def _act(self, kind: MessageType, client_id: int, round: int,
             content: dict[str, Value]) -> Message:
        return self.handlers.act(Message(msg_type=kind.value, sender=SERVER, receiver=client_id,
                                         state=round, content=content))


def message_reply(handlers: Handlers, client: Client, pkg: Package, client_id: int,
                  layout: ParamLayout) -> tuple[pb.Header, dict[str, torch.Tensor]]:
    """The reply to a user message (a MESSAGE package) from its acting handler; Flower's
    ``get_parameters`` has a default: the client's :meth:`Client.get_parameters`."""
    h = pkg.header
    message = message_from_package(pkg, sender=SERVER, receiver=client_id)
    if h.msg_type == GET_PARAMETERS and handlers.actor(GET_PARAMETERS) is None:
        config = {k: v for k, v in message.content.items() if not isinstance(v, torch.Tensor)}
        reply = Message(msg_type=GET_PARAMETERS, sender=client_id,
                        content={PARAMS: client.run_get_parameters(layout, config)})
    else:
        reply = handlers.act(message)
    return message_to_package(h.task_id, replace(reply, state=h.round), kind=pb.MESSAGE_REPLY,
                              client_id=h.client_id)


def _scalar(value: Value, key: str) -> Scalar:
    if isinstance(value, torch.Tensor):
        raise ClientError(f"the properties handler returned a tensor for {key!r}")
    return value


def _count(reply: Mapping[str, Value], key: str, least: int) -> int:
    value = reply.get(key, least)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < least \
            or int(value) != value:
        raise ClientError(f"the handler's reply: {key} = {value!r}, need an integer >= {least}")
    return int(value)


def _metrics(reply: Mapping[str, Value], n: int) -> dict[str, Mean]:
    return {k: Mean.of(float(v), n) for k, v in reply.items()
            if k not in COUNTS and not isinstance(v, bool | str | torch.Tensor)}


__all__ = ["ActingClient", "message_reply"]
