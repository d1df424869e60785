"""FedLab's ``NetworkManager`` template, shared by the server and client managers.

:meth:`NetworkManager.run` is ``setup()`` (join the network), ``main_loop()`` (the protocol),
then ``shutdown()`` (the orderly goodbye and leaving the network). Subclasses override any of
the three. If the main loop raises, the connection is closed at once without the goodbye, so
the peers' next receive fails fast instead of waiting for the timeout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from fedloom.runtime.fedlab.codes import MessageCode, MessageError, PayloadError
from fedloom.runtime.fedlab.network import DistNetwork

log = logging.getLogger(__name__)
T = TypeVar("T")


class NetworkManager:
    """Runs one rank's part of the protocol over a :class:`DistNetwork`."""

    def __init__(self, network: DistNetwork) -> None:
        self._network = network

    @property
    def network(self) -> DistNetwork:
        return self._network

    def run(self) -> None:
        """``setup()``, ``main_loop()``, ``shutdown()``."""
        self.setup()
        try:
            self.main_loop()
        except BaseException:
            log.error("rank %d: the main loop failed; closing the connection",
                      self._network.rank)
            self._network.close_network_connection()
            raise
        self.shutdown()

    def setup(self) -> None:
        """Join the network (overrides call this first)."""
        self._network.init_network_connection()

    def main_loop(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement main_loop()")

    def shutdown(self) -> None:
        """Leave the network (overrides call this last)."""
        self._network.close_network_connection()

    def receive(self, src: int | None, *expected: MessageCode
                ) -> tuple[int, MessageCode, list[torch.Tensor] | None]:
        """The next message from ``src``; a :class:`MessageError` unless its code is one of
        ``expected``."""
        sender, code, content = self._network.recv(src=src)
        if code not in expected:
            wanted = " or ".join(c.name for c in expected)
            raise MessageError(f"unexpected here; expected {wanted}", sender=sender, code=code,
                               receiver=self._network.rank)
        return sender, code, content


def handing_over(sender: int, code: MessageCode, receiver: int,
                 use: Callable[..., T], *args: object) -> T:
    """``use(*args)``, with a :class:`PayloadError` it raises turned into a
    :class:`MessageError` naming the message's sender and code."""
    try:
        return use(*args)
    except PayloadError as err:
        raise MessageError(str(err), sender=sender, code=code, receiver=receiver) from err


def single_int(content: Sequence[torch.Tensor] | None, what: str) -> int:
    """The one integer a message like SetUp carries."""
    if content is None or len(content) != 1 or content[0].numel() != 1:
        raise PayloadError(f"expected one tensor holding {what}, got "
                           f"{'nothing' if content is None else [list(t.shape) for t in content]}")
    value = content[0].item()
    if not float(value).is_integer():
        raise PayloadError(f"{what} = {value}: not an integer")
    return int(value)
