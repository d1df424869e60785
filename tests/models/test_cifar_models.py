"""The CIFAR models: architecture by hand (shapes, parameter counts), config checks, factories."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from fedloom.core.errors import ConfigError
from fedloom.models import ModelConfig, ModelName, model_factory
from fedloom.models.cifar import cifar_cnn, resnet_gn


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cifar_cnn_parameters_by_hand() -> None:
    # conv 3->64 5x5, conv 64->64 5x5, 64x8x8 -> 384 -> 192 -> 10 on 32x32 inputs
    want = (3 * 25 * 64 + 64) + (64 * 25 * 64 + 64) + (4096 * 384 + 384) + (384 * 192 + 192) \
        + (192 * 10 + 10)
    assert count(cifar_cnn((3, 32, 32), 10)) == want == 1_756_426
    # the TF tutorial's 24x24 crops: 64x6x6 into the first dense layer, about 10^6 as the paper
    assert count(cifar_cnn((3, 24, 24), 10)) == want - (4096 - 2304) * 384 == 1_068_298
    lrn = [m for m in cifar_cnn((3, 32, 32), 10) if isinstance(m, nn.LocalResponseNorm)]
    assert [(m.size, m.alpha, m.beta, m.k) for m in lrn] == [(9, 0.001, 0.75, 1.0)] * 2


def test_lrn_matches_the_tutorial_formula() -> None:
    """TF: x / (1 + 0.001/9 * sum of squares over 9 neighbouring channels) ** 0.75."""
    x = torch.randn(1, 12, 2, 2, generator=torch.Generator().manual_seed(0))
    lrn = next(m for m in cifar_cnn((3, 8, 8), 10) if isinstance(m, nn.LocalResponseNorm))
    squares = x.pow(2)
    want = torch.empty_like(x)
    for c in range(12):
        window = squares[:, max(0, c - 4):c + 5].sum(1)
        want[:, c] = x[:, c] / (1 + 0.001 / 9 * window) ** 0.75
    assert torch.allclose(lrn(x), want, atol=1e-6)


@pytest.mark.parametrize(("depth", "params"), [(8, 78_042), (20, 272_474)])
def test_resnet_gn_depth_and_parameters(depth: int, params: int) -> None:
    model = resnet_gn((3, 32, 32), 10, depth, 2)
    assert count(model) == params  # ResNet-20: 0.27M, as He et al. report
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth  # 3x3 convolutions plus the linear layer
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_groups == 2 for m in norms)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert not list(model.buffers())  # stateless: nothing to average or keep per client
    assert model(torch.zeros(3, 3, 32, 32)).shape == (3, 10)


def test_factories_are_picklable_and_configured() -> None:
    cfg = ModelConfig(name=ModelName.RESNET_GN, resnet_depth=14, norm_groups=4)
    make = pickle.loads(pickle.dumps(model_factory(cfg, (3, 16, 16), 7)))
    model = make()
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 7)
    assert {m.num_groups for m in model.modules() if isinstance(m, nn.GroupNorm)} == {4}
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
               for m in model.modules()) == 13
    cnn = model_factory(ModelConfig(name=ModelName.CIFAR_CNN), (1, 28, 28), 62)()
    assert cnn(torch.zeros(2, 1, 28, 28)).shape == (2, 62)


@pytest.mark.parametrize("name", [ModelName.CIFAR_CNN, ModelName.RESNET_GN])
def test_non_image_data_is_refused(name: ModelName) -> None:
    with pytest.raises(ConfigError, match=rf"model.name = '{name}': needs image inputs"):
        model_factory(ModelConfig(name=name), (60,), 10)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("resnet_depth", 21, "6n \\+ 2"), ("resnet_depth", 2, "6n \\+ 2"),
    ("norm_groups", 3, "must divide 16"), ("norm_groups", 0, "must divide 16"),
])
def test_bad_resnet_settings_name_the_key(key: str, value: int, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key} = {value}: .*{message}"):
        ModelConfig(name=ModelName.RESNET_GN, **{key: value})  # type: ignore[arg-type]
