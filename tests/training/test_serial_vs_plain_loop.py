"""Differential test: the serial fleet equals, bit for bit, a hand-written PyTorch loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedloom import ClientConfig, FedAvg, Simulation
from fedloom.core.rng import Purpose, torch_generator
from fedloom.core.threads import torch_threads
from fedloom.data.dataset import FederatedData
from fedloom.models import mlp
from fedloom.runtime.sampling import UniformSampler
from tests.conftest import make_image_data


def plain_fedavg(data: FederatedData, initial: dict[str, torch.Tensor], cfg: ClientConfig, *,
                 rounds: int, cohort: int, seed: int) -> torch.Tensor:
    """FedAvg written out by hand: nothing of fedloom but the shuffle streams and the sampler.

    It runs on one torch thread, as the simulation it is compared with: rounding can differ
    between thread counts, so a bitwise comparison pins both sides.
    """
    with torch_threads(1):
        return _plain_fedavg(data, initial, cfg, rounds=rounds, cohort=cohort, seed=seed)


def _plain_fedavg(data: FederatedData, initial: dict[str, torch.Tensor], cfg: ClientConfig, *,
                  rounds: int, cohort: int, seed: int) -> torch.Tensor:
    model = mlp(data.input_shape, data.num_classes, 16)
    model.load_state_dict(initial)
    global_sd = {k: v.clone() for k, v in model.state_dict().items()}
    sampler = UniformSampler(num_clients=data.num_clients, size=cohort, seed=seed)
    x_all, y_all = data.train.x, data.train.y
    for rnd in range(1, rounds + 1):
        locals_, counts = [], []
        for cid in sampler.sample(rnd):
            model.load_state_dict(global_sd)
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                  weight_decay=cfg.weight_decay)
            gen = torch_generator(seed, rnd, cid, Purpose.BATCHES)
            idx = data.client_train[cid]
            n = len(idx)
            size = cfg.batch_size or n
            for _ in range(cfg.epochs):
                order = idx[torch.randperm(n, generator=gen)]
                for start in range(0, n, size):
                    b = order[start:start + size]
                    x = ((x_all[b].float() / 255.0) - data.train.mean) / data.train.std
                    loss = F.cross_entropy(model(x), y_all[b])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            locals_.append(torch.cat([t.detach().reshape(-1) for t in model.parameters()]))
            counts.append(n)
        avg = torch.zeros_like(locals_[0])
        for flat, n in zip(locals_, counts):
            avg.add_(flat, alpha=n / sum(counts))
        offset = 0
        for key, value in global_sd.items():
            global_sd[key] = avg[offset:offset + value.numel()].view_as(value).clone()
            offset += value.numel()
    return torch.cat([v.reshape(-1) for v in global_sd.values()])


@pytest.mark.parametrize("cfg", [
    ClientConfig(epochs=2, batch_size=7, lr=0.05),
    ClientConfig(epochs=1, batch_size=5, lr=0.1, momentum=0.9, weight_decay=1e-3),
    ClientConfig(epochs=3, batch_size=0, lr=0.2),
])
def test_serial_fleet_is_bitwise_the_plain_loop(cfg: ClientConfig) -> None:
    data = make_image_data()

    def model_fn() -> nn.Module:
        return mlp(data.input_shape, data.num_classes, 16)

    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), client=cfg, rounds=3,
                     cohort_size=3, seed=11, threads=1)
    initial = sim.layout.unflatten(sim.initial_params)
    history = sim.run()
    expected = plain_fedavg(data, initial, cfg, rounds=3, cohort=3, seed=11)
    assert torch.equal(history.final.params, expected)
    assert not torch.equal(history.final.params, sim.initial_params)


def test_steps_option_runs_exactly_that_many_steps() -> None:
    data = make_image_data()
    sim = Simulation(data=data, model_fn=lambda: mlp((1, 6, 6), 4, 8), algorithm=FedAvg(),
                     client=ClientConfig(steps=7, batch_size=4), rounds=1, cohort_size=5)
    results = sim.fleet.fit(1, sim.algorithm.configure(1, sim.state, [0, 1, 2, 3, 4], sim.client))
    assert [r.num_steps for r in results] == [7] * 5  # type: ignore[union-attr]
