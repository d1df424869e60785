"""FedProx and LEAF synthetic generators: sizes, shapes, splits, determinism, heterogeneity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom.core.errors import ConfigError
from fedloom.core.rng import SERVER, Purpose, numpy_generator
from fedloom.data.dataset import FederatedData
from fedloom.data.synthetic import fedprox_synthetic, leaf_synthetic


def user_sizes(data: FederatedData) -> np.ndarray:
    assert data.client_test is not None
    train = np.array([len(c) for c in data.client_train])
    test = np.array([len(c) for c in data.client_test])
    return np.stack([train, test], axis=1)


def assert_well_formed(data: FederatedData, num_users: int, num_features: int) -> None:
    assert data.num_clients == num_users and data.input_shape == (num_features,)
    assert data.train.x.dtype == torch.float32 and data.train.y.dtype == torch.int64
    assert data.train.x.shape == (len(data.train), num_features)
    assert (data.train.mean, data.train.std) == (0.0, 1.0)
    for split, index in ((data.train, data.client_train), (data.test, data.client_test)):
        assert index is not None
        assert int(split.y.min()) >= 0 and int(split.y.max()) < data.num_classes
        assert torch.equal(torch.cat(index), torch.arange(len(split)))  # users tile the split
        assert all(i.dtype == torch.int64 for i in index)


def test_fedprox_sizes_follow_the_formula() -> None:
    data = fedprox_synthetic(alpha=0.5, beta=0.5, seed=7)
    assert_well_formed(data, 30, 60)
    # The sizes are the first draw of the seed's DATA stream: int(lognormal(4, 2)) + 50.
    expected = numpy_generator(7, 0, SERVER, Purpose.DATA).lognormal(4, 2, 30).astype(int) + 50
    sizes = user_sizes(data)
    np.testing.assert_array_equal(sizes.sum(axis=1), expected)
    assert sizes.sum(axis=1).min() >= 50
    # 90/10 split as in the FedProx script: train = int(0.9 n).
    np.testing.assert_array_equal(sizes[:, 0], (0.9 * expected).astype(int))


def test_leaf_sizes_follow_the_formula_and_drop_the_bias_column() -> None:
    data = leaf_synthetic(num_tasks=50, num_features=20, num_classes=5, num_clusters=3, seed=3)
    assert_well_formed(data, 50, 20)
    draws = numpy_generator(3, 0, SERVER, Purpose.DATA).lognormal(3, 2, 50).astype(int)
    np.testing.assert_array_equal(user_sizes(data).sum(axis=1), np.minimum(draws + 5, 1000))
    assert user_sizes(data)[:, 0].min() >= 1 and user_sizes(data)[:, 1].min() >= 1
    assert not torch.any(torch.all(data.train.x == 1.0, dim=0))  # no column of ones


@pytest.mark.parametrize("make", [
    lambda seed: fedprox_synthetic(alpha=1, beta=1, num_users=8, seed=seed),
    lambda seed: fedprox_synthetic(alpha=0, beta=0, num_users=8, iid=True, seed=seed),
    lambda seed: leaf_synthetic(num_tasks=8, seed=seed),
])
def test_deterministic_per_seed(make: object) -> None:
    assert callable(make)
    a, b, c = make(0), make(0), make(1)
    for x, y in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y)
    assert a.train.x.shape != c.train.x.shape or not torch.equal(a.train.x, c.train.x)


def test_iid_features_have_the_stated_covariance() -> None:
    data = fedprox_synthetic(alpha=0, beta=0, num_users=30, iid=True, seed=0)
    x = torch.cat([data.train.x, data.test.x]).double().numpy()
    assert len(x) > 5000
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.05)  # v_k = 0
    variance = np.arange(1, 61) ** -1.2
    np.testing.assert_allclose(x.var(axis=0), variance, rtol=0.1)


def _transfer_accuracy(data: FederatedData) -> float:
    """Accuracy on the second half of the users of a linear scorer fit to the first half."""
    x = np.hstack([data.train.x.double().numpy(), np.ones((len(data.train), 1))])
    y = data.train.y.numpy()
    half = data.num_clients // 2
    fit = torch.cat(data.client_train[:half]).numpy()
    held = torch.cat(data.client_train[half:]).numpy()
    gram = x[fit].T @ x[fit] + 1e-6 * np.eye(x.shape[1])  # least squares, slightly ridged
    w = np.linalg.solve(gram, x[fit].T @ np.eye(data.num_classes)[y[fit]])
    return float((np.argmax(x[held] @ w, axis=1) == y[held]).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_iid_users_share_one_model_and_non_iid_users_do_not(seed: int) -> None:
    shared = fedprox_synthetic(alpha=0, beta=0, iid=True, seed=seed)
    own = fedprox_synthetic(alpha=0, beta=0, seed=seed)
    assert _transfer_accuracy(shared) > 0.5 > 0.2 > _transfer_accuracy(own)


def _label_spread(data: FederatedData) -> float:
    """Mean total-variation distance between each user's label mix and the global one."""
    y = data.train.y.numpy()
    overall = np.bincount(y, minlength=10) / len(y)
    return float(np.mean([
        0.5 * np.abs(np.bincount(y[c.numpy()], minlength=10) / len(c) - overall).sum()
        for c in data.client_train
    ]))


def _feature_spread(data: FederatedData) -> float:
    """Across-user standard deviation of the users' mean feature value."""
    x = data.train.x.numpy()
    return float(np.std([x[c.numpy()].mean() for c in data.client_train]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_heterogeneity_grows_with_beta_and_is_lowest_for_iid(seed: int) -> None:
    low = fedprox_synthetic(alpha=0, beta=0, seed=seed)
    high = fedprox_synthetic(alpha=1, beta=1, seed=seed)
    same = fedprox_synthetic(alpha=0, beta=0, iid=True, seed=seed)
    assert _feature_spread(high) > 3 * _feature_spread(low)  # B_k ~ N(0, beta) shifts v_k
    assert _feature_spread(same) < 0.05  # v_k = 0 for every user
    assert _label_spread(same) < 0.25 < min(_label_spread(low), _label_spread(high))


def test_alpha_only_shifts_all_logits_equally() -> None:
    # u_k is added to every entry of W_k and b_k, i.e. to every class's logit alike, so it cannot
    # change an argmax: with the same seed the data are identical whatever alpha is.
    a = fedprox_synthetic(alpha=0.0, beta=1.0, num_users=10, seed=5)
    b = fedprox_synthetic(alpha=3.0, beta=1.0, num_users=10, seed=5)
    assert torch.equal(a.train.y, b.train.y) and torch.equal(a.train.x, b.train.x)


def test_bad_parameters_are_all_reported() -> None:
    with pytest.raises(ConfigError) as info:
        fedprox_synthetic(alpha=-1, beta=-1, num_users=0, num_classes=1, test_fraction=1.0, seed=0)
    assert len(info.value.problems) == 5
    with pytest.raises(ConfigError, match="num_clusters = 0"):
        leaf_synthetic(num_tasks=3, num_clusters=0, seed=0)
