"""The recorded batched step compiled with ``torch.compile``, and the client-count buckets.

A recorded step (:mod:`.kernel`: the gradients, or the whole SGD step with the update fused into
the weight gradients' matmuls) is handed to ``torch.compile`` once per shape: inductor's C++
kernels on CPU (needs a C++ compiler), Triton kernels on CUDA. The first call compiles; its
seconds are added to :attr:`StepCompiler.seconds` and logged, later calls (every later round)
reuse the compiled code. Where compiling fails (no compiler, an op inductor cannot lower) the
step runs the recorded graph eagerly, with one warning.

Shapes are fixed per compiled graph (``dynamic=False``), so a new number of clients would mean a
new compilation. :class:`Buckets` pads the number of clients (never the data: padding clients
have weight 0 everywhere, so their gradient is 0 and they do not move) to a geometric ladder
anchored at the first count seen: a cohort of 10 compiles for 10; 9, 8, 7 or 6 clients reuse
it; 4 or 5 compile once for 5; 11 to 20 once for 20.

When it pays (``fleet.compile = auto``) is measured (benchmarks/bench_vectorized.py
``--compile``): on CPU the 2NN's step is 80% batched matmuls that the recorded graph already
calls in place, and inductor adds a copy back into every updated weight, so the compiled step
was slower (1.9 to 4.8 ms against 1.4 to 1.5 ms per W1 step, 1 thread, on a shared machine)
and ``auto`` leaves CPU steps uncompiled. On CUDA, where per-op launches dominate a small model's
step, ``auto`` compiles: expected to pay there, not yet measured (no GPU in that session).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import cast

import torch
from torch.fx import GraphModule

from fedloom.fleets.config import CompileMode

log = logging.getLogger(__name__)

StepFn = Callable[..., tuple[torch.Tensor, ...]]
Backend = str | Callable[..., object]


def compiles(mode: CompileMode | str, device: torch.device) -> bool:
    """Whether ``mode`` compiles steps on ``device`` (``auto``: on CUDA only, see above)."""
    mode = CompileMode(mode)
    return mode is CompileMode.ON or (mode is CompileMode.AUTO and device.type == "cuda")


class StepCompiler:
    """Compiles recorded steps, times their compilation, falls back to eager once.

    Args:
        backend: ``torch.compile``'s backend (``inductor``; tests use cheaper ones).

    Attributes:
        seconds: wall seconds spent in first calls (compilation, plus one step).
        compiled: graphs compiled so far.
        failed: compilation failed once; every later step runs eagerly.
    """

    def __init__(self, backend: Backend = "inductor") -> None:
        self.backend = backend
        self.seconds = 0.0
        self.compiled = 0
        self.failed = False

    def wrap(self, graph: GraphModule) -> StepFn:
        """``graph`` compiled on its first call, or ``graph`` itself when compiling fails."""
        eager = cast(StepFn, graph)
        if self.failed:
            return eager
        fn: StepFn | None = None

        def step(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            nonlocal fn
            if fn is not None:
                return fn(*args)
            if self.failed:
                fn = eager
                return fn(*args)
            compiled = cast(StepFn, torch.compile(graph, backend=self.backend, dynamic=False,
                                                  fullgraph=True))
            start = time.perf_counter()
            try:
                out = compiled(*args)
            except Exception as exc:  # no compiler, an op it cannot lower: run it eagerly
                self.failed = True
                log.warning("vectorized fleet: cannot compile the batched step (%s); "
                            "running it uncompiled from now on", _reason(exc))
                fn = eager
                return fn(*args)
            seconds = time.perf_counter() - start
            self.seconds += seconds
            self.compiled += 1
            log.info("vectorized fleet: compiled a batched step for %s in %.1f s",
                     tuple(args[-1].shape), seconds)
            fn = compiled
            return out

        return step


def _reason(exc: BaseException) -> str:
    """The innermost cause of a compilation error, on one line."""
    inner = getattr(exc, "inner_exception", None) or exc.__cause__  # dynamo wraps backends'
    while isinstance(inner, BaseException):
        exc = inner
        inner = getattr(exc, "inner_exception", None) or exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


class Buckets:
    """How many clients a chunk of ``k`` is padded to: ``anchor * 2**j``, rounded up."""

    def __init__(self) -> None:
        self.anchor: int | None = None

    def __call__(self, k: int) -> int:
        if k < 1:
            raise ValueError(f"a chunk needs at least one client, got {k}")
        if self.anchor is None:
            self.anchor = k
        anchor = self.anchor
        if k > anchor:
            return int(anchor * 2 ** math.ceil(math.log2(k / anchor)))
        size = anchor
        while math.ceil(size / 2) >= k and size > 1:
            size = math.ceil(size / 2)
        return size
