"""Datasets as tensors with per-client index arrays; batches are index_selects."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrayData:
    """Examples held as one tensor of inputs and one of int64 labels.

    Images stay uint8 in memory and are normalised per batch: ``(x / 255 - mean) / std``.
    Float features are used as they are.
    """

    x: torch.Tensor
    y: torch.Tensor
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: str | torch.device) -> ArrayData:
        """The same examples on ``device`` (itself when already there)."""
        if self.x.device == torch.device(device):
            return self
        return ArrayData(x=self.x.to(device), y=self.y.to(device), mean=self.mean, std=self.std)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inputs (float32, normalised) and labels at ``idx``."""
        x = self.x.index_select(0, idx)
        if x.dtype == torch.uint8:
            x = x.to(torch.float32).div_(255.0).sub_(self.mean).div_(self.std)
        return x, self.y.index_select(0, idx)


class Examples(Protocol):
    """Training examples as a trainer reads them: batches by global index. An
    :class:`ArrayData` is one; so is a population generated on demand
    (:class:`fedloom.data.population.GeneratedClients`)."""

    def __len__(self) -> int: ...

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def to(self, device: str | torch.device) -> Examples: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class FederatedData:
    """A dataset split over clients.

    Attributes:
        train: all training examples (an :class:`ArrayData`, or examples generated on demand);
            ``client_train[k]`` indexes client k's share.
        test: the central test set.
        client_test: per-client index arrays of local test examples, or None: into
            ``client_test_data`` when that is set (examples held out of ``train``), else into
            ``test`` (the synthetic generators' natural per-user splits).
    """

    name: str
    train: Examples
    test: ArrayData
    client_train: Sequence[torch.Tensor]
    client_test: tuple[torch.Tensor, ...] | None
    num_classes: int
    input_shape: tuple[int, ...]
    client_test_data: ArrayData | None = None

    @property
    def num_clients(self) -> int:
        return len(self.client_train)

    def num_examples(self, client_id: int) -> int:
        return int(self.client_train[client_id].shape[0])

    def example_counts(self) -> Sequence[int]:
        """Every client's example count (without a list where they are all equal and many)."""
        from fedloom.data.population import ClientRanges, Repeated

        if isinstance(self.client_train, ClientRanges):
            return Repeated(self.client_train.per_client, len(self.client_train))
        return tuple(int(c.shape[0]) for c in self.client_train)

    def arrays(self) -> ArrayData:
        """The training examples as arrays (an error for a population generated on demand)."""
        if not isinstance(self.train, ArrayData):
            from fedloom.core.errors import ConfigError

            raise ConfigError(f"data.name = {self.name}: its clients' examples are made on "
                              "demand and never held as one array")
        return self.train

    def local_test(self, client_id: int) -> tuple[ArrayData, torch.Tensor] | None:
        """Client ``client_id``'s local test examples: the arrays and the indices into them."""
        if self.client_test is None:
            return None
        source = self.test if self.client_test_data is None else self.client_test_data
        return source, self.client_test[client_id]
