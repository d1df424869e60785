"""Datasets as tensors with per-client index arrays; batches are index_selects."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Unpack

import numpy as np
import numpy.typing as npt
import torch

from fedloom.data.stats import format_partition_table, label_counts, plot_label_distribution

if TYPE_CHECKING:
    import datasets
    from torch.utils.data import Dataset

    from fedloom.data.own import SplitOptions


def contiguous_ranges(sizes: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """Consecutive int64 index ranges of the given sizes (clients stored one after another)."""
    ends = [0, *itertools.accumulate(int(k) for k in sizes)]
    return tuple(torch.arange(lo, hi, dtype=torch.int64) for lo, hi in itertools.pairwise(ends))


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

    Built by :func:`fedloom.data.load_federated` from a config, or from your own examples by
    :meth:`from_arrays`, :meth:`from_torch` and :meth:`from_hf` (split by the same
    partitioners; see :class:`fedloom.data.own.SplitOptions`). :meth:`partition_table` and
    :meth:`plot_partition` show the split as ``fedloom partition`` does.

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
        from fedloom.core.counts import Repeated
        from fedloom.data.population import ClientRanges

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

    def label_counts(self) -> np.ndarray:
        """Training examples of each class on each client, shape (clients, classes)."""
        return label_counts(self.arrays().y.numpy(), [c.numpy() for c in self.client_train],
                            self.num_classes)

    def partition_table(self, max_rows: int = 20) -> str:
        """The text table ``fedloom partition`` prints: per-client totals and label counts."""
        return format_partition_table(self.label_counts(), max_rows=max_rows)

    def plot_partition(self, path: str | Path, *, title: str | None = None) -> Path:
        """Save ``fedloom partition``'s stacked-bar PNG of labels per client; its path."""
        return plot_label_distribution(self.label_counts(), path, title=title)

    @classmethod
    def from_arrays(cls, x: npt.ArrayLike | torch.Tensor, y: npt.ArrayLike | torch.Tensor, *,
                    test: tuple[npt.ArrayLike | torch.Tensor, npt.ArrayLike | torch.Tensor]
                    | None = None, clients: npt.ArrayLike | None = None,
                    **options: Unpack[SplitOptions]) -> FederatedData:
        """Examples ``x`` (n, ...) with integer labels ``y`` (n,), split over clients.

        Example:
            >>> x, y = torch.randn(100, 5), torch.arange(100) % 3
            >>> data = FederatedData.from_arrays(x, y, num_clients=4, partition="dirichlet",
            ...                                  alpha=0.5, seed=0)
            >>> data.num_clients, data.num_classes, data.input_shape, len(data.test)
            (4, 3, (5,), 20)

        Args:
            x: inputs, one row per example (tensor, numpy array or nested list).
            y: labels, class indices >= 0.
            test: a central test set ``(x_test, y_test)``; without it ``test_fraction`` of the
                examples are held out.
            clients: each example's client id (ints or strings), for a natural partition:
                client k is the k-th smallest distinct id.
            **options: how to split (:class:`fedloom.data.own.SplitOptions`): ``num_clients``,
                ``partition``, ``alpha``, ``test_fraction``, ``seed``, ...

        Raises:
            DataError: the examples are malformed (the message names the example).
            ConfigError: an option is unknown or invalid.
        """
        from fedloom.data.own import federate
        from fedloom.data.own_sources import inputs, labels

        given = None if test is None else (inputs(test[0], "test x"), labels(test[1], "test y"))
        return federate(inputs(x, "x"), labels(y, "y"), test=given, clients=clients,
                        source="from_arrays", options=options)

    @classmethod
    def from_torch(cls, dataset: Dataset[object], *, test: Dataset[object] | None = None,
                   clients: npt.ArrayLike | None = None,
                   **options: Unpack[SplitOptions]) -> FederatedData:
        """A map-style ``torch.utils.data.Dataset`` of (input, label) pairs, read once into
        tensors, split over clients (``options`` as in :meth:`from_arrays`)."""
        from fedloom.data.own import federate
        from fedloom.data.own_sources import from_torch

        x, y = from_torch(dataset, "dataset")
        given = None if test is None else from_torch(test, "test")
        return federate(x, y, test=given, clients=clients, source="from_torch",
                        options=options)

    @classmethod
    def from_hf(cls, dataset: datasets.Dataset, *, x: str | Sequence[str], y: str,
                test: datasets.Dataset | None = None, clients: str | npt.ArrayLike | None = None,
                **options: Unpack[SplitOptions]) -> FederatedData:
        """A Hugging Face ``datasets.Dataset`` (the ``hf`` extra): input column(s) ``x``
        (several are concatenated per example), label column ``y``; ``clients`` may name a
        column of client ids. ``num_classes`` defaults to a ClassLabel column's count; the
        rest of ``options`` as in :meth:`from_arrays`."""
        from fedloom.data.own import federate
        from fedloom.data.own_sources import class_label_count, from_hf

        named = clients if isinstance(clients, str) else None
        features, labels, owners = from_hf(dataset, x, y, "dataset", named)
        given = None if test is None else from_hf(test, x, y, "test")[:2]
        return federate(features, labels, test=given,
                        clients=clients if named is None else owners, source="from_hf",
                        options=options, class_count=class_label_count(dataset, y))
