import torch
from hypothesis import given
from hypothesis import strategies as st

from fedloom.core.metrics import Mean, combine, values
from fedloom.core.rng import Purpose, derive_seed, torch_generator


def test_streams_are_deterministic_and_independent() -> None:
    a = torch.randn(5, generator=torch_generator(1, 2, 3, Purpose.BATCHES))
    b = torch.randn(5, generator=torch_generator(1, 2, 3, Purpose.BATCHES))
    assert torch.equal(a, b)
    keys = {(1, 2, 3, "batches"), (1, 2, 3, "cohort"), (1, 2, 4, "batches"),
            (1, 3, 3, "batches"), (2, 2, 3, "batches"), (12, 2, 3, "batches"),
            (1, 23, 3, "batches")}
    assert len({derive_seed(*k) for k in keys}) == len(keys)


def test_generators_do_not_touch_global_rng() -> None:
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    torch.rand(3, generator=torch_generator(0, 1, 2, Purpose.DATA))
    assert torch.equal(torch.rand(3), expected)


def test_means_combine_exactly() -> None:
    bag = combine([{"loss": Mean.of(2.0, 3)}, {"loss": Mean.of(6.0, 1), "acc": Mean.of(1, 4)}])
    assert values(bag) == {"loss": 3.0, "acc": 1.0}


@given(st.lists(st.tuples(st.floats(-1e3, 1e3), st.floats(0.1, 1e3)), min_size=1, max_size=20))
def test_mean_combination_is_weighted_mean(pairs: list[tuple[float, float]]) -> None:
    total = sum((Mean.of(v, w) for v, w in pairs), Mean(0.0, 0.0))
    expected = sum(v * w for v, w in pairs) / sum(w for _, w in pairs)
    assert abs(total.value - expected) <= 1e-9 * max(1.0, abs(expected))
