"""Build the federated dataset a :class:`DataConfig` describes: load or generate, then split.

Example:
    >>> cfg = DataConfig(name=DatasetName.SYNTHETIC, num_clients=4, alpha=0.5, beta=0.5)
    >>> data = load_federated(cfg, seed=0)
    >>> data.num_clients, data.input_shape, data.client_test is not None
    (4, (60,), True)
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Sequence

import numpy as np
import torch

from fedloom.core.errors import ConfigError, DataError
from fedloom.core.rng import SERVER, Purpose, numpy_generator
from fedloom.data import partition
from fedloom.data.config import DataConfig, DatasetName, PartitionKind
from fedloom.data.dataset import FederatedData
from fedloom.data.mnist import IMAGE_SHAPE, NUM_CLASSES, load_idx_dataset
from fedloom.data.population import load_generated
from fedloom.data.stats import label_counts, summary_line
from fedloom.data.synthetic import fedprox_synthetic, leaf_synthetic

logger = logging.getLogger(__name__)


def load_federated(cfg: DataConfig, *, seed: int) -> FederatedData:
    """The dataset named by ``cfg.name``, split over ``cfg.num_clients`` clients.

    MNIST and Fashion-MNIST are read from their IDX files (``cfg.dir`` is searched first) and
    split by ``cfg.partition``; their ``client_test`` is None (evaluate on the central test set).
    The synthetic sets are generated from ``seed`` with ``cfg.num_clients`` users; with the
    ``natural`` partition each user is a client and keeps its own test split, with any other
    partition the users' training examples are pooled and re-split (``client_test`` None).

    Args:
        cfg: the ``data`` section of the run config.
        seed: the run seed; data uses stream ``Purpose.DATA`` and the split ``Purpose.PARTITION``.

    Raises:
        DataError: files missing or corrupt, or the split cannot satisfy the config (e.g. fewer
            examples than ``num_clients * min_examples``).
        ConfigError: a partition parameter is invalid for this dataset.
    """
    data = _load(cfg, seed)
    if cfg.client_test_fraction > 0 and data.client_test is None:
        data = hold_out(data, cfg.client_test_fraction, seed)
    return data


def hold_out(data: FederatedData, fraction: float, seed: int) -> FederatedData:
    """Move ``fraction`` of each client's training examples (at least one, when it has two)
    into its local test split; the split is seeded per client."""
    train, test = [], []
    for cid, idx in enumerate(data.client_train):
        perm = torch.from_numpy(numpy_generator(seed, 0, cid, Purpose.PARTITION).permutation(
            int(idx.shape[0])))
        k = max(1, round(fraction * int(idx.shape[0]))) if idx.shape[0] > 1 else 0
        test.append(idx[perm[:k]].sort().values)
        train.append(idx[perm[k:]].sort().values)
    return dataclasses.replace(data, client_train=tuple(train), client_test=tuple(test),
                               client_test_data=data.arrays())


#: datasets read from files by their own module: ``load(cfg, seed) -> FederatedData`` with the
#: dataset's natural clients in ``client_train`` (empty where it has none, e.g. CIFAR-10)
FILE_LOADERS: dict[DatasetName, tuple[str, str]] = {
    DatasetName.SHAKESPEARE: ("fedloom.data.shakespeare", "load_shakespeare"),
    DatasetName.ADULT: ("fedloom.data.adult", "load_adult"),
    DatasetName.LEAF: ("fedloom.data.leaf", "load_leaf"),
    DatasetName.CIFAR10: ("fedloom.data.cifar10", "load_cifar10"),
}


def _load(cfg: DataConfig, seed: int) -> FederatedData:
    if cfg.name in FILE_LOADERS:
        module, function = FILE_LOADERS[cfg.name]
        data: FederatedData = getattr(importlib.import_module(module), function)(cfg, seed)
        return _natural_or_split(cfg, data, seed)
    if cfg.name == DatasetName.GENERATED:
        assert cfg.alpha is not None
        return load_generated(num_clients=cfg.num_clients, per_client=cfg.examples_per_client,
                              num_features=cfg.num_features, num_classes=cfg.num_classes,
                              alpha=cfg.alpha, beta=cfg.beta, test_clients=cfg.test_clients,
                              seed=seed)
    if cfg.name in (DatasetName.MNIST, DatasetName.FASHION_MNIST):
        train, test = load_idx_dataset(cfg.name, cfg.dir)
        return FederatedData(
            name=str(cfg.name), train=train, test=test,
            client_train=_split(cfg, train.y.numpy(), NUM_CLASSES, seed), client_test=None,
            num_classes=NUM_CLASSES, input_shape=IMAGE_SHAPE,
        )
    data = _synthetic(cfg, seed)
    if cfg.partition == PartitionKind.NATURAL:
        _check_min_examples([c.numpy() for c in data.client_train], cfg)
        return data
    client_train = _split(cfg, data.arrays().y.numpy(), data.num_classes, seed)
    return dataclasses.replace(data, client_train=client_train, client_test=None)


def _natural_or_split(cfg: DataConfig, data: FederatedData, seed: int) -> FederatedData:
    """``data``'s natural clients (at most ``cfg.num_clients``: the largest, kept in their
    natural order), or its training examples pooled and split by ``cfg.partition``."""
    if cfg.partition != PartitionKind.NATURAL:
        client_train = _split(cfg, data.arrays().y.numpy(), data.num_classes, seed)
        return dataclasses.replace(data, client_train=client_train, client_test=None)
    if data.num_clients == 0:
        raise ConfigError(f"data.partition = 'natural': {cfg.name} has no natural clients; "
                          "use iid, dirichlet, shards or quantity")
    if data.num_clients > cfg.num_clients:
        sizes = np.array([int(c.shape[0]) for c in data.client_train])
        keep = np.sort(np.argsort(-sizes, kind="stable")[:cfg.num_clients])
        logger.info("%s: keeping the %d largest of %d natural clients", cfg.name,
                    cfg.num_clients, data.num_clients)
        data = dataclasses.replace(
            data, client_train=tuple(data.client_train[k] for k in keep),
            client_test=None if data.client_test is None
            else tuple(data.client_test[k] for k in keep))
    _check_min_examples([c.numpy() for c in data.client_train], cfg)
    return data


def _split(
    cfg: DataConfig, labels: np.ndarray, num_classes: int, seed: int
) -> tuple[torch.Tensor, ...]:
    rng = numpy_generator(seed, 0, SERVER, Purpose.PARTITION)
    parts = partition_indices(cfg, labels, rng)
    _check_min_examples(parts, cfg)
    logger.info("%s %s split: %s", cfg.name, cfg.partition,
                summary_line(label_counts(labels, parts, num_classes)))
    return tuple(torch.from_numpy(p) for p in parts)


def partition_indices(
    cfg: DataConfig, labels: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Split ``len(labels)`` examples as ``cfg.partition`` says (not ``natural``)."""
    n, k = int(labels.shape[0]), cfg.num_clients
    match cfg.partition:
        case PartitionKind.IID:
            return partition.iid(n, k, rng)
        case PartitionKind.DIRICHLET:
            return partition.dirichlet(labels, k, _alpha(cfg), rng, cfg.min_examples)
        case PartitionKind.SHARDS:
            return partition.shards(labels, k, cfg.shards_per_client, rng)
        case PartitionKind.QUANTITY:
            return partition.quantity(n, k, cfg.quantity_sigma, rng, cfg.min_examples)
        case _:
            raise ConfigError(
                f"data.partition = {str(cfg.partition)!r}: not available for {cfg.name}"
            )


def _synthetic(cfg: DataConfig, seed: int) -> FederatedData:
    if cfg.name == DatasetName.LEAF_SYNTHETIC:
        return leaf_synthetic(
            num_tasks=cfg.num_clients, num_features=cfg.num_features,
            num_classes=cfg.num_classes, num_clusters=cfg.num_clusters,
            test_fraction=cfg.test_fraction, seed=seed,
        )
    return fedprox_synthetic(
        alpha=_alpha(cfg), beta=cfg.beta, num_users=cfg.num_clients,
        num_features=cfg.num_features, num_classes=cfg.num_classes,
        iid=cfg.name == DatasetName.SYNTHETIC_IID, test_fraction=cfg.test_fraction, seed=seed,
    )


def _alpha(cfg: DataConfig) -> float:
    if cfg.alpha is None:  # DataConfig fills it in; kept for type narrowing
        raise ConfigError("data.alpha = None: must be set")
    return float(cfg.alpha)


def _check_min_examples(parts: Sequence[np.ndarray], cfg: DataConfig) -> None:
    sizes = np.array([len(p) for p in parts])
    small = int((sizes < cfg.min_examples).sum())
    if small:
        worst = int(sizes.argmin())
        raise DataError(
            f"{cfg.name} {cfg.partition} split: {small} of {len(parts)} clients have fewer "
            f"than data.min_examples = {cfg.min_examples} examples (smallest: client {worst} "
            f"with {int(sizes[worst])}); lower num_clients or min_examples"
        )
