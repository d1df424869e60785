"""Models of the standard workloads: the FedAvg paper's 2NN and CNN, logistic regression."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import partial

import torch
from torch import nn

from fedloom.core.errors import ConfigError
from fedloom.core.rng import SERVER, Purpose, derive_seed
from fedloom.core.validate import Problems


class ModelName(StrEnum):
    MLP = "mlp"
    CNN = "cnn"
    LOGREG = "logreg"
    LSTM = "lstm"  # next-character model: embedding, stacked LSTM, linear head (text.py)
    CIFAR_CNN = "cifar_cnn"  # the FedAvg paper's CIFAR CNN (cifar.py)
    RESNET_GN = "resnet_gn"  # a small ResNet with GroupNorm (cifar.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """The ``model`` section: ``hidden`` is the 2NN's width (200 in the FedAvg paper)."""

    name: ModelName = ModelName.MLP
    hidden: int = 200
    resnet_depth: int = 20  # resnet_gn: 6n + 2 layers (8, 14, 20, 32, ...)
    norm_groups: int = 2  # resnet_gn: GroupNorm groups (must divide 16)
    embedding: int = 8  # lstm: width of the character embedding
    lstm_hidden: int = 256  # lstm: units per LSTM layer (the FedAvg paper's 256)
    lstm_layers: int = 2  # lstm: stacked LSTM layers

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.hidden >= 1, "hidden", self.hidden, "must be >= 1")
        p.check(self.resnet_depth >= 8 and (self.resnet_depth - 2) % 6 == 0, "resnet_depth",
                self.resnet_depth, "must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...)")
        p.check(self.norm_groups >= 1 and 16 % self.norm_groups == 0, "norm_groups",
                self.norm_groups, "must divide 16 (the first stage's channels): 1, 2, 4, 8, 16")
        for key in ("embedding", "lstm_hidden", "lstm_layers"):
            p.check(getattr(self, key) >= 1, key, getattr(self, key), "must be >= 1")
        p.raise_if_any()


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: int = 200) -> nn.Module:
    """The FedAvg paper's 2NN: two hidden ReLU layers (784-200-200-10: 199,210 parameters)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The FedAvg paper's CNN: two 5x5 conv layers (32, 64 channels, 'same' padding) each
    followed by 2x2 max pooling, a 512-unit ReLU layer and softmax (1,663,370 parameters)."""
    channels, height, width = input_shape
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 512), nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def logreg(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (softmax over one linear layer)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


ModelFn = Callable[[], nn.Module]

#: models in their own module: ``factory(cfg, input_shape, num_classes) -> ModelFn``
_MODULE_FACTORIES: dict[ModelName, tuple[str, str]] = {
    ModelName.LSTM: ("fedloom.models.text", "lstm_factory"),
    ModelName.CIFAR_CNN: ("fedloom.models.cifar", "cnn_factory"),
    ModelName.RESNET_GN: ("fedloom.models.cifar", "resnet_factory"),
}


def model_factory(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelFn:
    """A zero-argument, picklable factory building the configured model for this data shape."""
    if cfg.name in _MODULE_FACTORIES:
        module, function = _MODULE_FACTORIES[cfg.name]
        factory = getattr(importlib.import_module(module), function)
        return factory(cfg, input_shape, num_classes)  # type: ignore[no-any-return]
    if cfg.name == ModelName.MLP:
        return partial(mlp, input_shape, num_classes, cfg.hidden)
    if cfg.name == ModelName.CNN:
        if len(input_shape) != 3:
            raise ConfigError(f"model.name = 'cnn': needs image inputs (C, H, W); "
                              f"the data has input shape {input_shape}")
        return partial(cnn, input_shape, num_classes)
    return partial(logreg, input_shape, num_classes)


def init_module(model_fn: ModelFn, seed: int) -> nn.Module:
    """Build a model with weights drawn from a stream of ``seed``.

    The global RNG is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, 0, SERVER, Purpose.INIT))
        return model_fn()


__all__ = ["ModelConfig", "ModelFn", "ModelName", "cnn", "init_module", "logreg", "mlp",
           "model_factory"]
