"""The pieces around BlazeFL's client trainers: server handler, model selector, datasets, seeds.

BlazeFL 1.x declares these as ABCs (``ServerHandler``, ``ModelSelector``, ``PartitionedDataset``,
``blazefl.utils.FilteredDataset``, ``seed_everything``, ``serialize_model``); 2.x keeps the names
as Protocols (``BaseServerHandler``) and adds ``blazefl.reproducibility``
(``setup_reproducibility``, ``create_rng_suite``). Here each is one class or function that serves
both versions: a user's subclass written for either runs unchanged, and a subclass that leaves out
a required method fails when it is built, naming the method.

Example:
    >>> class Tiny(ModelSelector):
    ...     def select_model(self, model_name: str) -> torch.nn.Module:
    ...         return torch.nn.Linear(2, 1)
    >>> deserialize_model(Tiny().select_model("x"), torch.zeros(3))
"""

from __future__ import annotations

import os
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fedloom.core.errors import DataError
from fedloom.core.layout import ParamLayout

UplinkPackage = TypeVar("UplinkPackage")
DownlinkPackage = TypeVar("DownlinkPackage")


class BaseServerHandler(ABC, Generic[UplinkPackage, DownlinkPackage]):
    """The server's side of a BlazeFL round: sample, broadcast, take uploads, decide to stop."""

    @abstractmethod
    def downlink_package(self) -> DownlinkPackage:
        """What every sampled client receives this round."""

    @abstractmethod
    def sample_clients(self) -> list[int]:
        """The client ids of this round's cohort."""

    @abstractmethod
    def if_stop(self) -> bool:
        """Whether the run is over."""

    @abstractmethod
    def global_update(self, buffer: list[UplinkPackage]) -> None:
        """Fold one round's uploads into the server state."""

    @abstractmethod
    def load(self, payload: UplinkPackage) -> bool:
        """Take one upload; True when it completed a round (and ``global_update`` ran)."""


#: BlazeFL 1.x's name for the same contract.
ServerHandler = BaseServerHandler


class ModelSelector(ABC):
    """Builds a model from its name (a ``str`` or a ``StrEnum`` member)."""

    @abstractmethod
    def select_model(self, model_name: str) -> torch.nn.Module:
        """A fresh model called ``model_name``."""


class PartitionedDataset(ABC):
    """A dataset split over clients: ``cid=None`` names the server's (test) part."""

    @abstractmethod
    def get_dataset(self, type_: str, cid: int | None) -> Dataset[object]:
        """The ``type_`` part ("train", "test", ...) of client ``cid``."""

    @abstractmethod
    def get_dataloader(self, type_: str, cid: int | None, batch_size: int | None = None,
                       generator: torch.Generator | None = None) -> DataLoader[object]:
        """A loader over :meth:`get_dataset` (``generator`` drives its shuffling; 2.x)."""

    def set_dataset(self, type_: str, cid: int | None, dataset: Dataset[object]) -> None:
        """Store a client's dataset back (2.x); only needed by trainers that call it."""
        raise NotImplementedError(f"{type(self).__name__}.set_dataset: not implemented; a trainer "
                                  f"that writes datasets back needs it")


class FilteredDataset(Dataset[object]):
    """The rows ``indices`` of ``original_data`` (and targets), with optional transforms."""

    def __init__(self, indices: Sequence[int], original_data: Sequence[object],
                 original_targets: Sequence[object] | None = None,
                 transform: Callable[[object], object] | None = None,
                 target_transform: Callable[[object], object] | None = None) -> None:
        if original_targets is not None and len(original_targets) != len(original_data):
            raise DataError(f"FilteredDataset: {len(original_data)} data rows but "
                            f"{len(original_targets)} targets")
        self.data = [original_data[i] for i in indices]
        self.targets = None if original_targets is None else [original_targets[i]
                                                              for i in indices]
        self.transform = transform
        self.target_transform = target_transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> object:
        item = self.data[index]
        if self.transform is not None:
            item = self.transform(item)
        if self.targets is None:
            return item
        target = self.targets[index]
        if self.target_transform is not None:
            target = self.target_transform(target)
        return item, target


def serialize_model(model: torch.nn.Module, cpu: bool = True) -> torch.Tensor:
    """The model's ``state_dict`` as one flat float32 vector (fedloom's :class:`ParamLayout`)."""
    state = model.state_dict()
    flat = ParamLayout.from_tensors(state).flatten(state)
    return flat if cpu else flat.to(next(iter(state.values())).device)


def deserialize_model(model: torch.nn.Module, serialized_parameters: torch.Tensor) -> None:
    """Load a :func:`serialize_model` vector back into ``model`` in place."""
    layout = ParamLayout.from_tensors(model.state_dict())
    model.load_state_dict(layout.unflatten(serialized_parameters.detach().cpu()))


@dataclass
class RNGSuite:
    """Independent generators for Python, NumPy and torch, all from one seed."""

    python: random.Random
    numpy: np.random.Generator
    torch_cpu: torch.Generator
    torch_cuda: torch.Generator | None = None


def create_rng_suite(seed: int) -> RNGSuite:
    """A fresh :class:`RNGSuite` for ``seed`` (the global random states are left alone)."""
    cuda = torch.Generator("cuda").manual_seed(seed) if torch.cuda.is_available() else None
    return RNGSuite(python=random.Random(seed), numpy=np.random.default_rng(seed),
                    torch_cpu=torch.Generator().manual_seed(seed), torch_cuda=cuda)


def setup_reproducibility(seed: int) -> None:
    """Process-wide determinism settings: hash seed and cuDNN's deterministic kernels."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int, device: str = "cpu") -> None:
    """Seed the global Python, NumPy and torch states (BlazeFL 1.x); ``device`` is accepted
    for its signature: torch seeds every CUDA device along with the CPU."""
    del device
    setup_reproducibility(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
