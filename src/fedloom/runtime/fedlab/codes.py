"""FedLab's message codes, and the error a message that breaks the protocol raises.

The codes keep FedLab's names and values (``fedlab.utils.message_code``), so a program that
compares ``message_code == MessageCode.ParameterUpdate`` or logs ``.value`` reads the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

import torch

from fedloom.core.errors import TransportError


class MessageCode(IntEnum):
    """What a message between a FedLab-style server (rank 0) and its client processes means."""

    ParameterRequest = 0  # an active client asks for the current model
    GradientUpdate = 1
    ParameterUpdate = 2  # a model going down (with client ids) or a result going up
    EvaluateParams = 3
    Exit = 4  # the server stops a client; the client acknowledges with Exit
    SetUp = 5  # a client process reports how many clients it holds
    Activation = 6


def code_name(code: int | MessageCode | None) -> str:
    """``ParameterUpdate (2)`` for a known code, ``99 (not a MessageCode)`` otherwise."""
    if code is None:
        return "none"
    try:
        known = MessageCode(int(code))
    except ValueError:
        return f"{int(code)} (not a MessageCode; known: " \
               f"{', '.join(f'{c.name}={c.value}' for c in MessageCode)})"
    return f"{known.name} ({known.value})"


class MessageError(TransportError):
    """A message that is malformed or unexpected where it arrived.

    Attributes:
        sender: the rank it came from (None when unknown).
        code: its message code as sent (an int when it is not a :class:`MessageCode`).
    """

    def __init__(self, problem: str, *, sender: int | None, code: int | MessageCode | None,
                 receiver: int | None = None) -> None:
        self.sender, self.code, self.receiver = sender, code, receiver
        at = "" if receiver is None else f" at rank {receiver}"
        super().__init__(f"message from rank {sender} with code {code_name(code)}{at}: "
                         f"{problem}")


class PayloadError(ValueError):
    """A payload a handler or trainer cannot use; the manager that handed it over turns it
    into a :class:`MessageError` naming the sender and the code."""


def expect_tensors(payload: Sequence[torch.Tensor] | None, count: int,
                   what: str) -> list[torch.Tensor]:
    """``payload`` as a list of exactly ``count`` tensors (``what`` names them), or a
    :class:`PayloadError` saying what came instead."""
    got = [] if payload is None else list(payload)
    if len(got) != count or not all(isinstance(t, torch.Tensor) for t in got):
        kinds = ", ".join(f"{t.dtype}{list(t.shape)}" if isinstance(t, torch.Tensor)
                          else type(t).__name__ for t in got)
        raise PayloadError(f"expected {count} tensors {what}, got {len(got)} [{kinds}]")
    return got
