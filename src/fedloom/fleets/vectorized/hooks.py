"""The algorithm's per-step hooks (:class:`LocalSpec`) on stacked clients, as the serial loop runs
them.

``extra_loss`` and ``correct_grads`` are user functions of one client's tensors and downlink, so
they are called once per stepping client per step, on that client's row of the stacked tensors:
exact, but a Python loop over the chunk at every step (plain FedAvg pays nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fedloom.core.packages import Downlink
from fedloom.fleets.vectorized.kernel import Tensors

ExtraLoss = Callable[[Sequence[torch.Tensor], Downlink], torch.Tensor]
GradHook = Callable[[torch.Tensor, torch.Tensor, Downlink], None]


def add_extra_loss(extra_loss: ExtraLoss, params: Sequence[torch.Tensor],
                   differentiable: Sequence[bool], grads: list[torch.Tensor],
                   tasks: Sequence[Downlink], active: Sequence[bool]) -> None:
    """Add each stepping client's ``extra_loss`` gradient to its rows of ``grads`` (in place).

    ``params`` and ``grads`` hold every trainable tensor stacked (layout order); the hook gets
    one client's tensors, differentiable where the model's parameter is.
    """
    for k, task in enumerate(tasks):
        if not active[k]:
            continue
        leaves = [p[k].detach().requires_grad_(d) for p, d in zip(params, differentiable)]
        wanted = [i for i, d in enumerate(differentiable) if d]
        got = torch.autograd.grad(extra_loss(leaves, task), [leaves[i] for i in wanted],
                                  allow_unused=True)
        for i, g in zip(wanted, got):
            if g is not None:
                grads[i][k].add_(g)


def correct_grads(correct: GradHook, params: Sequence[torch.Tensor],
                  grads: Sequence[torch.Tensor], tasks: Sequence[Downlink],
                  active: Sequence[bool]) -> Tensors:
    """Let ``correct(flat_grad, flat_params, downlink)`` edit each stepping client's flat
    gradient in place; returns the corrected gradients, stacked like ``params``."""
    k_all = params[0].shape[0]
    flat_params = torch.cat([p.reshape(k_all, -1) for p in params], dim=1)
    flat_grads = torch.cat([g.reshape(k_all, -1) for g in grads], dim=1)
    for k, task in enumerate(tasks):
        if active[k]:
            correct(flat_grads[k], flat_params[k], task)
    out: list[torch.Tensor] = []
    offset = 0
    for p in params:
        n = p[0].numel()
        out.append(flat_grads[:, offset:offset + n].view(p.shape))
        offset += n
    return tuple(out)
