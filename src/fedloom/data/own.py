"""Your own data as a :class:`FederatedData`: examples split over clients by fedloom's partitioners.

:func:`federate` is the one path behind ``FederatedData.from_arrays``, ``from_torch`` and
``from_hf`` (their sources are turned into tensors by :mod:`fedloom.data.own_sources`): it
checks the tensors, holds out a central test set (unless one is given), splits the rest with
:func:`fedloom.data.load.partition_indices` (``iid``, ``dirichlet``, ``shards``, ``quantity``)
or by a client id per example (``clients=``: the natural partition), and optionally holds out
local test splits with :func:`fedloom.data.load.hold_out`. Every draw is seeded by ``seed``.

Example:
    >>> x = torch.arange(40, dtype=torch.float32).reshape(20, 2)
    >>> data = federate(x, torch.arange(20) % 2, source="from_arrays",
    ...                 options={"num_clients": 4, "seed": 0})
    >>> data.num_clients, len(data.test), data.num_classes, data.input_shape
    (4, 4, 2, (2,))
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt
import torch

from fedloom.core.errors import ConfigError, DataError
from fedloom.core.rng import SERVER, Purpose, numpy_generator
from fedloom.core.validate import Problems
from fedloom.data.config import DataConfig, DatasetName, PartitionKind
from fedloom.data.dataset import ArrayData, FederatedData
from fedloom.data.load import hold_out, partition_indices
from fedloom.data.stats import label_counts, summary_line

logger = logging.getLogger(__name__)

#: the share of the examples held out as the central test set when no test set is given
DEFAULT_TEST_FRACTION = 0.2


class SplitOptions(TypedDict, total=False):
    """How the ``FederatedData.from_*`` constructors split the examples (all optional).

    Keys:
        num_clients: clients to split over (required unless ``clients`` is given).
        partition: ``iid`` (default), ``dirichlet``, ``shards``, ``quantity``, or ``natural``
            (the default when ``clients`` is given).
        alpha: Dirichlet concentration (default 0.5). shards_per_client: default 2.
        quantity_sigma: lognormal sigma of the client sizes (default 1.0).
        min_examples: the fewest training examples a client may get (default 1).
        test_fraction: share held out as the central test set when no ``test`` is given
            (default 0.2; per client with ``clients``, each keeping at least one example).
        client_test_fraction: share of each client's examples held out as its local test split
            (for ``eval_federated``; default 0).
        num_classes: default: the largest label + 1 (or a Hugging Face ClassLabel's count).
        seed: seeds the test hold-out and the split (default 0).
        name: the dataset's name in logs and run directories (default: the constructor's).
    """

    num_clients: int
    partition: str
    alpha: float
    shards_per_client: int
    quantity_sigma: float
    min_examples: int
    test_fraction: float
    client_test_fraction: float
    num_classes: int
    seed: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class _Split:
    """:class:`SplitOptions` resolved and checked (``clients`` travels separately)."""

    num_clients: int | None = None
    partition: str = PartitionKind.IID
    alpha: float = 0.5
    shards_per_client: int = 2
    quantity_sigma: float = 1.0
    min_examples: int = 1
    test_fraction: float | None = None
    client_test_fraction: float = 0.0
    num_classes: int | None = None
    seed: int = 0
    name: str = "own"


def federate(x: torch.Tensor, y: torch.Tensor, *, source: str, options: SplitOptions,
             test: tuple[torch.Tensor, torch.Tensor] | None = None,
             clients: npt.ArrayLike | None = None,
             class_count: int | None = None) -> FederatedData:
    """Split the examples ``(x, y)`` over clients as ``options`` says (see :class:`SplitOptions`).

    ``x`` and ``y`` are checked tensors (:func:`fedloom.data.own_sources.inputs` and
    ``labels``); ``test`` the same for a given test set. ``clients`` gives each training
    example's client (ints or strings): client k is the k-th smallest distinct id.
    ``class_count`` is ``num_classes`` when the options do not set it (a Hugging Face
    ClassLabel's count). ``source`` names the constructor in error messages.

    Raises:
        ConfigError: an unknown option, a bad option value, or options that contradict.
        DataError: the data cannot satisfy them (labels outside ``num_classes``, too few
            examples for the clients, a test set of another input shape).
    """
    where = f"FederatedData.{source}"
    opts: dict[str, object] = {"name": source.removeprefix("from_"), **options}
    if opts.get("num_classes") is None:
        opts["num_classes"] = class_count
    for name, xs, ys in [("", x, y), *([] if test is None else [("test ", *test)])]:
        if xs.shape[0] != ys.shape[0]:
            raise DataError(f"{where}: {name}x has {xs.shape[0]} examples but {name}y has "
                            f"{ys.shape[0]} labels")
    split = _resolve(opts, clients is not None, where)
    groups = None if clients is None else _client_groups(clients, len(y), where)
    seed = split.seed
    if test is not None and split.test_fraction is not None:
        raise ConfigError(f"{where}: test_fraction = {split.test_fraction}: test= gives the test "
                          "set; pass one or the other")
    if test is None:
        fraction = DEFAULT_TEST_FRACTION if split.test_fraction is None else split.test_fraction
        train_idx, test_idx = held_out(len(y), groups, fraction,
                                       numpy_generator(seed, 0, SERVER, Purpose.DATA), where)
        test = (x[torch.from_numpy(test_idx)], y[torch.from_numpy(test_idx)])
        x, y = x[torch.from_numpy(train_idx)], y[torch.from_numpy(train_idx)]
        if groups is not None:
            groups = groups[train_idx]
    elif tuple(test[0].shape[1:]) != tuple(x.shape[1:]) or test[0].dtype != x.dtype:
        raise DataError(f"{where}: the test inputs are {test[0].dtype} of shape "
                        f"{tuple(test[0].shape[1:])} per example, the training inputs "
                        f"{x.dtype} of shape {tuple(x.shape[1:])}")
    num_classes = _num_classes(y, test[1], split.num_classes, where)
    parts = _parts(y.numpy(), groups, split, where)
    logger.info("%s: %s", split.name, summary_line(label_counts(y.numpy(), parts, num_classes)))
    data = FederatedData(
        name=split.name, train=ArrayData(x=x, y=y), test=ArrayData(x=test[0], y=test[1]),
        client_train=tuple(torch.from_numpy(p) for p in parts), client_test=None,
        num_classes=num_classes, input_shape=tuple(int(s) for s in x.shape[1:]))
    if split.client_test_fraction > 0:
        data = hold_out(data, split.client_test_fraction, seed)
    return data


#: each option's type
_TYPES: dict[str, type] = {
    "num_clients": int, "partition": str, "alpha": float, "shards_per_client": int,
    "quantity_sigma": float, "min_examples": int, "test_fraction": float,
    "client_test_fraction": float, "num_classes": int, "seed": int, "name": str}
#: options whose None means their default
_NULLABLE = ("num_clients", "partition", "num_classes", "test_fraction")


def _resolve(opts: dict[str, object], natural: bool, where: str) -> _Split:
    """The options as a :class:`_Split`, every problem reported at once."""
    p = Problems()
    typed: dict[str, object] = {}
    for key, value in opts.items():
        kind = _TYPES.get(key)
        if kind is None:
            p.add(f"{where}: {key}", value, f"unknown option; known: {', '.join(_TYPES)}")
        elif value is not None or key not in _NULLABLE:
            typed[key] = _typed(value, kind, f"{where}: {key}", p)
    p.raise_if_any()
    split = _Split(**typed)  # type: ignore[arg-type]  # each value checked against _TYPES
    allowed = [k.value for k in PartitionKind]
    partition = typed.get("partition", "natural" if natural else "iid")
    p.check(partition in allowed, f"{where}: partition", partition,
            f"must be one of {', '.join(allowed)}")
    p.check(partition != "natural" or natural, f"{where}: partition", partition,
            "'natural' needs clients= (each example's client)")
    p.check(partition == "natural" or not natural, f"{where}: partition", partition,
            "clients= gives each example's client: leave partition unset (natural)")
    p.check(natural or split.num_clients is not None, f"{where}: num_clients", None,
            "required (or clients= for a natural partition)")
    p.check(split.test_fraction is None or 0 < split.test_fraction < 1,
            f"{where}: test_fraction", split.test_fraction, "must be in (0, 1)")
    p.check(0 <= split.client_test_fraction < 1, f"{where}: client_test_fraction",
            split.client_test_fraction, "must be in [0, 1)")
    p.check(split.num_classes is None or split.num_classes >= 2, f"{where}: num_classes",
            split.num_classes, "must be >= 2")
    p.check(split.min_examples >= 0, f"{where}: min_examples", split.min_examples,
            "must be >= 0")
    p.raise_if_any()
    split = dataclasses.replace(split, partition=PartitionKind(str(partition)))
    if split.partition != PartitionKind.NATURAL:
        _partition_config(split, where)  # checks num_clients, alpha, ... as a run config does
    return split


def _typed(value: object, kind: type, key: str, p: Problems) -> object:
    """``value`` as ``kind`` (numpy scalars accepted), or None after recording why not."""
    if isinstance(value, bool) or value is None:
        ok = False
    elif kind is float:
        ok = isinstance(value, int | float | np.integer | np.floating)
    elif kind is int:
        ok = isinstance(value, int | np.integer)
    else:
        ok = isinstance(value, kind)
    if not ok:
        p.add(key, value, "must be a number" if kind is float else f"must be of type "
              f"{kind.__name__}")
        return None
    return kind(value)


def _partition_config(split: _Split, where: str) -> DataConfig:
    """The ``data`` section :func:`partition_indices` reads. Only its partition keys matter;
    ``name`` is a placeholder (the split's messages name ``where`` instead)."""
    assert split.num_clients is not None  # _resolve requires it for these partitions
    try:
        return DataConfig(name=DatasetName.MNIST, num_clients=split.num_clients,
                          partition=PartitionKind(split.partition), alpha=split.alpha,
                          shards_per_client=split.shards_per_client,
                          quantity_sigma=split.quantity_sigma, min_examples=split.min_examples)
    except ConfigError as err:
        raise ConfigError([f"{where}: {p}" for p in err.problems]) from None


def _client_groups(clients: npt.ArrayLike, n: int, where: str) -> np.ndarray:
    """Each example's client as 0..K-1 (the rank of its id among the distinct ids)."""
    ids = np.asarray(clients)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise DataError(f"{where}: clients has shape {ids.shape}: one client id per example "
                        f"needed, shape ({n},)")
    if ids.dtype.kind not in "iuUS" and ids.dtype != object:
        raise DataError(f"{where}: clients has dtype {ids.dtype}: client ids must be integers "
                        "or strings")
    try:
        _, groups = np.unique(ids, return_inverse=True)
    except TypeError as err:
        raise DataError(f"{where}: clients mixes kinds of ids that cannot be ordered: "
                        f"{err}") from None
    return groups.reshape(-1).astype(np.int64)


def held_out(n: int, groups: np.ndarray | None, fraction: float, rng: np.random.Generator,
             where: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, test) indices: ``round(fraction * n)`` examples (at least one, never all)
    drawn at random for the test set; with ``groups``, ``round(fraction * size)`` of each
    group's (at most all but one, so every client keeps an example).

    Raises:
        DataError: nothing can be held out (one example, or every client has only one).
    """
    perm = rng.permutation(n)
    if groups is None:
        test = perm[:min(max(1, round(fraction * n)), n - 1)]
    else:
        order = perm[np.argsort(groups[perm], kind="stable")]  # by group, random within
        sizes = np.bincount(groups)
        take = np.minimum(np.round(fraction * sizes).astype(np.int64), sizes - 1)
        starts = np.cumsum(sizes) - sizes
        rank = np.arange(n) - starts[groups[order]]
        test = order[rank < take[groups[order]]]
    if test.size == 0:
        raise DataError(f"{where}: test_fraction = {fraction} of {n} examples holds out none "
                        "(each client keeps at least one): raise it or pass test=")
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _num_classes(y: torch.Tensor, y_test: torch.Tensor, given: int | None, where: str) -> int:
    top = max(int(y.max()) if len(y) else -1, int(y_test.max()) if len(y_test) else -1)
    if given is None:
        if top < 1:
            raise DataError(f"{where}: every label is {top}: at least 2 classes are needed "
                            "(or pass num_classes)")
        return top + 1
    for name, labels in (("y", y), ("test y", y_test)):
        bad = torch.nonzero(labels >= given).reshape(-1)
        if bad.numel():
            i = int(bad[0])
            raise DataError(f"{where}: {name}[{i}] = {int(labels[i])} is outside num_classes = "
                            f"{given} (labels are 0 .. {given - 1})")
    return given


def _parts(labels: np.ndarray, groups: np.ndarray | None, split: _Split,
           where: str) -> list[np.ndarray]:
    """Each client's training indices: by ``groups`` (natural) or by the partitioner."""
    if groups is None:
        rng = numpy_generator(split.seed, 0, SERVER, Purpose.PARTITION)
        parts = partition_indices(_partition_config(split, where), labels, rng)
    else:
        num = int(groups.max()) + 1
        parts = np.split(np.argsort(groups, kind="stable"),
                         np.cumsum(np.bincount(groups, minlength=num))[:-1])
        if split.num_clients is not None and split.num_clients != num:
            raise ConfigError(f"{where}: num_clients = {split.num_clients}: clients= names "
                              f"{num} distinct clients (leave num_clients unset)")
    sizes = np.array([len(part) for part in parts])
    if (sizes < split.min_examples).any():
        k = int(sizes.argmin())
        raise DataError(f"{where}: {split.partition} split: client {k} has {sizes[k]} training "
                        f"examples, fewer than min_examples = {split.min_examples}")
    return [part.astype(np.int64, copy=False) for part in parts]
