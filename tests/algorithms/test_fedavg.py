import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.algorithms import FedAvg, FedAvgOptions
from fedloom.algorithms.aggregate import weighted_mean
from fedloom.core.packages import ClientConfig, ClientResult


def _result(cid: int, params: list[float], n: int) -> ClientResult:
    return ClientResult(round=1, client_id=cid, params=torch.tensor(params), num_examples=n,
                        num_steps=1)


def test_fedavg_weights_by_examples_hand_computed() -> None:
    algo = FedAvg()
    state = algo.init(torch.zeros(2))
    new = algo.aggregate(1, state, [_result(0, [1.0, 2.0], 1), _result(1, [4.0, -1.0], 3)])
    assert torch.allclose(new.params, torch.tensor([3.25, -0.25]))
    assert new.round == 1


def test_server_lr_moves_part_way() -> None:
    algo = FedAvg(FedAvgOptions(server_lr=0.5))
    state = algo.init(torch.zeros(1))
    new = algo.aggregate(1, state, [_result(0, [2.0], 1)])
    assert torch.equal(new.params, torch.tensor([1.0]))


def test_no_results_keeps_model() -> None:
    algo = FedAvg()
    state = algo.init(torch.ones(3))
    assert torch.equal(algo.aggregate(1, state, []).params, torch.ones(3))


def test_configure_sends_shared_params_to_each_client() -> None:
    algo = FedAvg()
    state = algo.init(torch.ones(3))
    tasks = algo.configure(4, state, [2, 7], ClientConfig())
    assert [t.client_id for t in tasks] == [2, 7]
    assert all(t.params is state.params and t.round == 4 for t in tasks)


vectors = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=3, max_size=3)


@settings(max_examples=50)
@given(st.lists(st.tuples(vectors, st.integers(1, 50)), min_size=1, max_size=8))
def test_weighted_mean_idempotent_and_close_to_reference(items: list[tuple[list[float], int]]) \
        -> None:
    tensors = [torch.tensor(v) for v, _ in items]
    weights = [w for _, w in items]
    out = weighted_mean(tensors, weights)
    ref = (torch.stack(tensors).double() * torch.tensor(weights).double()[:, None]).sum(0) \
        / sum(weights)
    assert torch.allclose(out.double(), ref, atol=1e-3, rtol=1e-5)
    same = weighted_mean([tensors[0]] * len(items), weights)
    assert torch.allclose(same, tensors[0], atol=1e-4, rtol=1e-5)


def test_weighted_mean_bits_do_not_depend_on_blocks_or_threads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Block by block, on 1 or 2 threads, every element sees exactly the whole-tensor
    ``out.add_(x_k, alpha=w_k / W)`` sequence: bitwise the same result."""
    from fedloom.algorithms import aggregate
    from fedloom.core.threads import torch_threads

    gen = torch.Generator().manual_seed(0)
    n = 3 * aggregate.BLOCK + 77  # several blocks and a ragged end
    tensors = [torch.randn(n, generator=gen) for _ in range(5)]
    weights = [13.0, 600.0, 1.0, 77.0, 250.0]
    with torch_threads(1):
        ref = torch.zeros(n)
        for x, w in zip(tensors, weights):
            ref.add_(x, alpha=w / sum(weights))
    for block in (aggregate.BLOCK, 1 << 15, 1000):
        monkeypatch.setattr(aggregate, "BLOCK", block)
        for threads in (1, 2):
            with torch_threads(threads):
                assert torch.equal(weighted_mean(tensors, weights), ref), (block, threads)
