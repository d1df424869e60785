"""``torch.optim.SGD`` on K stacked clients, with per-client hyperparameters and a step mask.

Per client k and tensor p it computes exactly what ``torch.optim.SGD`` (dampening 0, no
Nesterov) does::

    d = g + weight_decay * p
    buf = d                         at the client's first step
    buf = momentum * buf + d        afterwards
    p -= lr * buf                   (p -= lr * d without momentum)

A client that does not step at t (count 0: it ran out of batches) keeps its parameters and its
momentum. When every client steps and they share their hyperparameters, the update is a handful
of fused ``torch._foreach`` ops over all tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedloom.core.packages import ClientConfig


class StackedSGD:
    """SGD for stacked parameters (each tensor K x ...), stepped in place.

    Args:
        params: the stacked tensors, updated in place.
        configs: each client's hyperparameters (``lr``, ``momentum``, ``weight_decay``).
        active: (steps, K) whether client k steps at step t; every client steps at t = 0.
    """

    def __init__(self, params: Sequence[torch.Tensor], configs: Sequence[ClientConfig],
                 active: torch.Tensor) -> None:
        self.params = list(params)
        device, dtype = self.params[0].device, self.params[0].dtype
        k = len(configs)

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        lrs = [c.lr for c in configs]
        moms = [c.momentum for c in configs]
        wds = [c.weight_decay for c in configs]
        self.uniform = len(set(lrs)) == len(set(moms)) == len(set(wds)) == 1
        self.lr, self.momentum, self.weight_decay = lrs[0], moms[0], wds[0]
        self.use_momentum = any(m != 0 for m in moms)
        self.use_decay = any(w != 0 for w in wds)
        act = active.to(device=device, dtype=dtype)
        self.all_active = [bool(v) for v in active.all(dim=1).tolist()]
        # per step and client: lr if stepping else 0; momentum if stepping else 1 (buf kept)
        self.lr_t = act * column(lrs)
        self.mom_t = act * column(moms) + (1 - act)
        self.act_t = act
        self.wd = column(wds)
        self.shapes = [(k,) + (1,) * (p.dim() - 1) for p in self.params]
        self.bufs: list[torch.Tensor] = []

    def plain(self, t: int, *, idle_grads_zero: bool = False) -> bool:
        """Whether step t is ``p -= lr * g`` for every client with one ``lr`` (fusable).

        With ``idle_grads_zero`` (the masked loss gives clients without a batch a gradient of
        exactly 0) that holds whether or not every client steps: ``p - lr * 0`` is ``p``.
        """
        return self.uniform and (self.all_active[t] or idle_grads_zero) \
            and not self.use_momentum and not self.use_decay

    def step(self, t: int, grads: Sequence[torch.Tensor]) -> None:
        """Apply step t; ``grads`` (stacked like the params) may be overwritten."""
        fast = self.uniform and self.all_active[t]
        d = list(grads)
        if self.use_decay:
            if fast:
                torch._foreach_add_(d, self.params, alpha=self.weight_decay)
            else:
                for g, p, s in zip(d, self.params, self.shapes):
                    g.addcmul_(self.wd.view(s), p)
        if self.use_momentum:
            if t == 0:
                self.bufs = [g.clone() for g in d]
            elif fast:
                torch._foreach_mul_(self.bufs, self.momentum)
                torch._foreach_add_(self.bufs, d)
            else:
                mom, act = self.mom_t[t], self.act_t[t]
                for b, g, s in zip(self.bufs, d, self.shapes):
                    b.mul_(mom.view(s)).addcmul_(act.view(s), g)
            d = self.bufs
        if fast:
            torch._foreach_add_(self.params, d, alpha=-self.lr)
        else:
            lr = self.lr_t[t]
            for p, g, s in zip(self.params, d, self.shapes):
                p.addcmul_(lr.view(s), g, value=-1)
