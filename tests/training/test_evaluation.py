"""Central evaluation: the channels-last inference model against a plain forward pass."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedloom.core.layout import ParamLayout
from fedloom.data.dataset import ArrayData
from fedloom.models import ModelConfig, model_factory
from fedloom.training.evaluation import CentralEvaluator, InferenceModel


def _test_set(n: int = 300) -> ArrayData:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen)
    y = torch.randint(0, 10, (n,), generator=gen)
    return ArrayData(x=x, y=y, mean=0.13, std=0.31)


def _plain(model: nn.Module, data: ArrayData) -> tuple[float, float]:
    model.eval()
    with torch.inference_mode():
        logits = model(data.batch(torch.arange(len(data)))[0])
        y = data.y
        return (float(F.cross_entropy(logits, y, reduction="sum")),
                float((logits.argmax(1) == y).sum()))


def test_cnn_evaluation_matches_plain_forward() -> None:
    fn = model_factory(ModelConfig(name="cnn"), (1, 28, 28), 10)
    reference = fn()
    params = ParamLayout.from_module(reference).flatten(reference.state_dict())
    data = _test_set()
    ev = CentralEvaluator(model_fn=fn, test=data, batch_size=128)
    assert ev.model.channels_last
    out = ev(params * 1.5)  # not the initial weights: loading must take effect
    reference.load_state_dict(ParamLayout.from_module(reference).unflatten(params * 1.5))
    loss, correct = _plain(reference, data)
    assert out["test_accuracy"].total == correct
    assert abs(out["test_loss"].total - loss) <= 1e-4 * abs(loss)
    assert ev.model.module[0].weight.is_contiguous(memory_format=torch.channels_last)


class ViewNet(nn.Module):
    """A forward that only works on contiguous activations (``.view``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        return self.fc(h.view(h.shape[0], -1))


def test_model_that_needs_contiguous_falls_back() -> None:
    torch.manual_seed(0)
    reference = ViewNet()
    layout = ParamLayout.from_module(reference)
    params = layout.flatten(reference.state_dict())
    model = InferenceModel(ViewNet)
    model.load(params)
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        out = model(x)
        assert not model.channels_last
        torch.testing.assert_close(out, reference.eval()(x))
        torch.testing.assert_close(model(x), out)


def test_models_without_convolutions_keep_default_layout() -> None:
    model = InferenceModel(model_factory(ModelConfig(name="mlp"), (1, 28, 28), 10))
    assert not model.channels_last


def test_open_batch_size_keeps_each_layer_output_within_the_cpu_budget() -> None:
    """W2's CNN: the first convolution's output (32 x 28 x 28 float32 = 100,352 bytes an image)
    is the largest, so 16 MiB hold 167 images; the 2NN's largest output is 200 floats, so it
    keeps the 1,000 cap; other devices and an empty test set get 1,000."""
    from fedloom.training.evaluation import EVAL_ACTIVATION_BYTES, eval_batch_size

    data = _test_set(4)
    cnn = model_factory(ModelConfig(name="cnn"), (1, 28, 28), 10)
    mlp = model_factory(ModelConfig(name="mlp"), (1, 28, 28), 10)
    assert EVAL_ACTIVATION_BYTES == 16 * 2 ** 20
    assert eval_batch_size(cnn, data) == 16 * 2 ** 20 // (32 * 28 * 28 * 4) == 167
    assert eval_batch_size(mlp, data) == 1000
    assert eval_batch_size(cnn, data, "cuda") == 1000
    assert eval_batch_size(cnn, None) == eval_batch_size(cnn, _test_set(0)) == 1000


def test_an_open_batch_size_is_resolved_once_for_the_whole_run() -> None:
    """The round's evaluator, the clients' loss pass and the fleet's spread evaluation all use
    the resolved batch (spread slices stay on its boundaries); a given one is kept."""
    from fedloom import FedAvg
    from fedloom.data.dataset import FederatedData
    from fedloom.runtime.assemble import assemble
    from fedloom.training.evaluation import EvalConfig

    images = _test_set(40)
    data = FederatedData.from_arrays(images.x, images.y, test=(images.x[:8], images.y[:8]),
                                     num_clients=2)
    fn = model_factory(ModelConfig(name="cnn"), (1, 28, 28), 10)
    parts = assemble(data=data, model_fn=fn, algorithm=FedAvg())
    assert parts.spec.eval_batch_size == parts.central.batch_size == 167
    given = assemble(data=data, model_fn=fn, algorithm=FedAvg(),
                     evaluation=EvalConfig(batch_size=7))
    assert given.spec.eval_batch_size == given.central.batch_size == 7


def _flat(module: nn.Module) -> torch.Tensor:
    return ParamLayout.from_module(module).flatten(module.state_dict())


def test_a_load_evaluated_in_batches_runs_a_onednn_copy_of_the_loaded_weights() -> None:
    """W2's CNN: the first batch after a load runs channels-last, later ones a oneDNN copy made
    from the loaded weights (checked against channels-last once); a new load makes a new copy."""
    fn = model_factory(ModelConfig(name="cnn"), (1, 28, 28), 10)
    torch.manual_seed(0)
    a, b = fn().eval(), fn().eval()
    model = InferenceModel(fn)
    x = torch.randn(6, 1, 28, 28)
    with torch.inference_mode():
        for ref in (a, b, a):
            model.load(_flat(ref))
            torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
            assert model._fast is None  # one batch after a load: no copy
            for _ in range(2):
                torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
            assert model.onednn is True and model._fast is not None


def test_models_onednn_cannot_run_keep_the_dense_forward() -> None:
    """Local response norm (a ``view`` inside) has no oneDNN form: the CIFAR CNN falls back on
    its first oneDNN batch and returns the dense forward's output from then on."""
    model = _three_batches_agree(model_factory(ModelConfig(name="cifar_cnn"), (3, 32, 32), 10),
                                 torch.randn(4, 3, 32, 32))
    assert model.onednn is False and model.channels_last


def _three_batches_agree(fn: Callable[[], nn.Module], x: torch.Tensor) -> InferenceModel:
    """A model from ``fn`` loaded into an InferenceModel, evaluated on ``x`` three times (so
    the oneDNN copy is tried): every output as the plain module's."""
    torch.manual_seed(0)
    ref = fn().eval()
    model = InferenceModel(fn)
    model.load(_flat(ref))
    with torch.inference_mode():
        for _ in range(3):
            torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    return model


def test_a_onednn_copy_that_disagrees_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedloom.training import inference

    class Wrong(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 10).to_mkldnn()

    monkeypatch.setattr(inference, "_to_onednn", lambda module: Wrong())
    model = _three_batches_agree(model_factory(ModelConfig(name="cnn"), (1, 28, 28), 10),
                                 torch.randn(3, 1, 28, 28))
    assert model.onednn is False
