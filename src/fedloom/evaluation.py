"""Central evaluation of the global model on the test set, in large batches."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fedloom.core.layout import BoundModule, ParamLayout
from fedloom.core.metrics import Mean
from fedloom.data.dataset import ArrayData
from fedloom.models import ModelFn


class CentralEvaluator:
    """Loss and accuracy of flat parameters on a test set.

    Example:
        >>> # ev = CentralEvaluator(model_fn=fn, test=data.test); ev(params)["test_accuracy"].value
    """

    def __init__(self, *, model_fn: ModelFn, test: ArrayData, batch_size: int = 1000,
                 device: str | torch.device = "cpu") -> None:
        model = model_fn().to(device)
        self.bound = BoundModule(model, ParamLayout.from_module(model))
        self.test = test
        self.batch_size = batch_size

    def __call__(self, params: torch.Tensor) -> dict[str, Mean]:
        return self.evaluate_slice(params, 0, len(self.test))

    def evaluate_slice(self, params: torch.Tensor, start: int, stop: int) -> dict[str, Mean]:
        """Summed loss and correct counts over test examples ``[start, stop)``."""
        self.bound.load(params)
        model = self.bound.module
        model.eval()
        loss = torch.zeros((), dtype=torch.float64)
        correct = 0
        with torch.inference_mode():
            for lo in range(start, stop, self.batch_size):
                idx = torch.arange(lo, min(lo + self.batch_size, stop))
                x, y = self.test.batch(idx)
                logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").double()
                correct += int((logits.argmax(1) == y).sum())
        n = float(stop - start)
        return {"test_loss": Mean(float(loss), n), "test_accuracy": Mean(float(correct), n)}
