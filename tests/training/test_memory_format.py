"""Channels-last training: the trainer's working order at its boundary, and what it computes."""

from __future__ import annotations

import functools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from fedloom import ClientConfig, FedAvg, Simulation
from fedloom.algorithms.base import LocalSpec
from fedloom.algorithms.ditto import Ditto, DittoOptions
from fedloom.algorithms.fedprox import FedProx, FedProxOptions
from fedloom.algorithms.scaffold import Scaffold, ScaffoldOptions
from fedloom.app.config import load_config
from fedloom.core.errors import ConfigError
from fedloom.core.layout import BoundModule, ParamLayout
from fedloom.core.packages import Downlink, MemoryFormat
from fedloom.core.rng import Purpose, torch_generator
from fedloom.core.threads import torch_threads
from fedloom.models import mlp
from fedloom.privacy.local import sample_dp
from fedloom.training.memory_format import WorkingModel
from fedloom.training.spec import ClientSpec
from tests.conftest import make_image_data

DATA = make_image_data()


def small_cnn() -> nn.Module:
    """Two convolutions (the second with 4 input channels, so the orders really differ)."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 4))


class ViewCNN(nn.Module):
    """A forward that cannot take channels-last activations (``.view`` on one)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(x.shape[0], -1))


MLP = functools.partial(mlp, (1, 6, 6), 4, 8)


def run(fmt: str, *, model_fn: object = small_cnn, algorithm: object = None,
        fleet: str = "serial", local: LocalSpec | None = None, rounds: int = 2,
        **client: object) -> torch.Tensor:
    settings: dict[str, object] = {"epochs": 1, "batch_size": 4, "lr": 0.05} | client
    cfg = ClientConfig(memory_format=fmt, **settings)  # type: ignore[arg-type]
    algo = algorithm if algorithm is not None else FedAvg()
    if local is not None:
        algo.local = local  # type: ignore[attr-defined]
    sim = Simulation(data=DATA, model_fn=model_fn, algorithm=algo, client=cfg,  # type: ignore[arg-type]
                     rounds=rounds, cohort_size=3, seed=5, threads=1, fleet=fleet,
                     eval_batch_size=20)
    return sim.run().final.params


def test_working_order_of_a_hand_written_weight() -> None:
    conv = nn.Conv2d(2, 1, (1, 2), bias=False)
    layout = ParamLayout.from_module(conv)
    working = WorkingModel(BoundModule(conv, layout), list(conv.parameters()))
    working.use(True)
    # logical (o, i, h, w): i=0 -> [a, b], i=1 -> [c, d]; channels-last memory (o, h, w, i)
    working.load(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert working.bound.flat.tolist() == [1.0, 3.0, 2.0, 4.0]
    assert conv.weight.tolist() == [[[[1.0, 2.0]], [[3.0, 4.0]]]]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert working.read().tolist() == [1.0, 2.0, 3.0, 4.0]
    buf = torch.tensor([1.0, 3.0, 2.0, 4.0])
    working.to_layout_order(buf)
    assert buf.tolist() == [1.0, 2.0, 3.0, 4.0]


@settings(max_examples=30, deadline=None)
@given(st.tuples(*[st.integers(1, 4)] * 4), st.booleans(), st.integers(0, 2**31 - 1))
def test_orders_round_trip_exactly(shape: tuple[int, int, int, int], bias: bool,
                                   seed: int) -> None:
    out_c, in_c, kh, kw = shape
    conv = nn.Conv2d(in_c, out_c, (kh, kw), bias=bias)
    layout = ParamLayout.from_module(conv)
    working = WorkingModel(BoundModule(conv, layout), list(conv.parameters()))
    flat = torch.randn(layout.size, generator=torch.Generator().manual_seed(seed))
    working.load(flat)
    working.use(True)  # rebinding keeps the values
    assert torch.equal(working.read(), flat)
    assert torch.equal(conv.weight.detach().reshape(-1), flat[:conv.weight.numel()])
    buf = working.bound.flat.clone()
    working.to_layout_order(buf)
    assert torch.equal(buf, flat)
    working.to_working_order(buf)
    assert torch.equal(buf, working.bound.flat)
    working.use(False)
    assert torch.equal(working.bound.flat, flat) and conv.weight.is_contiguous()


@pytest.mark.parametrize("client", [{}, {"momentum": 0.9, "weight_decay": 1e-3, "epochs": 2}])
def test_channels_last_agrees_with_contiguous(client: dict[str, float]) -> None:
    last, plain = run("channels_last", **client), run("contiguous", **client)
    assert not torch.equal(plain, run("contiguous", rounds=1, **client))  # it trains
    torch.testing.assert_close(last, plain, rtol=0, atol=1e-5)


COUNTS = [23, 17, 30, 9, 12]
ALGORITHMS = {
    "fedprox": lambda: FedProx(FedProxOptions(mu=0.5)),
    "scaffold1": lambda: Scaffold(ScaffoldOptions(option=1), num_examples=COUNTS),
    "scaffold2": lambda: Scaffold(num_examples=COUNTS),
}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_gradient_hooks_see_layout_order(name: str) -> None:
    """FedProx's pull and SCAFFOLD's correction (and option I's full gradient) read the flat
    gradient and parameters against the downlink's: in layout order, or they would mix up
    coordinates and end far from the contiguous run."""
    make = ALGORITHMS[name]
    last = run("channels_last", algorithm=make(), rounds=3)
    plain = run("contiguous", algorithm=make(), rounds=3)
    torch.testing.assert_close(last, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fleet", ["thread", "process"])
def test_fleets_agree_bitwise_in_channels_last(fleet: str) -> None:
    assert torch.equal(run("channels_last", fleet=fleet), run("channels_last"))


def test_auto_trains_convolutions_channels_last_on_cpu() -> None:
    spec = ClientSpec(model_fn=small_cnn, train=DATA.train, client_indices=DATA.client_train,
                      seed=0)
    trainer = spec.trainer()
    params = trainer.layout.module_to_flat(trainer.model)
    down = Downlink(round=1, client_id=0, params=params, config=ClientConfig(batch_size=4))
    auto = trainer.fit(down)
    assert trainer.working.channels_last
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in trainer.params
               if p.dim() == 4)
    def fit(fmt: MemoryFormat) -> torch.Tensor:
        cfg = ClientConfig(batch_size=4, memory_format=fmt)
        return trainer.fit(Downlink(round=1, client_id=0, params=params, config=cfg)).params

    assert torch.equal(auto.params, fit(MemoryFormat.CHANNELS_LAST))
    plain = fit(MemoryFormat.CONTIGUOUS)
    assert not trainer.working.channels_last and trainer.params[0].is_contiguous()
    torch.testing.assert_close(auto.params, plain, rtol=0, atol=1e-5)


def test_a_model_without_convolutions_is_unaffected() -> None:
    assert torch.equal(run("channels_last", model_fn=MLP), run("contiguous", model_fn=MLP))


def test_a_forward_that_refuses_channels_last() -> None:
    """auto trains it in the default layout (bitwise the contiguous run); asking for
    channels-last fails the clients with the key named."""
    assert torch.equal(run("auto", model_fn=ViewCNN), run("contiguous", model_fn=ViewCNN))
    spec = ClientSpec(model_fn=ViewCNN, train=DATA.train, client_indices=DATA.client_train,
                      seed=0)
    trainer = spec.trainer()
    down = Downlink(round=1, client_id=0, params=trainer.layout.module_to_flat(trainer.model),
                    config=ClientConfig(memory_format=MemoryFormat.CHANNELS_LAST))
    with pytest.raises(ConfigError, match=r"client\.memory_format"):
        trainer.fit(down)


def gn_cnn() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 4))


def fit_channels_last(model_fn: Callable[[], nn.Module], local: LocalSpec | None = None) -> None:
    """Client 0 fitting one round asked for channels-last."""
    spec = ClientSpec(model_fn=model_fn, train=DATA.train, client_indices=DATA.client_train,
                      seed=0, local=local or LocalSpec())
    trainer = spec.trainer()
    trainer.fit(Downlink(round=1, client_id=0,
                         params=trainer.layout.module_to_flat(trainer.model),
                         config=ClientConfig(memory_format=MemoryFormat.CHANNELS_LAST)))


def test_layers_auto_does_not_trust_stay_contiguous() -> None:
    """GroupNorm's CPU backward is wrong in channels-last (torch 2.13): auto keeps such a model
    contiguous (bitwise the contiguous run) and asking for channels-last is refused by name."""
    assert torch.equal(run("auto", model_fn=gn_cnn), run("contiguous", model_fn=gn_cnn))
    with pytest.raises(ConfigError, match="GroupNorm computes wrong gradients"):
        fit_channels_last(gn_cnn)


def test_dp_sgd_trains_contiguous_and_refuses_channels_last() -> None:
    dp = sample_dp(LocalSpec(), clip=1.0, noise_multiplier=0.5, seed=9)
    assert torch.equal(run("auto", local=dp), run("contiguous", local=dp))
    with pytest.raises(ConfigError, match="DP-SGD"):
        fit_channels_last(small_cnn, dp)


def test_an_unknown_memory_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="memory_format = 'nhwc'"):
        ClientConfig(memory_format="nhwc")  # type: ignore[arg-type]
    cfg = ClientConfig(memory_format="channels_last")  # type: ignore[arg-type]
    assert cfg.memory_format is MemoryFormat.CHANNELS_LAST


def test_the_run_config_takes_the_key() -> None:
    cfg = load_config(None, ["client.memory_format=channels_last"])
    assert cfg.client.memory_format is MemoryFormat.CHANNELS_LAST
    assert load_config(None, []).client.memory_format is MemoryFormat.AUTO
    with pytest.raises(ConfigError, match=r"client\.memory_format = 'nhwc'"):
        load_config(None, ["client.memory_format=nhwc"])


def plain_channels_last_round(sim: Simulation, rnd: int) -> list[torch.Tensor]:
    """One round's clients written out by hand, the usual PyTorch way to train channels-last:
    ``model.to(memory_format=torch.channels_last)`` and channels-last batches."""
    model = small_cnn().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    initial = sim.layout.unflatten(sim.state.params)
    out = []
    for task in sim.algorithm.configure(rnd, sim.state, sim.sampler.sample(rnd), sim.client):
        model.load_state_dict(initial)
        opt = torch.optim.SGD(model.parameters(), lr=task.config.lr)
        gen = torch_generator(sim.spec.seed, rnd, task.client_id, Purpose.BATCHES)
        idx = DATA.client_train[task.client_id]
        order = idx[torch.randperm(len(idx), generator=gen)]
        for start in range(0, len(idx), task.config.batch_size):
            x, y = DATA.train.batch(order[start:start + task.config.batch_size])
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    return out


def test_the_serial_fleet_is_bitwise_a_plain_channels_last_loop() -> None:
    cfg = ClientConfig(epochs=1, batch_size=4, lr=0.05)
    sim = Simulation(data=DATA, model_fn=small_cnn, algorithm=FedAvg(), client=cfg, rounds=1,
                     cohort_size=3, seed=5, threads=1)
    tasks = sim.algorithm.configure(1, sim.state, sim.sampler.sample(1), cfg)
    with torch_threads(1):
        got = [o.params for o in sim.fleet.fit(1, tasks)]  # type: ignore[union-attr]
        want = plain_channels_last_round(sim, 1)
    assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_ditto_personal_pass_in_channels_last() -> None:
    """Ditto's personal pass starts from a flat model in layout order (its own, from the
    downlink's extras) and pulls towards the global one: both converted at the boundary."""
    spec = ClientSpec(model_fn=small_cnn, train=DATA.train, client_indices=DATA.client_train,
                      seed=0, local=Ditto(DittoOptions(lam=0.5)).local)
    trainer = spec.trainer()
    params = trainer.layout.module_to_flat(trainer.model)
    personal = params + 0.1 * torch.randn(params.shape, generator=torch.Generator().manual_seed(1))

    def fit(fmt: MemoryFormat) -> torch.Tensor:
        cfg = ClientConfig(batch_size=4, lr=0.05, memory_format=fmt)
        down = Downlink(round=2, client_id=2, params=params, config=cfg,
                        extras={"personal": personal})
        return trainer.fit(down).extras["personal"]

    last, plain = fit(MemoryFormat.CHANNELS_LAST), fit(MemoryFormat.CONTIGUOUS)
    assert not torch.equal(plain, personal)
    torch.testing.assert_close(last, plain, rtol=0, atol=1e-5)
