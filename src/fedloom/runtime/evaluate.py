"""What a round evaluates: central accuracy and loss, and optionally the global model's loss on
all training data and federated (per-client) accuracy of the global and personalised models."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedloom.core.metrics import Mean
from fedloom.data.dataset import FederatedData
from fedloom.evaluation import CentralEvaluator, FederatedEvaluator
from fedloom.models import ModelFn

CentralFn = Callable[[torch.Tensor], dict[str, Mean]]
PersonalFn = Callable[[int, torch.Tensor], torch.Tensor]


class RoundEvaluator:
    """Evaluates a global model the way the run config asks.

    Args:
        central: test-set metrics of flat params (the fleet's spread evaluation or the server's).
        train: also report ``global_train_loss`` / ``global_train_accuracy`` over all clients'
            training examples (the FedProx paper's training loss).
        federated: also report the ``fed_accuracy_*`` distribution over clients' local test
            splits, and ``personal_accuracy_*`` when the algorithm keeps personal models.
    """

    def __init__(self, *, central: CentralFn, model_fn: ModelFn, data: FederatedData,
                 batch_size: int = 1000, train: bool = False, federated: bool = False,
                 personal: PersonalFn | None = None) -> None:
        self.central = central
        self.on_train = CentralEvaluator(model_fn=model_fn, test=data.arrays(),
                                         batch_size=batch_size) if train else None
        self.federated = FederatedEvaluator(model_fn=model_fn, data=data,
                                            batch_size=batch_size) if federated else None
        self.personal = personal

    def __call__(self, params: torch.Tensor) -> dict[str, float]:
        out = {key: m.value for key, m in self.central(params).items()}
        if self.on_train is not None:
            for key, m in self.on_train(params).items():
                out[key.replace("test_", "global_train_")] = m.value
        if self.federated is not None:
            out.update(self.federated.global_model(params))
            if self.personal is not None:
                personal = self.personal
                out.update(self.federated.personal(lambda cid: personal(cid, params)))
        return out
