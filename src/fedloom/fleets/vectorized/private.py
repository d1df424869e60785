"""Sample-level DP-SGD on stacked clients: every client's clipped per-example gradient sum in
one batched call, ``vmap`` over clients of :func:`fedloom.privacy.ghost.ghost_fn` (ghost
clipping: no per-example gradient of a linear layer) or, for a model it cannot handle, of
:func:`fedloom.privacy.sample.client_fn` (``vmap(grad(loss of one example))``); then each
client's own noise as the serial trainer adds it.

The padding of a short batch has weight 0, so it is neither clipped into the sum nor counted;
the sum is divided by the client's real examples at that step. After a shape's first few calls
the batched computation is recorded with ``make_fx`` and replayed, as :mod:`.kernel` does, and
as there only the replay runs outside the kernel's lock (parts of a chunk on threads share it:
each part's clients draw their own noise on its thread, where most of a DP-SGD step goes).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import vmap

from fedloom.algorithms.base import PerExampleClip
from fedloom.core.packages import Downlink
from fedloom.core.rng import torch_generator
from fedloom.fleets.vectorized.check import LossFn
from fedloom.fleets.vectorized.kernel import GradFn, Tensors, guarded, record
from fedloom.privacy.ghost import choose, ghost_fn
from fedloom.privacy.sample import ClientFn, client_fn


class PrivateKernel:
    """Clipped per-example gradient sums and mean losses of K stacked clients.

    Args:
        model: the module whose forward is applied (its own tensors are not used).
        trained: names of the tensors that get gradients, in the order they are passed.
        fixed: names of the other tensors the forward needs.
        loss_fn: the task loss, called on one example at a time.
        dp: the clip norm and noise multiplier.
        trace_after: record a graph for a shape on its this-many-th call (0: never).
    """

    def __init__(self, *, model: nn.Module, trained: Sequence[str], fixed: Sequence[str],
                 loss_fn: LossFn, dp: PerExampleClip, trace_after: int = 3) -> None:
        self.dp = dp
        self.n_trained, self.n_fixed = len(trained), len(fixed)
        self.ghost = ghost_fn(model, trained, fixed, loss_fn, dp.clip)
        self.reference = client_fn(model, trained, fixed, loss_fn, dp.clip)
        self.eager: GradFn | None = None  # chosen on the first call (ghost.choose)
        self.trace_after = trace_after
        self.graphs: dict[tuple[object, ...], GradFn] = {}
        self.calls: dict[tuple[object, ...], int] = {}
        self.lock = threading.Lock()

    def __call__(self, params: Sequence[torch.Tensor], fixed: Sequence[torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor,
                 w: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        """Every client's clipped gradient sum (stacked like ``params``) and mean loss."""
        args = (*params, *fixed, x, y, w)
        with guarded(self.lock, lambda: self._fn(args)) as fn:
            out = fn(*args)
        return out[:-1], out[-1]

    def _batched(self, fn: ClientFn) -> GradFn:
        batched, n_trained, n_fixed = vmap(fn), self.n_trained, self.n_fixed

        def sums(*args: torch.Tensor) -> Tensors:
            p, q = args[:n_trained], args[n_trained:n_trained + n_fixed]
            return tuple(batched(p, q, *args[n_trained + n_fixed:]))

        return sums

    def _fn(self, args: Tensors) -> GradFn:
        """The step for ``args``: the transforms (chosen on the first call) or, once a shape
        was seen ``trace_after`` times, its recorded graph."""
        if self.eager is None:
            one = tuple(a[0] for a in args)  # the first client, to choose ghost clipping on
            p, q = self.n_trained, self.n_trained + self.n_fixed
            x, y, w = one[q:]
            self.eager = self._batched(choose(self.ghost, self.reference,
                                              (one[:p], one[p:q], x, y, w), self.dp.clip))
        eager = self.eager
        if not self.trace_after:
            return eager
        key = tuple((a.shape, a.dtype, a.device) for a in args)
        fn = self.graphs.get(key)
        if fn is not None:
            return fn
        self.calls[key] = n = self.calls.get(key, 0) + 1
        if n < self.trace_after:
            return eager
        graph = record(eager, args)
        fn = self.graphs[key] = eager if graph is None else graph
        return fn


def noise_streams(dp: PerExampleClip, tasks: Sequence[Downlink],
                  pass_name: str) -> list[torch.Generator]:
    """Each client's DP-SGD noise stream for one pass (the serial trainer's)."""
    return [torch_generator(dp.seed, t.round, t.client_id,
                            dp.purpose + pass_name) for t in tasks]


def finish_private(dp: PerExampleClip, sums: Sequence[torch.Tensor], counts: torch.Tensor,
                   streams: Sequence[torch.Generator], active: Sequence[bool],
                   scratch: torch.Tensor) -> list[torch.Tensor]:
    """``(sum + noise) / count`` for every stepping client, in place on ``sums`` (each
    ``(K, *shape)``, together the K x P flat trainable values in layout order); clients that do
    not step draw no noise, as in the serial loop. Each row of ``scratch`` (K x P, CPU) takes
    its client's draw in place: the serial trainer's numbers, without concatenating ``sums``."""
    k = len(streams)
    if dp.noise_multiplier > 0:
        for j, gen in enumerate(streams):
            if active[j]:
                scratch[j].normal_(generator=gen)  # = torch.randn(P, generator=gen)
            else:
                scratch[j].zero_()
    noise = scratch.to(sums[0].device)
    div = counts.to(sums[0].device, sums[0].dtype).clamp(min=1).view(-1, 1)
    out, offset = [], 0
    for g in sums:
        flat = g.reshape(k, -1)
        if dp.noise_multiplier > 0:
            flat.add_(noise[:, offset:offset + flat.shape[1]], alpha=dp.noise_multiplier * dp.clip)
        out.append(flat.div_(div).view(g.shape))
        offset += flat.shape[1]
    return out


__all__ = ["PrivateKernel", "finish_private", "noise_streams"]
