"""The quickstart's models, chosen by name: a small CNN sized for MNIST's 1x28x28 images."""

from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F

from fedloom.fleets import ModelSelector


class FedAvgModelName(StrEnum):
    CNN = "CNN"


class FedAvgModelSelector(ModelSelector):
    def __init__(self, num_classes: int, seed: int) -> None:
        self.num_classes = num_classes
        self.seed = seed

    def select_model(self, model_name: str) -> nn.Module:
        if FedAvgModelName(model_name) is not FedAvgModelName.CNN:
            raise ValueError(f"model_name = {model_name!r}: unknown")
        with torch.random.fork_rng([]):  # the same initial weights wherever it is built
            torch.manual_seed(self.seed)
            return CNN(num_classes=self.num_classes)


class CNN(nn.Module):
    """Two 5x5 convolutions with pooling, then three dense layers (LeNet-like)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
