"""Split a dataset's examples over clients.

Every partitioner returns one sorted int64 index array per client; together they are disjoint
and cover ``range(n)`` exactly. All randomness comes from the ``rng`` argument, so the same
generator state gives the same split.

Example:
    >>> rng = np.random.default_rng(0)
    >>> [p.tolist() for p in iid(7, 3, rng)]
    [[2, 3, 4], [5, 6], [0, 1]]
"""

from __future__ import annotations

import numpy as np

from fedloom.core.errors import ConfigError, DataError

Parts = list[np.ndarray]

#: Dirichlet draws tried before giving up on ``min_examples``.
MAX_DIRICHLET_TRIES = 1000


def iid(n: int, num_clients: int, rng: np.random.Generator) -> Parts:
    """Shuffle ``range(n)`` and cut it into ``num_clients`` nearly equal parts.

    Raises:
        ConfigError: ``num_clients < 1``.
        DataError: ``num_clients > n``.
    """
    _check_clients(n, num_clients)
    return _sorted(np.array_split(rng.permutation(n), num_clients))


def dirichlet(
    labels: np.ndarray,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_examples: int = 1,
) -> Parts:
    """Label skew: each class is spread over clients with proportions ``~ Dir(alpha)``.

    Each class's indices are shuffled and cut at the cumulative proportions. The proportions are
    redrawn (for all classes at once) until every client has at least ``min_examples`` examples,
    at most :data:`MAX_DIRICHLET_TRIES` times. Small ``alpha`` gives few classes per client,
    large ``alpha`` nearly the global label mix.

    Raises:
        ConfigError: ``num_clients < 1``, ``alpha <= 0`` or ``min_examples < 0``.
        DataError: ``num_clients * min_examples > n``, or no draw met ``min_examples``.
    """
    labels = _labels(labels)
    if not alpha > 0:
        raise ConfigError(f"alpha = {alpha!r}: Dirichlet concentration must be > 0")
    n = labels.shape[0]
    _check_clients(n, num_clients, min_examples)
    classes, class_sizes = np.unique(labels, return_counts=True)
    for _ in range(MAX_DIRICHLET_TRIES):
        props = rng.dirichlet(np.full(num_clients, float(alpha)), size=len(classes))
        cuts = np.floor(np.cumsum(props, axis=1)[:, :-1] * class_sizes[:, None]).astype(np.int64)
        cuts = np.minimum(cuts, class_sizes[:, None])  # guard against rounding above the size
        bounds = np.concatenate([np.zeros((len(classes), 1), np.int64), cuts,
                                 class_sizes[:, None]], axis=1)
        if np.diff(bounds, axis=1).sum(axis=0).min() >= min_examples:
            break
    else:
        raise DataError(
            f"dirichlet partition: no draw in {MAX_DIRICHLET_TRIES} gave all {num_clients} "
            f"clients at least min_examples = {min_examples} examples with alpha = {alpha} "
            f"({n} examples, {len(classes)} classes); raise alpha or lower min_examples"
        )
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for row, cls in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == cls))
        for client, piece in enumerate(np.split(members, bounds[row, 1:-1])):
            pieces[client].append(piece)
    return _sorted([np.concatenate(p) for p in pieces])


def shards(
    labels: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> Parts:
    """FedAvg's pathological non-IID split.

    Indices are stably sorted by label and cut into ``num_clients * shards_per_client`` nearly
    equal contiguous shards; each client gets ``shards_per_client`` shards at random. With
    MNIST, 100 clients and 2 shards each, shards hold 300 examples and most clients see at most
    two labels.

    Raises:
        ConfigError: ``num_clients < 1`` or ``shards_per_client < 1``.
        DataError: ``num_clients * shards_per_client > n``.
    """
    labels = _labels(labels)
    if shards_per_client < 1:
        raise ConfigError(f"shards_per_client = {shards_per_client!r}: must be >= 1")
    n = labels.shape[0]
    _check_clients(n, num_clients)
    total = num_clients * shards_per_client
    if total > n:
        raise DataError(
            f"shards partition: num_clients * shards_per_client = {num_clients} * "
            f"{shards_per_client} = {total} shards, but only {n} examples"
        )
    pieces = np.array_split(np.argsort(labels, kind="stable"), total)
    owner = rng.permutation(total).reshape(num_clients, shards_per_client)
    return _sorted([np.concatenate([pieces[s] for s in row]) for row in owner])


def quantity(
    n: int, num_clients: int, sigma: float, rng: np.random.Generator, min_examples: int = 1
) -> Parts:
    """Quantity skew: client sizes ``~ lognormal(0, sigma)``, labels IID.

    Each client first gets ``min_examples``; the remaining ``n - num_clients * min_examples``
    examples are shared in proportion to the lognormal weights (largest remainders get the
    leftovers), so the sizes sum to exactly ``n``. ``sigma = 0`` gives equal sizes.

    Raises:
        ConfigError: ``num_clients < 1``, ``sigma < 0`` or ``min_examples < 0``.
        DataError: ``num_clients > n`` or ``num_clients * min_examples > n``.
    """
    if not sigma >= 0:
        raise ConfigError(f"quantity_sigma = {sigma!r}: must be >= 0")
    _check_clients(n, num_clients, min_examples)
    log_weights = rng.normal(0.0, sigma, num_clients)  # lognormal, normalised in log space
    sizes = quantity_sizes(n, np.exp(log_weights - log_weights.max()), min_examples)
    return _sorted(np.split(rng.permutation(n), np.cumsum(sizes)[:-1]))


def quantity_sizes(n: int, weights: np.ndarray, min_examples: int) -> np.ndarray:
    """Integer sizes ``>= min_examples`` summing to ``n``, the surplus shared by ``weights``."""
    spare = n - len(weights) * min_examples
    share = weights / weights.sum() * spare
    sizes: np.ndarray = np.floor(share).astype(np.int64)
    leftover = spare - int(sizes.sum())
    if leftover > 0:
        sizes[np.argsort(sizes - share, kind="stable")[:leftover]] += 1
    sizes += min_examples
    return sizes


def _labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a 1-d integer array, got {labels.dtype} {labels.shape}")
    return labels


def _check_clients(n: int, num_clients: int, min_examples: int = 0) -> None:
    if num_clients < 1:
        raise ConfigError(f"num_clients = {num_clients!r}: must be >= 1")
    if min_examples < 0:
        raise ConfigError(f"min_examples = {min_examples!r}: must be >= 0")
    if num_clients > n:
        raise DataError(f"cannot split {n} examples over num_clients = {num_clients} clients")
    if num_clients * min_examples > n:
        raise DataError(
            f"num_clients * min_examples = {num_clients} * {min_examples} = "
            f"{num_clients * min_examples} exceeds the {n} examples available"
        )


def _sorted(parts: list[np.ndarray]) -> Parts:
    return [np.sort(p).astype(np.int64, copy=False) for p in parts]
