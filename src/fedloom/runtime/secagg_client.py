"""A deployed client's side of secure aggregation: acting handlers for the ``secagg.*``
message types the server's :class:`~fedloom.fleets.secagg_grpc.GrpcSecAggFleet` sends.

``secagg.train`` trains from the global model with the client's own :meth:`Client.run_fit`
and keeps the update (the reply says only that it trained); the four protocol stages are
answered by a :class:`~fedloom.secagg.ClientSession`, whose input is the update encoded once
the round's quantisation is known. Nothing individual ever leaves the client unmasked.

Example:
    >>> handlers = Handlers()
    >>> client = SecAggClient(FunctionClient(fit))  # doctest: +SKIP
    >>> client.install(handlers)  # doctest: +SKIP
    >>> start_client(address, client_id=3, client=client, handlers=handlers)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

import torch

from fedloom.core.errors import ClientError, ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.runtime.clients import Client, WrappedClient
from fedloom.secagg import PROTOCOL_STAGES, ClientSession, Stage, encode
from fedloom.transport.handlers import Handlers, Message, Reply

PREFIX = "secagg."
PARAMS = "params"


class SecAggClient(WrappedClient):
    """``client`` (its answers unchanged) that can also take part in secure aggregation."""

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.layout: ParamLayout | None = None
        self._rounds: dict[int, tuple[int, torch.Tensor, int, ClientSession]] = {}
        self._lock = threading.Lock()

    def install(self, handlers: Handlers) -> Handlers:
        """Register the ``secagg.*`` acting handlers on ``handlers``; returns it."""
        handlers.register_handlers(PREFIX + Stage.TRAIN.value, self._train)
        for stage in PROTOCOL_STAGES:
            handlers.register_handlers(PREFIX + stage.value, functools.partial(self._stage, stage))
        return handlers

    # -- the protocol --------------------------------------------------------------------------

    def _train(self, message: Message) -> Reply:
        layout = self.layout
        params = message.content.get(PARAMS)
        if layout is None or not isinstance(params, torch.Tensor) \
                or tuple(params.shape) != (layout.size,) or params.dtype != layout.dtype:
            raise ClientError("secagg.train needs the global model as the layout's flat "
                              "vector", stage="secagg/train")
        names = {f.name for f in dataclasses.fields(ClientConfig)}
        given: dict[str, Any] = {k: v for k, v in message.content.items()
                                 if k in names and isinstance(v, int | float)}
        try:
            config = ClientConfig(**given)
        except (ConfigError, TypeError) as err:
            raise ClientError(f"secagg.train: bad client config: {err}",
                              stage="secagg/train") from None
        cid = message.receiver
        result = self.inner.run_fit(Downlink(round=message.state, client_id=cid,
                                              params=params, config=config), layout)
        update = result.params.to(torch.float64) - params.to(torch.float64)
        with self._lock:
            self._rounds[cid] = (message.state, update, result.num_examples, ClientSession(cid))
        return {"trained": True}

    def _stage(self, stage: Stage, message: Message) -> Reply:
        with self._lock:
            state = self._rounds.get(message.receiver)
        if state is None or state[0] != message.state:
            raise ClientError(f"secagg.{stage} for round {message.state}, but this client "
                              "trained for no such round", stage=f"secagg/{stage}")
        _, update, num_examples, session = state
        reply = session.handle(stage, message.content)
        if stage == Stage.ADVERTISE_KEYS:
            if session.size != update.numel() + 1:
                raise ClientError(f"the server asks for {session.size - 1} values, the update "
                                  f"has {update.numel()}", stage=f"secagg/{stage}")
            session.set_input(encode(update, num_examples, session.quantizer))
        if stage == Stage.UNMASK:
            with self._lock:
                self._rounds.pop(message.receiver, None)
        return reply

    # -- the wrapped client: answers unchanged (the layout kept for the protocol) --------------

    def on_welcome(self, layout: ParamLayout, run_config: str) -> None:
        self.layout = layout
        super().on_welcome(layout, run_config)

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        return self.inner.run_fit(downlink, layout)


__all__ = ["SecAggClient"]
