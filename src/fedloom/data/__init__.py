"""Datasets for federated learning: files, generators, partitions and their statistics.

The entry point is :func:`load_federated`, which turns a :class:`DataConfig` into a
:class:`FederatedData`::

    from fedloom.data import DataConfig, load_federated

    data = load_federated(DataConfig(name="mnist", num_clients=100, partition="shards"), seed=0)

Your own examples become one with :meth:`FederatedData.from_arrays`,
:meth:`~FederatedData.from_torch` (a map-style torch Dataset) or :meth:`~FederatedData.from_hf`
(a Hugging Face Dataset), split by the same partitioners (:mod:`fedloom.data.own`).

The pieces are usable on their own: :func:`read_idx` (IDX files), :func:`locate_files`
(search, verify, download), :func:`load_idx_dataset` (MNIST, Fashion-MNIST),
:func:`fedprox_synthetic` and :func:`leaf_synthetic` (generated benchmarks), the partitioners
in :mod:`fedloom.data.partition`, and :func:`label_counts` / :func:`format_partition_table` /
:func:`plot_label_distribution` to inspect a split.
"""

from fedloom.data import partition
from fedloom.data.checksum import read_verified
from fedloom.data.config import DataConfig, DatasetName, PartitionKind
from fedloom.data.dataset import ArrayData, FederatedData
from fedloom.data.download import download_file
from fedloom.data.idx import parse_idx, read_idx, write_idx
from fedloom.data.load import load_federated, partition_indices
from fedloom.data.locate import IDX_FILES, MIRRORS, DatasetFiles, locate_files, search_roots
from fedloom.data.mnist import load_idx_dataset
from fedloom.data.partition import dirichlet, iid, quantity, shards
from fedloom.data.stats import format_partition_table, label_counts, plot_label_distribution
from fedloom.data.synthetic import fedprox_synthetic, leaf_synthetic

__all__ = [
    # config and containers
    "DataConfig", "DatasetName", "PartitionKind", "ArrayData", "FederatedData",
    # entry point
    "load_federated", "partition_indices",
    # files
    "read_idx", "parse_idx", "write_idx", "DatasetFiles", "IDX_FILES", "MIRRORS",
    "locate_files", "search_roots", "read_verified", "download_file", "load_idx_dataset",
    # generators
    "fedprox_synthetic", "leaf_synthetic",
    # partitions
    "partition", "iid", "dirichlet", "shards", "quantity",
    # statistics
    "label_counts", "format_partition_table", "plot_label_distribution",
]
