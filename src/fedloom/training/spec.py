"""Everything a fleet needs to build its own client trainers, in one picklable value."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from fedloom.algorithms.base import PLAIN, LocalSpec
from fedloom.data.dataset import ArrayData, Examples
from fedloom.models import ModelFn
from fedloom.training.trainer import LocalTrainer, LossFn


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSpec:
    """What clients compute, independent of where they run.

    A process or a rank builds its own :class:`LocalTrainer` from this; ``model_fn``, ``loss_fn``
    and the ``local`` hooks must therefore be picklable (module-level functions, ``partial``).

    Attributes:
        train: all training examples; ``client_indices[k]`` selects client k's.
        test: the central test set, for fleets that spread evaluation over their workers.
        reducible: the algorithm's aggregate reads the results only through their
            example-weighted mean, so a fleet may reduce the updates to it.
    """

    model_fn: ModelFn
    train: Examples
    client_indices: Sequence[torch.Tensor]
    seed: int
    local: LocalSpec = PLAIN
    loss_fn: LossFn = F.cross_entropy
    test: ArrayData | None = None
    eval_batch_size: int = 1000
    extras: dict[str, object] = field(default_factory=dict)
    reducible: bool = False

    def trainer(self, device: str | torch.device = "cpu") -> LocalTrainer:
        return LocalTrainer(model_fn=self.model_fn, train=self.train,
                            client_indices=self.client_indices, seed=self.seed,
                            local=self.local, loss_fn=self.loss_fn, device=device)
