"""Models of the standard workloads: the FedAvg paper's 2NN and CNN, logistic regression."""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelConfig:
    """The ``model`` section: ``hidden`` is the 2NN's width (200 in the FedAvg paper)."""

    name: ModelName = ModelName.MLP
    hidden: int = 200

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.hidden >= 1, "hidden", self.hidden, "must be >= 1")
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


def model_factory(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelFn:
    """A zero-argument, picklable factory building the configured model for this data shape."""
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
