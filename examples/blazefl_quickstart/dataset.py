"""MNIST split over clients by label shards, stored one file per client as BlazeFL's
quickstart does. There is no torchvision here: images come from fedloom's MNIST loader and
:class:`ToFloat` stands in for ``transforms.Compose([ToTensor(), Normalize(...)])``."""

from collections.abc import Sized
from enum import StrEnum
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fedloom.data.mnist import load_idx_dataset
from fedloom.fleets import FilteredDataset, PartitionedDataset


class FedAvgPartitionType(StrEnum):
    TRAIN = "train"
    TEST = "test"


class ToFloat:
    """uint8 (1, 28, 28) -> normalised float32, as ToTensor + Normalize would give."""

    def __init__(self, mean: float, std: float) -> None:
        self.mean, self.std = mean, std

    def __call__(self, image: object) -> torch.Tensor:
        assert isinstance(image, torch.Tensor)
        return (image.float() / 255 - self.mean) / self.std


def shards_partition(targets: np.ndarray, num_clients: int, num_shards: int,
                     seed: int) -> dict[int, np.ndarray]:
    """Sort by label, cut into ``num_shards`` equal shards, deal them at random to clients."""
    order = np.argsort(targets, kind="stable")
    size = len(targets) // num_shards
    shards = np.random.default_rng(seed).permutation(num_shards)
    per_client = num_shards // num_clients
    return {cid: np.concatenate([order[s * size:(s + 1) * size]
                                 for s in shards[cid * per_client:(cid + 1) * per_client]])
            for cid in range(num_clients)}


class PartitionedMNIST(PartitionedDataset):
    def __init__(self, root: Path | None, path: Path, num_clients: int, seed: int,
                 num_shards: int, max_samples: int | None = None) -> None:
        self.path = path
        train, test = load_idx_dataset("mnist", None if root is None else str(root))
        cut = slice(None, max_samples)
        transform = ToFloat(train.mean, train.std)
        targets = train.y[cut].numpy()
        (path / "train").mkdir(parents=True, exist_ok=True)
        for cid, rows in shards_partition(targets, num_clients, num_shards, seed).items():
            client = FilteredDataset(rows.tolist(), train.x[cut], train.y[cut].tolist(),
                                     transform=transform)
            torch.save(client, path / "train" / f"{cid}.pkl")
        test_rows = range(len(test.y[cut]))
        torch.save(FilteredDataset(list(test_rows), test.x[cut], test.y[cut].tolist(),
                                   transform=transform), path / "test.pkl")

    def _file(self, type_: str, cid: int | None) -> Path:
        if FedAvgPartitionType(type_) is FedAvgPartitionType.TRAIN:
            return self.path / "train" / f"{cid}.pkl"
        return self.path / "test.pkl"

    def get_dataset(self, type_: str, cid: int | None) -> Dataset[object]:
        dataset = torch.load(self._file(type_, cid), weights_only=False)
        assert isinstance(dataset, Dataset)
        return dataset

    def set_dataset(self, type_: str, cid: int | None, dataset: Dataset[object]) -> None:
        torch.save(dataset, self._file(type_, cid))

    def get_dataloader(self, type_: str, cid: int | None, batch_size: int | None = None,
                       generator: torch.Generator | None = None) -> DataLoader[object]:
        dataset = self.get_dataset(type_, cid)
        assert isinstance(dataset, Sized)
        return DataLoader(dataset, batch_size=batch_size or len(dataset), shuffle=True,
                          generator=generator)
