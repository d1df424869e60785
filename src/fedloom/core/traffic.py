"""Bytes a round moves: the payload (tensor bytes) down to the cohort and up from it.

``bytes_down`` / ``bytes_up`` count the tensors' bytes a package carries (the model, the extras,
a compressed update's encoding): what a simulation can know exactly, and what a deployment's
chunk frames carry. A deployment also reports ``framing_bytes_down`` / ``framing_bytes_up``:
the header frames and chunk framing around that payload, measured on its streams (gRPC's and
TLS's own framing below that is not counted).

Example:
    >>> m = Meter()
    >>> m.sent(payload=400, total=450); m.received(payload=400, total=430)
    >>> (m.total() - Traffic()).row()
    {'bytes_down': 400, 'bytes_up': 400, 'framing_bytes_down': 50, 'framing_bytes_up': 30}
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from fedloom.core.packages import ClientResult, Downlink


def payload_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True, slots=True, kw_only=True)
class Traffic:
    """Bytes moved (a round's, or a running total); framing None where not measured."""

    bytes_down: int = 0
    bytes_up: int = 0
    framing_down: int | None = None
    framing_up: int | None = None

    def __sub__(self, other: Traffic) -> Traffic:
        def minus(a: int | None, b: int | None) -> int | None:
            return None if a is None else a - (b or 0)

        return Traffic(bytes_down=self.bytes_down - other.bytes_down,
                       bytes_up=self.bytes_up - other.bytes_up,
                       framing_down=minus(self.framing_down, other.framing_down),
                       framing_up=minus(self.framing_up, other.framing_up))

    def row(self) -> dict[str, int]:
        """The metrics-row entries."""
        row = {"bytes_down": self.bytes_down, "bytes_up": self.bytes_up}
        if self.framing_down is not None:
            row["framing_bytes_down"] = self.framing_down
        if self.framing_up is not None:
            row["framing_bytes_up"] = self.framing_up
        return row


class WireSizes(Protocol):
    """The payload bytes a package would have on the wire (simulations count with this)."""

    def downlink(self, task: Downlink) -> int: ...

    def uplink(self, result: ClientResult) -> int: ...


class Float32Sizes:
    """Packages as the protocol sends them uncompressed: every tensor's bytes."""

    def downlink(self, task: Downlink) -> int:
        return payload_bytes([task.params, *task.extras.values()])

    def uplink(self, result: ClientResult) -> int:
        return payload_bytes([result.params, *result.extras.values()])


def simulated_traffic(sizes: WireSizes, tasks: Iterable[Downlink],
                      results: Iterable[ClientResult]) -> Traffic:
    """What a round's sent tasks and received results would move."""
    return Traffic(bytes_down=sum(sizes.downlink(t) for t in tasks),
                   bytes_up=sum(sizes.uplink(r) for r in results))


class Meter:
    """Running totals of fit packages sent and fit replies received, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._down = self._up = self._frame_down = self._frame_up = 0

    def sent(self, *, payload: int, total: int) -> None:
        with self._lock:
            self._down += payload
            self._frame_down += total - payload

    def received(self, *, payload: int, total: int) -> None:
        with self._lock:
            self._up += payload
            self._frame_up += total - payload

    def total(self) -> Traffic:
        with self._lock:
            return Traffic(bytes_down=self._down, bytes_up=self._up,
                           framing_down=self._frame_down, framing_up=self._frame_up)


__all__ = ["Float32Sizes", "Meter", "Traffic", "WireSizes", "payload_bytes",
           "simulated_traffic"]
