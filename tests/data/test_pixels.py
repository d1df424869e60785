"""Scalar pixel statistics from the histogram: by hand, and against a float computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.data.pixels import uint8_mean_std


def test_by_hand() -> None:
    assert uint8_mean_std(torch.tensor([0, 255], dtype=torch.uint8)) == (0.5, 0.5)
    mean, std = uint8_mean_std(torch.tensor([[0, 0], [0, 255]], dtype=torch.uint8))
    assert mean == pytest.approx(0.25) and std == pytest.approx(math.sqrt(0.1875))
    assert uint8_mean_std(torch.full((3, 4), 51, dtype=torch.uint8)) == (pytest.approx(0.2), 1.0)
    assert uint8_mean_std(torch.zeros(0, dtype=torch.uint8)) == (0.0, 1.0)
    with pytest.raises(TypeError, match="expected uint8"):
        uint8_mean_std(torch.zeros(2))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 255), min_size=2, max_size=300))
def test_matches_a_float_computation(values: list[int]) -> None:
    x = np.array(values, dtype=np.float64) / 255
    mean, std = uint8_mean_std(torch.tensor(values, dtype=torch.uint8))
    assert mean == pytest.approx(x.mean(), abs=1e-12)
    assert std == pytest.approx(x.std() if x.std() > 1e-9 else 1.0, abs=1e-12)
