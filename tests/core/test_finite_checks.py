"""The blockwise finiteness checks of updates and of a new global model agree with the
whole-tensor definitions, including sums that overflow while every value is finite."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.core.finite import CHECK_BLOCK, all_finite
from fedloom.core.packages import update_problem
from fedloom.runtime.loop import adoptable

SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 3e38, -3e38, 0.0, 1.5])


@st.composite
def vectors(draw: st.DrawFn) -> torch.Tensor:
    """Lengths around the block size, with a few special values at drawn places."""
    n = draw(st.sampled_from([0, 1, 7, CHECK_BLOCK - 1, CHECK_BLOCK, CHECK_BLOCK + 1,
                              3 * CHECK_BLOCK + 5]))
    x = torch.randn(n, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    for _ in range(draw(st.integers(0, 3)) if n else 0):
        x[draw(st.integers(0, n - 1))] = draw(SPECIAL)
    if n and draw(st.booleans()):  # many huge values: their sum overflows, they are finite
        x[: min(n, 64)] = 3e38
    return x


@settings(max_examples=60, deadline=None)
@given(vectors())
def test_all_finite_is_isfinite_all(x: torch.Tensor) -> None:
    assert all_finite(x) == bool(torch.isfinite(x).all())


@settings(max_examples=60, deadline=None)
@given(vectors())
def test_adoptable_is_a_finite_squared_norm(x: torch.Tensor) -> None:
    expected = bool(torch.isfinite(x).all()) and math.isfinite(
        float(x.double().square().sum()) if x.numel() else 0.0) and \
        float(x.double().square().sum()) <= torch.finfo(torch.float32).max
    assert adoptable(x) == expected


def test_hand_computed_cases() -> None:
    assert all_finite(torch.full((CHECK_BLOCK * 2,), 3e38))  # every block's sum overflows
    late = torch.zeros(CHECK_BLOCK * 2 + 3)
    late[-1] = math.nan  # in the last, short block
    assert not all_finite(late)
    assert update_problem(late, late.numel()) == "update contains NaN or infinite values"
    assert update_problem(torch.zeros(3), 4) == "update has shape (3,), expected (4,)"
    assert adoptable(torch.full((10,), 1e18))  # squared norm 1e37: finite in float32
    assert not adoptable(torch.full((10,), 1e19))  # 1e39 overflows float32
    assert adoptable(torch.full((4 * CHECK_BLOCK,), 1.0))
