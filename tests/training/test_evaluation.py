"""Central evaluation: the channels-last inference model against a plain forward pass."""

from __future__ import annotations

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
