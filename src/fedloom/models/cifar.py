"""Models for CIFAR-sized images: the FedAvg paper's CNN and a small ResNet with GroupNorm.

``cifar_cnn`` follows the model of TensorFlow's CIFAR-10 tutorial, which the FedAvg paper
(McMahan et al., 2017, section 3) took for its CIFAR experiments:

- conv 5x5, 64 channels ('same' padding), ReLU, max pool 3x3 stride 2, local response norm;
- conv 5x5, 64 channels, ReLU, local response norm, max pool 3x3 stride 2;
- fully connected 384, ReLU; fully connected 192, ReLU; a linear layer to the logits (softmax
  is in the cross-entropy loss).

What differs, and why: the tutorial pools with TensorFlow's 'SAME' padding (one extra column on
the right/bottom), here one on each side (``padding=1``): the same output size, 16x16 and 8x8
for 32x32 inputs. The tutorial trains on random 24x24 crops (about 1.07M parameters); here the
images stay 32x32 (no augmentation in the data pipeline), so the first fully connected layer is
larger: 1,756,426 parameters in all. Local response normalisation is kept: it is stateless
(a function of the activations only), so every fleet runs it, the vectorized one included;
TensorFlow's ``lrn(depth_radius=4, bias=1, alpha=0.001/9, beta=0.75)`` is PyTorch's
``LocalResponseNorm(size=9, alpha=0.001, beta=0.75, k=1)`` (PyTorch divides alpha by the size).
The tutorial's weight decay on the fully connected layers is the client's ``weight_decay``.

``resnet_gn`` is the CIFAR ResNet of He et al. (2016, section 4.2): a 3x3 convolution with 16
channels, three stages of ``n`` basic blocks (16, 32, 64 channels; the second and third start with
stride 2), global average pooling and a linear layer; depth ``6n + 2`` (``model.resnet_depth``,
ResNet-20 by default: 272,474 parameters). Batch norm is replaced by GroupNorm
(``model.norm_groups`` groups, 2 by default as in Hsieh et al., 2020, "The Non-IID Data
Quagmire"): it normalises each example by its own statistics, so the model has no running
statistics, works with the smallest client batches, and can be vectorized. A block that changes
the shape has a projection shortcut (1x1 convolution with stride, then GroupNorm).

Example:
    >>> from fedloom.models import ModelConfig, ModelName
    >>> make = resnet_factory(ModelConfig(name=ModelName.RESNET_GN, resnet_depth=8),
    ...                       (3, 32, 32), 10)
    >>> model = make()
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from fedloom.core.errors import ConfigError
from fedloom.models import ModelConfig, ModelFn

#: PyTorch's equivalent of the TF tutorial's ``lrn(depth_radius=4, bias=1, alpha=0.001/9, 0.75)``
_LRN = {"size": 9, "alpha": 0.001, "beta": 0.75, "k": 1.0}


def _image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"model.name = {name!r}: needs image inputs (C, H, W); the data has "
                          f"input shape {input_shape}")
    channels, height, width = input_shape
    return channels, height, width


def cifar_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The FedAvg paper's CIFAR CNN (see the module docstring)."""
    channels, height, width = _image_shape("cifar_cnn", input_shape)
    pooled = ((height - 1) // 2 + 1 - 1) // 2 + 1, ((width - 1) // 2 + 1 - 1) // 2 + 1
    return nn.Sequential(
        nn.Conv2d(channels, 64, 5, padding=2), nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1), nn.LocalResponseNorm(**_LRN),  # type: ignore[arg-type]
        nn.Conv2d(64, 64, 5, padding=2), nn.ReLU(),
        nn.LocalResponseNorm(**_LRN), nn.MaxPool2d(3, stride=2, padding=1),  # type: ignore[arg-type]
        nn.Flatten(),
        nn.Linear(64 * pooled[0] * pooled[1], 384), nn.ReLU(),
        nn.Linear(384, 192), nn.ReLU(),
        nn.Linear(192, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a shortcut; ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.norm1 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.GroupNorm(groups, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


def resnet_gn(input_shape: tuple[int, ...], num_classes: int, depth: int = 20,
              groups: int = 2) -> nn.Module:
    """A CIFAR ResNet of ``depth = 6n + 2`` layers with GroupNorm (see the module docstring)."""
    channels, _, _ = _image_shape("resnet_gn", input_shape)
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"model.resnet_depth = {depth}: must be 6n + 2 with n >= 1")
    if groups < 1 or 16 % groups:
        raise ConfigError(f"model.norm_groups = {groups}: must divide 16")
    blocks_per_stage = (depth - 2) // 6
    layers: list[nn.Module] = [nn.Conv2d(channels, 16, 3, padding=1, bias=False),
                               nn.GroupNorm(groups, 16), nn.ReLU()]
    width = 16
    for stage, out in enumerate((16, 32, 64)):
        for block in range(blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            layers.append(BasicBlock(width, out, stride=stride, groups=groups))
            width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    return nn.Sequential(*layers)


def cnn_factory(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelFn:
    """``model.name = cifar_cnn``: a picklable factory of :func:`cifar_cnn`."""
    _image_shape("cifar_cnn", input_shape)
    return partial(cifar_cnn, tuple(input_shape), num_classes)


def resnet_factory(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> ModelFn:
    """``model.name = resnet_gn``: a picklable factory of :func:`resnet_gn`."""
    _image_shape("resnet_gn", input_shape)
    return partial(resnet_gn, tuple(input_shape), num_classes, cfg.resnet_depth, cfg.norm_groups)
