"""Each aggregator on tiny inputs with the answers worked out by hand (in the comments)."""

from __future__ import annotations

import pytest
import torch

from fedloom.aggregators import (
    bulyan,
    centered_clip,
    geometric_median,
    krum,
    median,
    multi_krum,
    norm_bound,
    trimmed_mean,
)
from fedloom.aggregators.krum import bulyan_selection
from fedloom.core.errors import AggregationError, ConfigError

LINE = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])


def test_median_odd_and_even() -> None:
    u = torch.tensor([[1.0, 10.0], [2.0, 20.0], [100.0, -50.0]])
    assert median(u, None).tolist() == [2.0, 10.0]
    assert median(torch.tensor([[1.0], [2.0], [3.0], [10.0]])).tolist() == [2.5]  # (2 + 3) / 2


def test_median_ignores_weights() -> None:
    assert median(LINE, torch.tensor([1.0, 1.0, 1.0, 1.0, 1e9])).tolist() == [2.0]


def test_trimmed_mean_drops_floor_beta_k_at_each_end() -> None:
    four = torch.tensor([[1.0], [2.0], [3.0], [10.0]])
    assert trimmed_mean(four, beta=0.25).tolist() == [2.5]   # b = 1: mean(2, 3)
    assert trimmed_mean(four, beta=0.2).tolist() == [4.0]    # b = floor(0.8) = 0: the mean
    assert trimmed_mean(LINE, beta=0.2).tolist() == [2.0]    # b = 1: mean(1, 2, 3)


def test_krum_scores_sum_the_n_minus_f_minus_2_nearest() -> None:
    # f = 1, n = 5: 2 neighbours. scores: 0 -> 1+4 = 5, 1 -> 1+1 = 2, 2 -> 1+1 = 2,
    # 3 -> 1+4 = 5, 100 -> 97^2+98^2; the tie between rows 1 and 2 goes to row 1
    assert krum(LINE, None, f=1).tolist() == [1.0]


def test_multi_krum_averages_the_m_best() -> None:
    assert multi_krum(LINE, None, f=1, m=3).tolist() == [1.0]   # rows 1, 2, 0: mean 1
    assert multi_krum(LINE, None, f=1).tolist() == [1.5]        # m = n - f = 4: rows 1, 2, 0, 3


def test_bulyan_selects_by_repeated_krum_then_averages_around_the_median() -> None:
    u = torch.tensor([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0], [100.0]])
    # n = 7, f = 1: theta = 5 picks. 7 left, 4 neighbours: rows 2 and 3 score 10 -> row 2;
    # 6 left, 3 neighbours: row 3 scores 9 -> 3; 5 left, 2 neighbours: rows 1 and 4 score 10
    # -> 1; 4 left, max(1, 1) neighbour: 4 and 5 score 1 -> 4; 3 left: 0 and 5 score 25 -> 0
    assert bulyan_selection(u, 1).tolist() == [2, 3, 1, 4, 0]
    # values 0..4, median 2, beta = theta - 2f = 3 closest: 1, 2, 3
    assert bulyan(u, None, f=1).tolist() == [2.0]


def test_geometric_median_one_smoothed_weiszfeld_step() -> None:
    u, w = torch.tensor([[0.0], [4.0]]), torch.tensor([3.0, 1.0])
    # start at the weighted mean 1; distances 1 and 3; b = (0.75 / 1, 0.25 / 3);
    # v = (0.25 / 3 * 4) / (0.75 + 0.25 / 3) = 0.4
    assert geometric_median(u, w, iterations=1).item() == pytest.approx(0.4, rel=1e-6)
    # converged: the weighted geometric median in 1-D is the weighted median, 0
    assert abs(geometric_median(u, w, iterations=200, ftol=0.0).item()) < 1e-4


def test_geometric_median_of_three_points_on_a_line() -> None:
    out = geometric_median(torch.tensor([[0.0], [1.0], [10.0]]), None, iterations=500, ftol=0)
    assert out.item() == pytest.approx(1.0, abs=1e-4)


def test_norm_bound_clips_then_takes_the_weighted_mean() -> None:
    u = torch.tensor([[0.0, 0.0], [3.0, 4.0]])     # norms 0 and 5
    assert torch.allclose(norm_bound(u, None, bound=1.0), torch.tensor([0.3, 0.4]))
    # weights 1 : 3 -> 0.75 * (0.6, 0.8)
    assert torch.allclose(norm_bound(u, torch.tensor([1.0, 3.0]), bound=1.0),
                          torch.tensor([0.45, 0.6]))
    assert torch.allclose(norm_bound(u, None, bound=10.0), torch.tensor([1.5, 2.0]))


def test_centered_clip_steps_by_hand() -> None:
    u = torch.tensor([[0.0], [10.0]])
    # from 0: deviations 0 and 10 -> clipped 0 and 1 -> v = 0.5
    assert centered_clip(u, None, tau=1.0).tolist() == [0.5]
    # then deviations -0.5 (kept) and 9.5 (-> 1): v = 0.5 + 0.25
    assert centered_clip(u, None, tau=1.0, iterations=2).tolist() == [0.75]
    assert centered_clip(u, None, tau=1.0, center=torch.tensor([10.0])).tolist() == [9.5]


@pytest.mark.parametrize(("call", "says"), [
    (lambda: krum(LINE, None, f=2), "n > 2f + 2"),
    (lambda: multi_krum(LINE, None, f=1, m=6), "m = 6"),
    (lambda: bulyan(LINE, None, f=1), "n >= 4f + 3"),
    (lambda: trimmed_mean(LINE, beta=0.5), "beta = 0.5"),
    (lambda: norm_bound(LINE, None, bound=0.0), "bound = 0.0"),
    (lambda: centered_clip(LINE, None, tau=-1.0), "tau = -1.0"),
    (lambda: geometric_median(LINE, None, nu=0.0), "nu = 0.0"),
])
def test_impossible_settings_are_named(call, says: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match=says.replace("+", r"\+")):
        call()


def test_bad_matrices_and_weights_are_named() -> None:
    with pytest.raises(AggregationError, match="K x P"):
        median(torch.zeros(3))
    with pytest.raises(AggregationError, match=r"shape \(5,\)"):
        norm_bound(LINE, torch.ones(4), bound=1.0)
    with pytest.raises(AggregationError, match="not all 0"):
        geometric_median(LINE, torch.zeros(5))
