"""Evaluation of models: central (the test set, in large batches), on all training data, and
federated (every client's local test split), and what a round of a run evaluates
(:class:`RoundEvaluator`)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedloom.core.errors import ConfigError
from fedloom.core.metrics import Mean
from fedloom.core.validate import Problems
from fedloom.data.dataset import ArrayData, FederatedData
from fedloom.models import ModelFn
from fedloom.training.inference import InferenceModel

log = logging.getLogger(__name__)

CentralFn = Callable[[torch.Tensor], dict[str, Mean]]

#: examples per evaluation batch where the config leaves it open and the device is not a CPU
DEFAULT_EVAL_BATCH = 1000
#: on CPU, evaluation batches hold at most this many bytes of any one layer's output, which
#: bounds evaluation's memory and keeps a batch's activations within glibc's heap where its
#: thresholds are not raised (:mod:`fedloom.core.allocator`): W2's CNN (100 KB of first-layer
#: output per image) evaluates 5,000 MNIST images on 1 thread in 0.75 s at 64-200 per batch and
#: 1.5 s at 1,000 with glibc's defaults; 0.75 s at either with the thresholds raised.
EVAL_ACTIVATION_BYTES = 16 * 2 ** 20


def eval_batch_size(model_fn: ModelFn, test: ArrayData | None,
                    device: str | torch.device = "cpu") -> int:
    """The evaluation batch when the config leaves it open: :data:`DEFAULT_EVAL_BATCH`, or on
    CPU at most as many examples as keep every layer's output (measured on one test example)
    within :data:`EVAL_ACTIVATION_BYTES`. Depends on the model only, never on timing, so every
    machine evaluates in the same batches."""
    if torch.device(device).type != "cpu" or test is None or len(test) == 0:
        return DEFAULT_EVAL_BATCH
    module = model_fn().eval()
    largest = 1

    def note(_: nn.Module, __: object, out: object) -> None:
        nonlocal largest
        for t in _tensors(out):
            largest = max(largest, t.numel() * t.element_size())

    hooks = [m.register_forward_hook(note) for m in module.modules()]
    try:
        with torch.inference_mode():
            module(test.batch(torch.arange(1))[0])
    finally:
        for h in hooks:
            h.remove()
    return max(1, min(DEFAULT_EVAL_BATCH, EVAL_ACTIVATION_BYTES // largest))


def _tensors(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, tuple | list):
        return [t for o in out for t in _tensors(o)]
    return []
PersonalFn = Callable[[int, torch.Tensor], torch.Tensor]


class CentralEvaluator:
    """Loss and accuracy of flat parameters on a test set.

    Example:
        >>> # ev = CentralEvaluator(model_fn=fn, test=data.test); ev(params)["test_accuracy"].value
    """

    def __init__(self, *, model_fn: ModelFn, test: ArrayData, batch_size: int = 1000,
                 device: str | torch.device = "cpu") -> None:
        self.model = InferenceModel(model_fn, device)
        self.test = test.to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size

    def __call__(self, params: torch.Tensor) -> dict[str, Mean]:
        return self.evaluate_slice(params, 0, len(self.test))

    def evaluate_slice(self, params: torch.Tensor, start: int, stop: int) -> dict[str, Mean]:
        """Summed loss and correct counts over test examples ``[start, stop)``."""
        self.model.load(params)
        model = self.model
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = 0
        with torch.inference_mode():
            for lo in range(start, stop, self.batch_size):
                idx = torch.arange(lo, min(lo + self.batch_size, stop), device=self.device)
                x, y = self.test.batch(idx)
                logits = model(x)
                loss += F.cross_entropy(logits, y, reduction="sum").double()
                correct += int((logits.argmax(1) == y).sum())
        n = float(stop - start)
        return {"test_loss": Mean(float(loss), n), "test_accuracy": Mean(float(correct), n)}


def distribution(prefix: str, accuracies: torch.Tensor, losses: torch.Tensor) -> dict[str, float]:
    """Mean, worst 10% (mean of the lowest decile, at least one client) and std over clients."""
    k = max(1, int(accuracies.numel()) // 10)
    return {f"{prefix}_accuracy_mean": float(accuracies.mean()),
            f"{prefix}_accuracy_worst10": float(accuracies.sort().values[:k].mean()),
            f"{prefix}_accuracy_std": float(accuracies.std()) if accuracies.numel() > 1 else 0.0,
            f"{prefix}_loss_mean": float(losses.mean())}


class FederatedEvaluator:
    """Accuracy of models on each client's local test split, as a distribution over clients.

    The global model is evaluated in one batched pass over every client's examples, split per
    client afterwards; personalised models (one per client) are evaluated client by client.
    """

    def __init__(self, *, model_fn: ModelFn, data: FederatedData, batch_size: int = 1000,
                 device: str | torch.device = "cpu") -> None:
        if data.client_test is None:
            fix = ("its clients exist only while they train" if data.name == "generated"
                   else "set data.client_test_fraction (e.g. 0.2)")
            raise ConfigError(f"eval.federated needs local test splits: the dataset has none; "
                              f"{fix}")
        self.model = InferenceModel(model_fn, device)
        self.data = data
        self.batch_size = batch_size
        self.splits = [data.local_test(c) for c in range(data.num_clients)]

    def _scores(self, source: ArrayData, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example correctness and loss of the loaded model on ``source[idx]``."""
        model = self.model
        correct, losses = [], []
        with torch.inference_mode():
            for lo in range(0, int(idx.shape[0]), self.batch_size):
                x, y = source.batch(idx[lo:lo + self.batch_size])
                logits = model(x)
                correct.append((logits.argmax(1) == y).double())
                losses.append(F.cross_entropy(logits, y, reduction="none").double())
        if not correct:
            return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        return torch.cat(correct), torch.cat(losses)

    def global_model(self, params: torch.Tensor) -> dict[str, float]:
        """The global model on every client's local test split (prefix ``fed``)."""
        self.model.load(params)
        accs, losses = [], []
        for split in self.splits:
            assert split is not None
            c, loss = self._scores(*split)
            accs.append(c.mean() if c.numel() else torch.tensor(float("nan")))
            losses.append(loss.mean() if loss.numel() else torch.tensor(float("nan")))
        return distribution("fed", *self._valid(accs, losses))

    def personal(self, params_of: Callable[[int], torch.Tensor]) -> dict[str, float]:
        """Each client's own model on its own local test split (prefix ``personal``)."""
        accs, losses = [], []
        for cid, split in enumerate(self.splits):
            assert split is not None
            self.model.load(params_of(cid))
            c, loss = self._scores(*split)
            accs.append(c.mean() if c.numel() else torch.tensor(float("nan")))
            losses.append(loss.mean() if loss.numel() else torch.tensor(float("nan")))
        return distribution("personal", *self._valid(accs, losses))

    @staticmethod
    def _valid(accs: list[torch.Tensor], losses: list[torch.Tensor]) -> tuple[torch.Tensor,
                                                                               torch.Tensor]:
        a, l_ = torch.stack(accs), torch.stack(losses)
        keep = ~torch.isnan(a)
        return a[keep], l_[keep]



@dataclass(frozen=True, slots=True, kw_only=True)
class EvalConfig:
    """Evaluation every ``every`` rounds (and after the last): central, on the test set; with
    ``train`` also of the global model on all training data; with ``federated`` also on every
    client's local test split (accuracy mean, worst 10%).

    ``overlap``: evaluate round r on a background thread, on the server, while round r+1
    trains (rows keep their order). Null (auto): on for a deployment, whose clients train
    elsewhere while the server would wait, unless its clients evaluate; off for simulations,
    whose fleets keep every core busy (turn it on where cores are left free, e.g. a process
    fleet with fewer workers than cores). ``batch_size``: examples per evaluation batch;
    null (default): :func:`eval_batch_size` picks it for the model."""

    every: int = 1
    batch_size: int | None = None
    federated: bool = False
    train: bool = False
    overlap: bool | None = None

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.every >= 1, "every", self.every, "must be >= 1")
        p.check(self.batch_size is None or self.batch_size >= 1, "batch_size", self.batch_size,
                "must be >= 1 (or null: sized to the model)")
        p.raise_if_any()


class ClientLosses:
    """Clients' mean task loss at a global model over their own training examples, computed on
    the server's copy of the data: what a simulation answers when an algorithm asks for the
    clients' current losses (power-of-choice selection); a deployment asks the clients.

    Example:
        >>> # ClientLosses(model_fn=fn, data=data)(params, [3, 7]) -> {3: Mean, 7: Mean}
    """

    def __init__(self, *, model_fn: ModelFn, data: FederatedData,
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
                 batch_size: int = 1000) -> None:
        self.model = InferenceModel(model_fn)
        self.data = data
        self.loss_fn = loss_fn
        self.batch_size = batch_size

    def __call__(self, params: torch.Tensor, client_ids: Sequence[int]) -> dict[int, Mean]:
        self.model.load(params)
        out: dict[int, Mean] = {}
        with torch.inference_mode():
            for cid in client_ids:
                idx = self.data.client_train[cid]
                total = torch.zeros((), dtype=torch.float64)
                for lo in range(0, int(idx.shape[0]), self.batch_size):
                    x, y = self.data.train.batch(idx[lo:lo + self.batch_size])
                    total += self.loss_fn(self.model(x), y).double() * y.shape[0]
                out[cid] = Mean(float(total), float(idx.shape[0]))
        return out


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

    @property
    def reads_client_state(self) -> bool:
        """Whether evaluating reads per-client state (personal models), which the next round
        changes: such an evaluation cannot run beside it."""
        return self.federated is not None and self.personal is not None

    def with_central(self, central: CentralFn) -> RoundEvaluator:
        """This evaluator with the test-set metrics taken from ``central`` instead."""
        twin = copy.copy(self)
        twin.central = central
        return twin

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
