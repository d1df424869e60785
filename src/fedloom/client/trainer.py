"""The local SGD loop every fleet runs: one client, one round.

Batches are ``index_select``s into tensors the client's data already lives in: no per-sample
Python and no ``DataLoader``. The shuffle of each local epoch comes from the generator of
``(seed, round, client_id, "batches")``, so a client computes the same thing whatever fleet runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from fedloom.algorithms.base import PLAIN, LocalSpec
from fedloom.core.layout import BoundModule, ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientResult, Downlink
from fedloom.core.rng import Purpose, torch_generator
from fedloom.data.dataset import ArrayData
from fedloom.models import ModelFn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_order(indices: torch.Tensor, batch_size: int, *, epochs: int, steps: int | None,
                generator: torch.Generator) -> Iterator[torch.Tensor]:
    """The client's batches: a fresh shuffle per pass, ``epochs`` passes or ``steps`` batches.

    ``batch_size`` 0 means one batch of all the client's examples per pass.
    """
    n = int(indices.shape[0])
    size = n if batch_size == 0 else batch_size
    done = 0
    epoch = 0
    while (steps is None and epoch < epochs) or (steps is not None and done < steps):
        order = indices.index_select(0, torch.randperm(n, generator=generator))
        for start in range(0, n, size):
            if steps is not None and done >= steps:
                return
            yield order[start:start + size]
            done += 1
        epoch += 1


class LocalTrainer:
    """Trains clients one at a time on a single reusable model whose tensors view a flat buffer.

    Args:
        model_fn: builds the model (its initial weights are overwritten by each downlink).
        train: all training examples; ``client_indices[k]`` selects client k's.
        seed: the run's seed; batch shuffles derive from it.
        local: the algorithm's client half.
        loss_fn: task loss on (logits, labels); cross-entropy by default.
    """

    def __init__(self, *, model_fn: ModelFn, train: ArrayData,
                 client_indices: tuple[torch.Tensor, ...], seed: int,
                 local: LocalSpec = PLAIN, loss_fn: LossFn = F.cross_entropy,
                 device: str | torch.device = "cpu") -> None:
        model = model_fn().to(device)
        self.layout = ParamLayout.from_module(model)
        self.bound = BoundModule(model, self.layout)
        self.model: nn.Module = model
        self.params = [p for p in model.parameters()]
        self.train = train
        self.client_indices = client_indices
        self.seed = seed
        self.local = local
        self.loss_fn = loss_fn
        self.device = torch.device(device)

    def fit(self, downlink: Downlink) -> ClientResult:
        """Run the client's local SGD from the downlink's parameters; return its new params."""
        cfg = downlink.config
        self.bound.load(downlink.params)
        model, loss_fn, local = self.model, self.loss_fn, self.local
        model.train()
        opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
        gen = torch_generator(self.seed, downlink.round, downlink.client_id, Purpose.BATCHES)
        indices = self.client_indices[downlink.client_id]
        losses: list[torch.Tensor] = []  # summed once at the end: no extra op per step
        sizes: list[int] = []
        for batch in batch_order(indices, cfg.batch_size, epochs=cfg.epochs, steps=cfg.steps,
                                 generator=gen):
            x, y = self.train.batch(batch)
            loss = loss_fn(model(x), y)
            losses.append(loss.detach())
            sizes.append(int(y.shape[0]))
            if local.extra_loss is not None:
                loss = loss + local.extra_loss(self.params, downlink)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)  # = loss.backward(), but typed
            if local.correct_grads is not None:
                self._correct_grads(local, downlink)
            opt.step()
        loss_sum = float(torch.stack(losses).double() @ torch.tensor(sizes, dtype=torch.float64)) \
            if losses else 0.0
        result = ClientResult(
            round=downlink.round, client_id=downlink.client_id,
            params=self.bound.read().clone(), num_examples=int(indices.shape[0]),
            num_steps=len(sizes), metrics={"train_loss": Mean(loss_sum, float(sum(sizes)))},
        )
        return local.finish(result, downlink) if local.finish is not None else result

    def _correct_grads(self, local: LocalSpec, downlink: Downlink) -> None:
        assert local.correct_grads is not None
        grads = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(
            p).reshape(-1) for p in self.params])
        local.correct_grads(grads, downlink)
        offset = 0
        for p in self.params:
            n = p.numel()
            p.grad = grads[offset:offset + n].view_as(p)
            offset += n
