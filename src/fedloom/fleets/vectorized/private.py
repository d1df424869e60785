"""Sample-level DP-SGD on stacked clients: every client's clipped per-example gradient sum in
one batched call, ``vmap`` over clients of :func:`fedloom.privacy.sample.client_fn` (itself
``vmap(grad(loss of one example))``), then each client's own noise as the serial trainer adds
it.

The padding of a short batch has weight 0, so it is neither clipped into the sum nor counted;
the sum is divided by the client's real examples at that step. After a shape's first few calls
the batched computation is recorded with ``make_fx`` and replayed, as :mod:`.kernel` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.func import vmap

from fedloom.algorithms.base import PerExampleClip
from fedloom.core.packages import Downlink
from fedloom.core.rng import torch_generator
from fedloom.fleets.vectorized.check import LossFn
from fedloom.fleets.vectorized.kernel import GradFn, Tensors, record
from fedloom.privacy.sample import add_noise, client_fn


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
        n_trained, n_fixed = len(trained), len(fixed)
        batched = vmap(client_fn(model, trained, fixed, loss_fn, dp.clip))

        def sums(*args: torch.Tensor) -> Tensors:
            p, q = args[:n_trained], args[n_trained:n_trained + n_fixed]
            return tuple(batched(p, q, *args[n_trained + n_fixed:]))

        self.eager: GradFn = sums
        self.trace_after = trace_after
        self.graphs: dict[tuple[object, ...], GradFn] = {}
        self.calls: dict[tuple[object, ...], int] = {}

    def __call__(self, params: Sequence[torch.Tensor], fixed: Sequence[torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor,
                 w: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        """Every client's clipped gradient sum (stacked like ``params``) and mean loss."""
        args = (*params, *fixed, x, y, w)
        out = self._fn(args)(*args)
        return out[:-1], out[-1]

    def _fn(self, args: Tensors) -> GradFn:
        if not self.trace_after:
            return self.eager
        key = tuple((a.shape, a.dtype, a.device) for a in args)
        fn = self.graphs.get(key)
        if fn is not None:
            return fn
        self.calls[key] = n = self.calls.get(key, 0) + 1
        if n < self.trace_after:
            return self.eager
        graph = record(self.eager, args)
        fn = self.graphs[key] = self.eager if graph is None else graph
        return fn


def noise_streams(dp: PerExampleClip, tasks: Sequence[Downlink],
                  pass_name: str) -> list[torch.Generator]:
    """Each client's DP-SGD noise stream for one pass (the serial trainer's)."""
    return [torch_generator(dp.seed, t.round, t.client_id,
                            dp.purpose + pass_name) for t in tasks]


def finish_private(dp: PerExampleClip, flat_sums: torch.Tensor, counts: torch.Tensor,
                   streams: Sequence[torch.Generator], active: Sequence[bool]) -> torch.Tensor:
    """``(sum + noise) / count`` for every stepping client's row of ``flat_sums`` (K x P, in
    place); clients that do not step draw no noise, as in the serial loop."""
    for k, gen in enumerate(streams):
        if active[k]:
            add_noise(flat_sums[k], count=int(counts[k]), clip=dp.clip,
                      noise_multiplier=dp.noise_multiplier, generator=gen)
    return flat_sums


__all__ = ["PrivateKernel", "finish_private", "noise_streams"]
