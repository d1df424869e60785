"""The FedProx and LEAF synthetic federated benchmarks, generated deterministically from a seed.

Both follow the generators of the original scripts (see ``shared/data/SOURCES.md``) with numpy's
``Generator`` in place of the global random state, so the numbers differ from the published
JSON files but the distributions are the same. ``x ~ N(v, Sigma)`` with diagonal ``Sigma`` is
drawn as ``v + sqrt(diag(Sigma)) * z`` with ``z`` standard normal.

Example:
    >>> data = fedprox_synthetic(alpha=0.5, beta=0.5, num_users=5, seed=0)
    >>> data.num_clients, data.input_shape, data.num_classes
    (5, (60,), 10)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedloom.core.rng import SERVER, Purpose, numpy_generator
from fedloom.core.validate import Problems
from fedloom.data.config import DatasetName
from fedloom.data.dataset import ArrayData, FederatedData, contiguous_ranges

Array = np.ndarray


def fedprox_synthetic(
    *,
    alpha: float,
    beta: float,
    num_users: int = 30,
    num_features: int = 60,
    num_classes: int = 10,
    iid: bool = False,
    test_fraction: float = 0.1,
    seed: int,
) -> FederatedData:
    """FedProx's Synthetic(alpha, beta) (Li et al., MLSys 2020), or its IID variant.

    User k has ``int(lognormal(4, 2)) + 50`` examples. Non-IID: ``u_k ~ N(0, alpha)`` (alpha is
    the standard deviation, as in the original script); ``W_k``, ``b_k`` have entries
    ``~ N(u_k, 1)``; ``B_k ~ N(0, beta)``; ``v_k`` has entries ``~ N(B_k, 1)``;
    ``x ~ N(v_k, diag(j^-1.2))``; ``y = argmax(x W_k + b_k)``. IID: one ``W``, ``b ~ N(0, 1)``
    shared by all users and ``v_k = 0`` (alpha and beta unused).

    Returns:
        The users' shuffled examples split ``1 - test_fraction`` / ``test_fraction``; user k is
        client k, ``client_test[k]`` indexes its test split inside ``test``.

    Raises:
        ConfigError: a parameter is out of range (every problem listed).
    """
    p = _common_checks(num_users, num_features, num_classes, test_fraction)
    p.check(alpha >= 0, "alpha", alpha, "must be >= 0")
    p.check(beta >= 0, "beta", beta, "must be >= 0")
    p.raise_if_any()
    rng = numpy_generator(seed, 0, SERVER, Purpose.DATA)
    sizes = rng.lognormal(4.0, 2.0, num_users).astype(np.int64) + 50
    std = _feature_std(num_features)
    if iid:
        means = np.zeros((num_users, num_features))
        shared_w = rng.normal(0.0, 1.0, (num_features, num_classes))
        shared_b = rng.normal(0.0, 1.0, num_classes)
    else:
        u = rng.normal(0.0, alpha, num_users)
        big_b = rng.normal(0.0, beta, num_users)
        means = rng.normal(big_b[:, None], 1.0, (num_users, num_features))
    xs: list[Array] = []
    ys: list[Array] = []
    for k in range(num_users):
        if iid:
            w, b = shared_w, shared_b
        else:
            w = rng.normal(u[k], 1.0, (num_features, num_classes))
            b = rng.normal(u[k], 1.0, num_classes)
        x = means[k] + std * rng.standard_normal((int(sizes[k]), num_features))
        xs.append(x)
        ys.append(np.argmax(x @ w + b, axis=1))
    name = DatasetName.SYNTHETIC_IID if iid else DatasetName.SYNTHETIC
    return _split_users(str(name), xs, ys, test_fraction, rng, num_classes)


def leaf_synthetic(
    *,
    num_tasks: int,
    num_features: int = 60,
    num_classes: int = 10,
    num_clusters: int = 2,
    test_fraction: float = 0.1,
    seed: int,
) -> FederatedData:
    """LEAF's synthetic benchmark (Caldas et al., 2018): tasks drawn from a mixture of models.

    Task t has ``min(int(lognormal(3, 2)) + 5, 1000)`` examples and a cluster c drawn uniformly.
    ``Q ~ N(0, 1)`` of shape (d+1, C, K) with K = num_clusters; per cluster ``loc ~ N(0, 1)``,
    ``mu_c ~ N(loc, 1)`` (a K-vector). Per task ``B ~ N(0, 1)``, ``m ~ N(B, 1)``,
    ``x ~ N(m, diag((i+1)^-1.2))``, ``model_info ~ N(mu_c, 0.1)``, ``w = Q @ model_info`` and
    ``y = argmax([1, x] w + N(0, 0.1))``.

    As in LEAF's ``data_generator.py``, the leading bias column of ones is used to draw the
    labels and then dropped: the model input has ``num_features`` columns, not d+1.
    (LEAF's own softmax normalises over the wrong axis; the labels here use the plain argmax of
    the logits, as the formulas state.)

    Raises:
        ConfigError: a parameter is out of range (every problem listed).
    """
    p = _common_checks(num_tasks, num_features, num_classes, test_fraction)
    p.check(num_clusters >= 1, "num_clusters", num_clusters, "must be >= 1")
    p.raise_if_any()
    rng = numpy_generator(seed, 0, SERVER, Purpose.DATA)
    sizes = np.minimum(rng.lognormal(3.0, 2.0, num_tasks).astype(np.int64) + 5, 1000)
    q = rng.normal(0.0, 1.0, (num_features + 1, num_classes, num_clusters))
    loc = rng.normal(0.0, 1.0, num_clusters)
    cluster_means = rng.normal(loc[:, None], 1.0, (num_clusters, num_clusters))
    clusters = rng.integers(0, num_clusters, num_tasks)
    std = _feature_std(num_features)
    xs: list[Array] = []
    ys: list[Array] = []
    for t in range(num_tasks):
        n = int(sizes[t])
        big_b = rng.normal(0.0, 1.0)
        m = rng.normal(big_b, 1.0, num_features)
        x = m + std * rng.standard_normal((n, num_features))
        w = q @ rng.normal(cluster_means[clusters[t]], 0.1)  # (d+1, C)
        logits = x @ w[1:] + w[0] + rng.normal(0.0, 0.1, (n, num_classes))
        xs.append(x)
        ys.append(np.argmax(logits, axis=1))
    return _split_users(str(DatasetName.LEAF_SYNTHETIC), xs, ys, test_fraction, rng, num_classes)


def _common_checks(
    num_users: int, num_features: int, num_classes: int, test_fraction: float
) -> Problems:
    p = Problems()
    p.check(num_users >= 1, "num_users", num_users, "must be >= 1")
    p.check(num_features >= 1, "num_features", num_features, "must be >= 1")
    p.check(num_classes >= 2, "num_classes", num_classes, "must be >= 2")
    p.check(0 < test_fraction < 1, "test_fraction", test_fraction, "must be in (0, 1)")
    return p


def _feature_std(num_features: int) -> Array:
    """sqrt of Sigma_jj = j^-1.2 for j = 1..d."""
    return np.arange(1, num_features + 1, dtype=np.float64) ** -0.6


def train_size(n: int, test_fraction: float) -> int:
    """Examples of ``n`` kept for training: ``int((1 - test_fraction) n)``, at least 1."""
    return max(1, min(n, int(n * (1.0 - test_fraction) + 1e-9)))


def _split_users(
    name: str,
    xs: Sequence[Array],
    ys: Sequence[Array],
    test_fraction: float,
    rng: np.random.Generator,
    num_classes: int,
) -> FederatedData:
    """Shuffle each user's examples, split train/test, and stack the users."""
    parts: dict[str, list[Array]] = {"x_tr": [], "y_tr": [], "x_te": [], "y_te": []}
    for x, y in zip(xs, ys, strict=True):
        order = rng.permutation(len(y))
        cut = train_size(len(y), test_fraction)
        tr, te = order[:cut], order[cut:]
        parts["x_tr"].append(x[tr])
        parts["y_tr"].append(y[tr])
        parts["x_te"].append(x[te])
        parts["y_te"].append(y[te])
    return FederatedData(
        name=name,
        train=_array_data(parts["x_tr"], parts["y_tr"]),
        test=_array_data(parts["x_te"], parts["y_te"]),
        client_train=contiguous_ranges([len(y) for y in parts["y_tr"]]),
        client_test=contiguous_ranges([len(y) for y in parts["y_te"]]),
        num_classes=num_classes,
        input_shape=(xs[0].shape[1],),
    )


def _array_data(xs: Sequence[Array], ys: Sequence[Array]) -> ArrayData:
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
    y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
    return ArrayData(x=x, y=y)
