"""Properties every aggregator must have, on random inputs (hypothesis): the order of the
updates does not matter; identical honest updates come back unchanged; and with ``f``
Byzantine updates of any value the result stays where the theory puts it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

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

Agg = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
ALL: dict[str, Agg] = {
    "median": median,
    "trimmed_mean": lambda u, w: trimmed_mean(u, w, beta=0.2),
    "krum": lambda u, w: krum(u, w, f=1),
    "multi_krum": lambda u, w: multi_krum(u, w, f=1, m=3),
    "bulyan": lambda u, w: bulyan(u, w, f=1),
    "geometric_median": lambda u, w: geometric_median(u, w, iterations=10),
    "norm_bound": lambda u, w: norm_bound(u, w, bound=1.0),
    "centered_clip": lambda u, w: centered_clip(u, w, tau=1.0, iterations=3),
}
SETTINGS = settings(max_examples=40, deadline=None)
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


def _matrix(seed: int, k: int, p: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(k, p, generator=gen, dtype=torch.float64) * scale


@SETTINGS
@given(name=st.sampled_from(sorted(ALL)), seed=st.integers(0, 2**31), k=st.integers(7, 12),
       p=st.integers(1, 6), data=st.data())
def test_permutation_invariance(name: str, seed: int, k: int, p: int, data: st.DataObject) -> None:
    updates = _matrix(seed, k, p)
    weights = torch.rand(k, generator=torch.Generator().manual_seed(seed + 1),
                         dtype=torch.float64) + 0.5
    perm = torch.tensor(data.draw(st.permutations(range(k))))
    a = ALL[name](updates, weights)
    b = ALL[name](updates[perm], weights[perm])
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-12), (a, b)


@SETTINGS
@given(name=st.sampled_from(sorted(ALL)), row=st.lists(st.floats(-0.4, 0.4), min_size=1,
                                                       max_size=5), k=st.integers(7, 11))
@example(name="norm_bound", row=[0.4] * 5, k=7)  # the largest norm drawn: 0.894, inside
@example(name="centered_clip", row=[-0.4] * 5, k=7)
def test_identical_honest_updates_come_back_unchanged(name: str, row: list[float],
                                                      k: int) -> None:
    v = torch.tensor(row, dtype=torch.float64)   # norm <= 0.4 * sqrt(5) < 1 = bound, tau
    updates = v.expand(k, -1).clone()
    assert torch.allclose(ALL[name](updates, None), v, rtol=1e-12, atol=1e-12)


def _with_byzantine(seed: int, honest: int, p: int, byzantine: list[float],
                    f: int) -> tuple[torch.Tensor, torch.Tensor]:
    good = _matrix(seed, honest, p)
    bad = torch.tensor(byzantine, dtype=torch.float64)[:f * p].reshape(f, p)
    return good, torch.cat([bad, good])  # Byzantine rows first: the lowest client ids


def _inside(out: torch.Tensor, good: torch.Tensor, slack: float = 0.0) -> bool:
    lo, hi = good.min(dim=0).values, good.max(dim=0).values
    width = (hi - lo) * slack
    return bool(((out >= lo - width - 1e-12) & (out <= hi + width + 1e-12)).all())


@SETTINGS
@given(seed=st.integers(0, 2**31), f=st.integers(1, 3), extra=st.integers(1, 4),
       p=st.integers(1, 4), byzantine=st.lists(finite, min_size=12, max_size=12))
def test_median_and_trimmed_mean_stay_in_the_honest_box(seed: int, f: int, extra: int, p: int,
                                                        byzantine: list[float]) -> None:
    good, everyone = _with_byzantine(seed, f + extra, p, byzantine, f)  # f < n / 2
    assert _inside(median(everyone), good)
    n = everyone.shape[0]
    if n > 2 * f + 1:  # beta < 1/2
        assert _inside(trimmed_mean(everyone, beta=(f + 0.5) / n), good)  # floor(beta n) = f


far = st.lists(st.floats(1e4, 1e6) | st.floats(-1e6, -1e4), min_size=12, max_size=12)


@SETTINGS
@given(seed=st.integers(0, 2**31), f=st.integers(1, 3), extra=st.integers(3, 5),
       p=st.integers(1, 4), byzantine=far)
def test_krum_and_multi_krum_pick_honest_updates_against_far_byzantine_ones(
        seed: int, f: int, extra: int, p: int, byzantine: list[float]) -> None:
    # n - f honest updates in N(0, 1): every Byzantine score holds at least n - 2f - 1 >= 2
    # squared distances >= (1e4 - 10)^2, far above any honest score
    good, everyone = _with_byzantine(seed, f + extra, p, byzantine, f)   # n = 2f + extra
    out = krum(everyone, None, f=f)
    assert any(torch.equal(out, row) for row in good)
    assert _inside(multi_krum(everyone, None, f=f), good)   # m = n - f: exactly the honest


@SETTINGS
@given(seed=st.integers(0, 2**31), f=st.integers(1, 2), extra=st.integers(3, 5),
       p=st.integers(1, 4), byzantine=st.lists(finite, min_size=8, max_size=8))
def test_bulyan_stays_within_the_honest_spread_of_the_honest_box(
        seed: int, f: int, extra: int, p: int, byzantine: list[float]) -> None:
    # its median lies in the honest range; its beta values are no farther from it than the
    # beta-th nearest honest value, so each coordinate is within the honest width of the box
    good, everyone = _with_byzantine(seed, 3 * f + extra, p, byzantine, f)  # n >= 4f + 3
    assert _inside(bulyan(everyone, None, f=f), good, slack=1.0)


@SETTINGS
@given(seed=st.integers(0, 2**31), k=st.integers(1, 10), p=st.integers(1, 5),
       scale=st.floats(0.01, 1e4), bound=st.floats(0.01, 100.0))
def test_norm_bound_and_centered_clip_move_at_most_their_radius(
        seed: int, k: int, p: int, scale: float, bound: float) -> None:
    updates = _matrix(seed, k, p, scale)
    assert float(norm_bound(updates, None, bound=bound).norm()) <= bound * (1 + 1e-9)
    assert float(centered_clip(updates, None, tau=bound, iterations=3).norm()) <= (
        3 * bound * (1 + 1e-9))
