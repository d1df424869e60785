from __future__ import annotations

import pytest
import torch

from fedloom.algorithms.qffl import QFFL, QFFLOptions, qffl_weights
from fedloom.core.errors import ConfigError
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult


def _result(cid: int, params: list[float], loss: float) -> ClientResult:
    return ClientResult(round=1, client_id=cid, params=torch.tensor(params, dtype=torch.float64),
                        num_examples=10, num_steps=1, metrics={"start_loss": Mean.of(loss, 10)})


def test_weights_by_hand() -> None:
    # q = 2, L = 10: F = (1, 3), ||dw||^2 = (4, 1)
    scale, h = qffl_weights([1.0, 3.0], [4.0, 1.0], q=2.0, lipschitz=10.0)
    assert scale == [1.0, 9.0]
    assert h == pytest.approx((2 * 1 * 4 + 10 * 1) + (2 * 3 * 1 + 10 * 9))


def test_server_step_by_hand() -> None:
    algo = QFFL(QFFLOptions(q=1.0))
    state = algo.init(torch.zeros(1, dtype=torch.float64))
    algo.configure(1, state, [0, 1], ClientConfig(lr=0.5))      # L = 2
    new = algo.aggregate(1, state, [_result(0, [1.0], 1.0), _result(1, [-1.0], 3.0)])
    # dw = L (w - w_k) = (-2, 2); D = (-2, 6); h = (1*4 + 2*1) + (1*4 + 2*3) = 16
    assert new.params.item() == pytest.approx(0 - (-2 + 6) / 16)


def test_q_zero_is_the_plain_mean() -> None:
    algo = QFFL(QFFLOptions(q=0.0))
    state = algo.init(torch.zeros(1, dtype=torch.float64))
    algo.configure(1, state, [0, 1], ClientConfig(lr=0.1))
    new = algo.aggregate(1, state, [_result(0, [1.0], 5.0), _result(1, [3.0], 0.1)])
    assert new.params.item() == pytest.approx(2.0)


def test_negative_q_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"q = -1\.0: must be >= 0"):
        QFFLOptions(q=-1.0)
