"""Sample-level DP-SGD (Abadi et al., CCS 2016): per-example gradients from ``torch.func``,
clipped and summed, for the serial trainer and the vectorized fleet alike.

One step of a client on a batch of ``n`` real examples computes::

    g = (sum_i clip(grad l_i, C) + N(0, z^2 C^2 I)) / n,   clip(v, C) = v min(1, C / ||v||)

where ``||.||`` is the L2 norm over all trainable tensors of the example's gradient. The per-
example gradients are ``vmap(grad(loss of one example))`` (one batched computation, no loop over
examples); the clipped sum is a per-example weighted sum (one batched matmul per tensor). The
noise is one draw of all trainable values (layout order) per step from the client's
``(seed, round, client_id, purpose)`` stream, so every fleet adds the same noise.

The trainers use :mod:`.ghost` in place of :func:`client_fn` where the model allows: the same
sums without per-example gradients of linear layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

Tensors = tuple[torch.Tensor, ...]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: (trained params, fixed tensors, x, y, w) -> (clipped gradient sums..., mean loss)
ClientFn = Callable[[Tensors, Tensors, torch.Tensor, torch.Tensor, torch.Tensor], Tensors]


def clipped_sum(grads: Sequence[torch.Tensor], weights: torch.Tensor,
                clip: float) -> list[torch.Tensor]:
    """``sum_i w_i clip(g_i, clip)`` over the examples.

    Args:
        grads: per-example gradients, each ``(B, *shape)`` (one tensor of the model each).
        weights: ``(B,)``; 1 for a real example, 0 for padding.
        clip: the L2 norm each example's whole gradient is clipped to.
    """
    b = weights.shape[0]
    flat = [g.reshape(b, -1) for g in grads]
    sq = torch.stack([f.pow(2).sum(1) for f in flat]).sum(0)
    factor = (clip / sq.sqrt().clamp(min=1e-12)).clamp(max=1.0) * weights
    return [(factor @ f).view(g.shape[1:]) for f, g in zip(flat, grads)]


def client_fn(model: nn.Module, trained: Sequence[str], fixed: Sequence[str],
              loss_fn: LossFn, clip: float) -> ClientFn:
    """One client's clipped per-example gradient sums and its mean loss over real examples.

    ``loss_fn`` is called on one example at a time (a batch of one), so any per-batch mean
    loss gives that example's loss.
    """
    trained, fixed = tuple(trained), tuple(fixed)

    def example_loss(p: Tensors, q: Tensors, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        tensors = dict(zip(trained, p)) | dict(zip(fixed, q))
        logits = functional_call(model, tensors, (x.unsqueeze(0),))
        return loss_fn(logits, y.unsqueeze(0))

    per_example = vmap(grad_and_value(example_loss), in_dims=(None, None, 0, 0))

    def client(p: Tensors, q: Tensors, x: torch.Tensor, y: torch.Tensor,
               w: torch.Tensor) -> Tensors:
        grads, losses = per_example(p, q, x, y)
        sums = clipped_sum(grads, w, clip)
        return (*sums, (losses * w).sum() / w.sum().clamp(min=1.0))

    return client


def add_noise(flat_sum: torch.Tensor, *, count: int, clip: float, noise_multiplier: float,
              generator: torch.Generator, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """``(flat_sum + N(0, (z C)^2)) / count``, in place; the noise is drawn from
    ``generator`` on the CPU (the same draw whatever the device), into ``scratch`` when given
    (a CPU float tensor shaped like ``flat_sum``: no allocation per step, the same numbers)."""
    if noise_multiplier > 0:
        noise = torch.empty(flat_sum.shape, dtype=flat_sum.dtype) if scratch is None else scratch
        noise.normal_(generator=generator)  # = torch.randn(shape, generator=generator)
        flat_sum.add_(noise.to(flat_sum.device), alpha=noise_multiplier * clip)
    return flat_sum.div_(max(count, 1))


__all__ = ["add_noise", "client_fn", "clipped_sum"]
