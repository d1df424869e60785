"""Sample-level DP-SGD: plain SGD in the limit, clipping checked by hand, every fleet agrees."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from fedloom import ClientConfig, LocalSpec
from fedloom.algorithms.base import PerExampleClip
from fedloom.core.rng import torch_generator
from fedloom.fleets.vectorized import VectorizedTrainer
from fedloom.models import cnn, logreg, mlp
from fedloom.privacy.local import sample_dp
from fedloom.privacy.sample import clipped_sum
from tests.conftest import make_image_data
from tests.fleets.test_vectorized import make_spec, make_tasks, max_diff, results, serial

pytestmark = pytest.mark.usefixtures("one_thread")


MLP = partial(mlp, (1, 6, 6), 4, 16)
UNEQUAL = (1, 3, 10, 25, 47)


def private(clip: float, z: float) -> LocalSpec:
    return sample_dp(LocalSpec(), clip=clip, noise_multiplier=z, seed=11)


def test_huge_clip_and_no_noise_is_plain_sgd() -> None:
    data = make_image_data(per_client=UNEQUAL)
    cfg = ClientConfig(epochs=2, batch_size=4, lr=0.1, momentum=0.5)
    plain = make_spec(data, MLP)
    dp = make_spec(data, MLP, local=private(1e9, 0.0))
    tasks = make_tasks(plain, [cfg] * 5)
    want, got = serial(plain, tasks), serial(dp, tasks)
    assert max_diff(want, got) < 1e-5
    moved = max(float((r.params - t.params).abs().max()) for r, t in zip(results(got), tasks))
    assert moved > 1e-2
    for w, g in zip(results(want), results(got)):
        assert g.metrics["train_loss"].value == pytest.approx(w.metrics["train_loss"].value,
                                                              rel=1e-5)


class Linear1(nn.Module):
    """y_hat = w . x; with the loss (y_hat - t)^2 / 2 example i's gradient is
    (w . x_i - t_i) x_i."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)[:, :2] @ self.w


def test_clipped_sum_by_hand() -> None:
    """Gradients (3, 4) (norm 5), (0.3, 0.4) (norm 0.5), (0, -2) with clip 1: the first is
    scaled by 1/5, the second kept, the third scaled by 1/2; padding (weight 0) dropped."""
    g = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, -2.0], [100.0, 100.0]])
    out = clipped_sum([g], torch.tensor([1.0, 1.0, 1.0, 0.0]), 1.0)[0]
    torch.testing.assert_close(out, torch.tensor([0.6 + 0.3, 0.8 + 0.4 - 1.0]))
    # split over two tensors: the norm is over the whole example's gradient
    a, b = clipped_sum([g[:, :1], g[:, 1:]], torch.ones(4), 1.0)
    assert float(a) == pytest.approx(0.6 + 0.3 + 0.0 + 100 / (2 * 100.0**2) ** 0.5)
    assert float(b) == pytest.approx(0.8 + 0.4 - 1.0 + 100 / (2 * 100.0**2) ** 0.5)


def test_every_example_is_clipped_in_the_trainer() -> None:
    """One step of DP-SGD without noise on the linear model, by hand: w1 = -lr/n sum_i
    clip((w0 . x_i - t_i) x_i) with w0 = 0 and t_i = y_i + 1: the gradients -t_i x_i."""
    data = make_image_data(num_clients=1, per_client=(4,))
    clip, lr = 0.5, 0.1
    spec = make_spec(data, Linear1, local=private(clip, 0.0),
                     loss_fn=lambda out, y: 0.5 * ((out - y.float() - 1) ** 2).mean())
    task = make_tasks(spec, [ClientConfig(steps=1, batch_size=0, lr=lr)])[0]
    got = results(serial(spec, [task]))[0].params
    x, y = spec.train.batch(spec.client_indices[0])
    grads = -(y.float() + 1).unsqueeze(1) * x.reshape(4, -1)[:, :2]
    norms = grads.norm(dim=1)
    assert bool((norms > clip).all())  # every example's contribution is clipped here
    want = -lr * (grads * (clip / norms).unsqueeze(1)).sum(0) / 4
    torch.testing.assert_close(got, want)


def test_noise_is_the_clients_own_stream() -> None:
    """With zero-valued gradients left (clip tiny), one step moves the model by exactly
    -lr * z * C * N / n, N the client's (seed, round, client_id, 'dp_sgd') draw."""
    data = make_image_data(num_clients=1, per_client=(4,))
    clip, z, lr = 1e-12, 3.0, 0.1
    spec = make_spec(data, partial(logreg, (1, 6, 6), 4),
                     local=private(clip, z))
    task = make_tasks(spec, [ClientConfig(steps=1, batch_size=0, lr=lr)])[0]
    got = results(serial(spec, [task]))[0].params
    gen = torch_generator(11, 1, 0, "dp_sgd")
    noise = torch.randn(got.shape, generator=gen)
    torch.testing.assert_close(got - task.params, -lr * z * clip * noise / 4, atol=1e-7,
                               rtol=1e-5)


@pytest.mark.parametrize("cfg", [ClientConfig(epochs=2, batch_size=10, lr=0.1),
                                 ClientConfig(steps=7, batch_size=4, lr=0.05, momentum=0.9,
                                              weight_decay=1e-3)])
def test_vectorized_agrees_with_serial(cfg: ClientConfig) -> None:
    """Same seed, same per-example clipping and noise: within 1e-5 on every parameter, from
    torch.func directly and from the recorded graph; clipping and noise are both active."""
    spec = make_spec(make_image_data(per_client=UNEQUAL), MLP, local=private(0.5, 1.0))
    tasks = make_tasks(spec, [cfg] * 5)
    want = serial(spec, tasks)
    for trace_after in (0, 1):
        got = VectorizedTrainer(spec, trace_after=trace_after).fit_many(tasks)
        assert max_diff(want, got) <= 1e-5
        for w, g in zip(results(want), results(got)):
            assert g.num_steps == w.num_steps
            assert g.metrics["train_loss"].value == pytest.approx(
                w.metrics["train_loss"].value, rel=1e-5)
    plain = serial(make_spec(make_image_data(per_client=UNEQUAL), MLP), tasks)
    assert max_diff(plain, want) > 1e-3  # the private run really differs from plain SGD


@pytest.mark.parametrize("parallel", [2, 3])
def test_parts_on_threads_draw_the_same_noise(parallel: int) -> None:
    """DP-SGD in parts on threads (each part's clients drawing their own noise there) gives the
    models of one batched chunk bit for bit, from the eager transforms and the recorded graph."""
    spec = make_spec(make_image_data(per_client=UNEQUAL), MLP, local=private(0.5, 1.0))
    tasks = make_tasks(spec, [ClientConfig(epochs=2, batch_size=10, lr=0.1)] * 5)
    for trace_after in (0, 1):
        whole = VectorizedTrainer(spec, trace_after=trace_after).fit_many(tasks)
        trainer = VectorizedTrainer(spec, trace_after=trace_after, parallel=parallel)
        assert trainer.parallel == parallel
        for _ in range(2):  # recorded under the lock, then replayed on both threads
            assert max_diff(whole, trainer.fit_many(tasks)) == 0.0
        trainer.close()


def test_vectorized_agrees_with_serial_on_a_cnn() -> None:
    """Convolutions get vmap's per-example gradients, the linear layers ghost clipping, in one
    per-example norm: serial and vectorized (recorded graph) still agree."""
    spec = make_spec(make_image_data(per_client=UNEQUAL), partial(cnn, (1, 6, 6), 4),
                     local=private(0.5, 1.0))
    tasks = make_tasks(spec, [ClientConfig(epochs=1, batch_size=4, lr=0.05)] * 5)
    got = VectorizedTrainer(spec, trace_after=1).fit_many(tasks)
    assert max_diff(serial(spec, tasks), got) <= 1e-5


def test_private_extra_pass_and_hooks_compose() -> None:
    """A proximal term (FedProx) on top of DP-SGD: serial and vectorized still agree."""
    from fedloom.algorithms.fedprox import FedProx, FedProxOptions

    local = sample_dp(FedProx(FedProxOptions(mu=0.5)).local, clip=0.5, noise_multiplier=1.0,
                      seed=11)
    spec = make_spec(make_image_data(per_client=UNEQUAL), MLP, local=local)
    tasks = make_tasks(spec, [ClientConfig(epochs=1, batch_size=5, lr=0.1)] * 5)
    got = VectorizedTrainer(spec).fit_many(tasks)
    assert max_diff(serial(spec, tasks), got) <= 1e-5


def test_spec_is_picklable_for_process_workers() -> None:
    import pickle

    local = private(1.0, 1.0)
    back = pickle.loads(pickle.dumps(local))
    assert back.per_example == PerExampleClip(clip=1.0, noise_multiplier=1.0, seed=11)
    assert not back.is_plain

