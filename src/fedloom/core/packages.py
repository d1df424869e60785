"""Typed packages exchanged between the server and its clients.

The downlink carries the global parameters and what the client needs to train; the uplink
(:class:`ClientResult`) carries the client's new local parameters, its example count and metrics.
A client that fails is a :class:`ClientFailure` value in the round's results, never an exception
that escapes the round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import torch

from fedloom.core.finite import all_finite
from fedloom.core.metrics import Mean
from fedloom.core.validate import Problems


class MemoryFormat(StrEnum):
    """How a client's trainer lays out 4-d weights (convolutions) while it trains."""

    AUTO = "auto"  # channels_last for models with 4-d weights on CPU (measured faster), no DP-SGD
    CONTIGUOUS = "contiguous"  # PyTorch's default layout
    CHANNELS_LAST = "channels_last"  # NHWC weights and inputs (oneDNN's fast layout on CPU)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientConfig:
    """How a client trains locally: the ``client`` section of a run config.

    ``steps`` (when set) fixes the number of local SGD steps, cycling through fresh shuffles of
    the client's data; otherwise the client runs ``epochs`` passes. ``batch_size`` 0 means the
    whole local dataset in one batch (full-batch gradient descent). ``straggler_fraction`` of
    each cohort are stragglers in simulation (see :mod:`fedloom.runtime.heterogeneity`).
    ``memory_format`` is how the client's trainer lays out convolution weights while it trains
    (:class:`MemoryFormat`; the serial, thread, process and distributed fleets' trainer): only
    rounding differs between formats, and what it sends back is in layout order either way.
    """

    epochs: int = 1
    steps: int | None = None
    batch_size: int = 10
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    straggler_fraction: float = 0.0
    memory_format: MemoryFormat = MemoryFormat.AUTO

    def __post_init__(self) -> None:
        p = Problems()
        try:
            object.__setattr__(self, "memory_format", MemoryFormat(self.memory_format))
        except ValueError:
            p.add("memory_format", self.memory_format,
                  f"must be one of {', '.join(m.value for m in MemoryFormat)}")
        p.check(0 <= self.straggler_fraction <= 1, "straggler_fraction", self.straggler_fraction,
                "must be in [0, 1]")
        p.check(self.epochs >= 1, "epochs", self.epochs, "must be >= 1")
        p.check(self.steps is None or self.steps >= 1, "steps", self.steps,
                "must be >= 1 or null (then epochs decide)")
        p.check(self.batch_size >= 0, "batch_size", self.batch_size,
                "must be >= 0 (0 = full batch)")
        p.check(self.lr > 0, "lr", self.lr, "must be > 0")
        p.check(0 <= self.momentum < 1, "momentum", self.momentum, "must be in [0, 1)")
        p.check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerState:
    """The server's state after a round: global parameters plus algorithm-specific tensors."""

    round: int
    params: torch.Tensor
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Downlink:
    """What one client receives for one round. ``params`` is shared by the cohort: read only."""

    round: int
    client_id: int
    params: torch.Tensor
    config: ClientConfig
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientResult:
    """What one client sends back: its new local parameters (flat) and how it got them."""

    round: int
    client_id: int
    params: torch.Tensor
    num_examples: int
    num_steps: int
    metrics: Mapping[str, Mean] = field(default_factory=dict)
    extras: Mapping[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientFailure:
    """A client that did not produce a usable result, with the stage where it failed."""

    round: int
    client_id: int
    stage: str
    message: str


Outcome = ClientResult | ClientFailure



def update_problem(params: torch.Tensor, size: int) -> str | None:
    """What is wrong with a flat update of a model of ``size`` values (None: nothing)."""
    if params.shape != (size,):
        return f"update has shape {tuple(params.shape)}, expected ({size},)"
    if not all_finite(params):
        return "update contains NaN or infinite values"
    return None


def checked(outcome: Outcome, size: int) -> Outcome:
    """The outcome, or a :class:`ClientFailure` (stage ``validate``) when its update has the
    wrong shape or non-finite values."""
    if isinstance(outcome, ClientFailure):
        return outcome
    problem = update_problem(outcome.params, size)
    return outcome if problem is None else ClientFailure(
        round=outcome.round, client_id=outcome.client_id, stage="validate", message=problem)


def split_outcomes(outcomes: Sequence[Outcome], size: int) -> tuple[list[ClientResult],
                                                                   list[ClientFailure]]:
    """Usable results sorted by client id, and failures (including updates that fail
    :func:`checked`). Results sharing one update tensor (a reduced mean) check it once."""
    ok: list[ClientResult] = []
    failed: list[ClientFailure] = []
    problems: dict[int, str | None] = {}
    for o in outcomes:
        if isinstance(o, ClientFailure):
            failed.append(o)
            continue
        key = id(o.params)
        if key not in problems:
            problems[key] = update_problem(o.params, size)
        problem = problems[key]
        if problem is None:
            ok.append(o)
        else:
            failed.append(ClientFailure(round=o.round, client_id=o.client_id, stage="validate",
                                        message=problem))
    ok.sort(key=lambda r: r.client_id)
    return ok, failed
