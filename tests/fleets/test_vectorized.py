"""The vectorized fleet against the serial reference, and what it refuses.

Tolerance: the vectorized fleet sums in a different order than the serial loop (batched matmuls,
a per-example weighted loss, grouped or looped convolutions), so it agrees within float
tolerance, not bitwise. Stated: after 3 rounds (or one round of up to 15 local steps) on the tiny
1x6x6 data, every final parameter is within ``TOL = 1e-5`` (absolute; parameters are O(0.1-1))
of the serial fleet's, for the 2NN, logistic regression and the CNN, with plain SGD and with
momentum + weight decay. Observed: <= 2e-7. A masking mistake (a padded example counted, a
finished client stepped) moves parameters by 1e-3 or more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedloom import ClientConfig, ConfigError, FedAvg, LocalSpec, Simulation
from fedloom.algorithms.base import LocalView, proximal_pull
from fedloom.algorithms.ditto import Ditto, DittoOptions
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientFailure, ClientResult, Downlink, Outcome
from fedloom.data.dataset import FederatedData
from fedloom.fleets import FleetConfig, FleetKind, make_fleet
from fedloom.fleets.vectorized import VectorizedFleet, VectorizedTrainer
from fedloom.fleets.vectorized.kernel import weighted_cross_entropy
from fedloom.models import cnn, init_module, logreg, mlp
from fedloom.training.spec import ClientSpec
from tests.conftest import make_image_data

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": partial(mlp, (1, 6, 6), 4, 16),
    "logreg": partial(logreg, (1, 6, 6), 4),
    "cnn": partial(cnn, (1, 6, 6), 4),
}


def make_spec(data: FederatedData, model_fn: Callable[[], nn.Module], *,
              local: LocalSpec | None = None, loss_fn: Callable[..., torch.Tensor] | None = None,
              seed: int = 3) -> ClientSpec:
    extra = {} if loss_fn is None else {"loss_fn": loss_fn}
    return ClientSpec(model_fn=model_fn, train=data.train, client_indices=data.client_train,
                      seed=seed, local=local or LocalSpec(), **extra)


def make_tasks(spec: ClientSpec, configs: Sequence[ClientConfig]) -> list[Downlink]:
    """Round-1 tasks for clients 0, 1, ... (one config each), all from one global model."""
    model = init_module(spec.model_fn, seed=0)
    flat = ParamLayout.from_module(model).module_to_flat(model)
    return [Downlink(round=1, client_id=cid, params=flat, config=cfg)
            for cid, cfg in enumerate(configs)]


def serial(spec: ClientSpec, tasks: Sequence[Downlink]) -> list[Outcome]:
    trainer = spec.trainer()
    return [trainer.fit(t) for t in sorted(tasks, key=lambda t: t.client_id)]


def results(outcomes: Sequence[Outcome]) -> list[ClientResult]:
    assert all(isinstance(o, ClientResult) for o in outcomes), outcomes
    return [o for o in outcomes if isinstance(o, ClientResult)]


def max_diff(a: Sequence[Outcome], b: Sequence[Outcome]) -> float:
    ra, rb = results(a), results(b)
    assert [r.client_id for r in ra] == [r.client_id for r in rb]
    return max(float((x.params - y.params).abs().max()) for x, y in zip(ra, rb))


def assert_same_as_serial(spec: ClientSpec, tasks: Sequence[Downlink],
                          got: Sequence[Outcome]) -> float:
    want = serial(spec, tasks)
    diff = max_diff(want, got)
    assert diff <= TOL
    for w, g in zip(results(want), results(got)):
        assert (g.num_examples, g.num_steps) == (w.num_examples, w.num_steps)
        assert g.metrics["train_loss"].weight == w.metrics["train_loss"].weight
        assert g.metrics["train_loss"].value == pytest.approx(w.metrics["train_loss"].value,
                                                              rel=1e-5)
    moved = max(float((r.params - t.params).abs().max()) for r, t in
                zip(results(got), sorted(tasks, key=lambda t: t.client_id)))
    assert moved > 100 * TOL  # the comparison is not vacuous
    return diff


UNEQUAL = (1, 3, 10, 25, 47)  # fewer than a batch, exactly one batch, short last batches

CONFIGS = {
    "plain": ClientConfig(epochs=2, batch_size=10, lr=0.1),
    "momentum+wd": ClientConfig(epochs=2, batch_size=4, lr=0.05, momentum=0.9,
                                weight_decay=1e-3),
    "full-batch": ClientConfig(epochs=3, batch_size=0, lr=0.2),
    "steps": ClientConfig(steps=15, batch_size=7, lr=0.1),
}


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_agrees_with_serial_with_unequal_clients(model: str, cfg: str) -> None:
    """Clients of 1, 3, 10, 25 and 47 examples: masking (never padding) gives the serial
    fleet's models, both from torch.func directly and from the recorded graph."""
    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS[model])
    tasks = make_tasks(spec, [CONFIGS[cfg]] * 5)
    for trace_after in (0, 1):
        got = VectorizedTrainer(spec, trace_after=trace_after).fit_many(tasks)
        assert_same_as_serial(spec, tasks, got)


def test_weighted_loss_is_cross_entropy_of_the_real_examples() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen, requires_grad=True)
    y = torch.randint(0, 4, (6,), generator=gen)
    w = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    got = weighted_cross_entropy(logits, y, w)
    real = w.bool()
    want = F.cross_entropy(logits[real], y[real])
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    (g_got,) = torch.autograd.grad(got, logits)
    (g_want,) = torch.autograd.grad(want, logits)
    assert torch.allclose(g_got, g_want, atol=1e-7)
    assert float(g_got[~real].abs().max()) == 0.0  # padding gets no gradient at all
    dense = torch.randn(6, 4, 3, generator=gen)  # per-position targets, as F.cross_entropy
    dense_y = torch.randint(0, 4, (6, 3), generator=gen)
    assert weighted_cross_entropy(dense, dense_y, w).item() == pytest.approx(
        F.cross_entropy(dense[real], dense_y[real]).item(), rel=1e-6)
    empty = weighted_cross_entropy(logits, y, torch.zeros(6))
    assert empty.item() == 0.0
    assert float(torch.autograd.grad(empty, logits)[0].abs().max()) == 0.0


def test_finished_clients_do_not_move_and_steps_are_counted() -> None:
    """With 2 epochs of B=10, the 1-example client steps twice and the 47-example one ten
    times; the short one is masked for the other eight steps (momentum and decay included)."""
    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS["mlp"])
    tasks = make_tasks(spec, [CONFIGS["momentum+wd"]] * 5)
    got = results(VectorizedTrainer(spec).fit_many(tasks))
    assert [r.num_steps for r in got] == [2, 2, 6, 14, 24]
    assert_same_as_serial(spec, tasks, got)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_chunking_does_not_change_results(chunk: int) -> None:
    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS["mlp"])
    tasks = make_tasks(spec, [CONFIGS["momentum+wd"]] * 5)
    whole = VectorizedTrainer(spec).fit_many(tasks)
    chunked = VectorizedTrainer(spec, chunk=chunk).fit_many(tasks)
    assert max_diff(whole, chunked) <= TOL
    assert_same_as_serial(spec, tasks, chunked)


@pytest.mark.parametrize(("part_clients", "parallel", "chunk"), [(3, 2, 6), (0.5, 2, 2),
                                                                    (2, 1, 2)])
def test_default_chunk_on_cpu_stacks_part_bytes_per_part(
        monkeypatch: pytest.MonkeyPatch, part_clients: float, parallel: int,
        chunk: int) -> None:
    """Without ``chunk``, each part of a CPU chunk stacks about PART_BYTES of parameters (at
    least one client): past the caches a bigger part is slower per client. Same results."""
    from fedloom.fleets.vectorized import trainer as module

    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS["mlp"])
    layout = ParamLayout.from_module(spec.model_fn())
    monkeypatch.setattr(module, "PART_BYTES", int(part_clients * layout.num_trainable * 4))
    tasks = make_tasks(spec, [CONFIGS["plain"]] * 5)
    auto = VectorizedTrainer(spec, parallel=parallel)
    try:
        assert auto.chunk == chunk
        got = auto.fit_many(tasks)
    finally:
        auto.close()
    assert max_diff(VectorizedTrainer(spec, chunk=5).fit_many(tasks), got) <= TOL
    assert_same_as_serial(spec, tasks, got)


def test_per_client_configs() -> None:
    """Each client has its own lr, momentum, weight decay, epochs or steps, and batch size."""
    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS["mlp"])
    configs = [
        ClientConfig(epochs=3, batch_size=10, lr=0.2),
        ClientConfig(epochs=1, batch_size=2, lr=0.05, momentum=0.5),
        ClientConfig(steps=7, batch_size=10, lr=0.1, weight_decay=0.01),
        ClientConfig(epochs=2, batch_size=10, lr=0.03, momentum=0.9, weight_decay=1e-3),
        ClientConfig(epochs=2, batch_size=0, lr=0.3),
    ]
    tasks = make_tasks(spec, configs)
    for chunk in (None, 2):
        got = VectorizedTrainer(spec, chunk=chunk).fit_many(tasks)
        assert_same_as_serial(spec, tasks, got)


def test_custom_loss_is_called_on_real_examples_only() -> None:
    """A loss other than the default is called per client on exactly its real examples (short
    batches as their own call), so even a loss that is not a mean over examples is right."""

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, label_smoothing=0.1) + logits.std() * 0.1

    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS["mlp"], loss_fn=loss_fn)
    configs = [ClientConfig(epochs=2, batch_size=b, lr=0.1, momentum=0.5) for b in (10, 4)]
    tasks = make_tasks(spec, [configs[0]] * 3 + [configs[1]] * 2)
    for trace_after in (0, 1):
        got = VectorizedTrainer(spec, trace_after=trace_after).fit_many(tasks)
        assert_same_as_serial(spec, tasks, got)


def test_downlink_params_are_left_alone() -> None:
    spec = make_spec(make_image_data(), MODELS["mlp"])
    tasks = make_tasks(spec, [CONFIGS["plain"]] * 5)
    before = tasks[0].params.clone()
    for chunk in (1, None):
        VectorizedTrainer(spec, chunk=chunk).fit_many(tasks)
    assert torch.equal(tasks[0].params, before)


# ---- the algorithm's client half -----------------------------------------------------------

def shift(grads: torch.Tensor, params: torch.Tensor, downlink: Downlink) -> None:
    """A SCAFFOLD-like correction from per-client extras."""
    grads.add_(downlink.extras["correction"])


def proximal_term(params: Sequence[torch.Tensor], downlink: Downlink) -> torch.Tensor:
    flat = torch.cat([p.reshape(-1) for p in params])
    return 0.05 * (flat - downlink.params[: flat.shape[0]]).square().sum()


def halve_and_tag(result: ClientResult, downlink: Downlink) -> ClientResult:
    extras = {**result.extras, "tag": torch.tensor([float(downlink.client_id)])}
    return dataclasses.replace(result, params=result.params * 0.5, extras=extras)


def start_grad(view: LocalView, downlink: Downlink) -> tuple[dict[str, Mean],
                                                            dict[str, torch.Tensor]]:
    return {}, {"start_grad": view.gradient()}


def start_loss(view: LocalView, downlink: Downlink) -> tuple[dict[str, Mean],
                                                            dict[str, torch.Tensor]]:
    return {"start_loss": view.loss()}, {}


LOCAL_SPECS = {
    "fedprox": LocalSpec(correct_grads=partial(proximal_pull, 0.5)),
    "scaffold-like": LocalSpec(before=start_grad, correct_grads=shift, finish=halve_and_tag),
    "extra-loss": LocalSpec(extra_loss=proximal_term),
    "qffl-like": LocalSpec(before=start_loss),
    "ditto": Ditto(DittoOptions(lam=0.3)).local,
}


def with_extras(spec: ClientSpec, tasks: list[Downlink]) -> list[Downlink]:
    """Per-client extras: a correction vector, and a personal model for every other client."""
    n = ParamLayout.from_module(spec.model_fn()).num_trainable
    gen = torch.Generator().manual_seed(5)
    out = []
    for t in tasks:
        extras = {"correction": torch.randn(n, generator=gen) * 0.01}
        if t.client_id % 2:
            extras["personal"] = t.params + torch.randn(t.params.shape, generator=gen) * 0.01
        out.append(dataclasses.replace(t, extras=extras))
    return out


@pytest.mark.parametrize("name", list(LOCAL_SPECS))
def test_client_hooks_match_serial(name: str) -> None:
    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS["mlp"],
                     local=LOCAL_SPECS[name])
    tasks = with_extras(spec, make_tasks(spec, [CONFIGS["momentum+wd"]] * 5))
    got = results(VectorizedTrainer(spec, chunk=3).fit_many(tasks))
    want = results(serial(spec, tasks))
    assert max_diff(want, got) <= TOL
    for w, g in zip(want, got):
        assert g.metrics.keys() == w.metrics.keys() and g.extras.keys() == w.extras.keys()
        for key, mean in w.metrics.items():
            assert g.metrics[key].value == pytest.approx(mean.value, rel=1e-5)
        for key, value in w.extras.items():
            assert float((g.extras[key] - value).abs().max()) <= TOL


class FrozenAndUnused(nn.Module):
    """A frozen parameter and one the loss never reaches: the serial loop steps neither (no
    weight decay, no momentum) unless a gradient hook gives every parameter a gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(36, 4)
        self.frozen = nn.Parameter(torch.full((4,), 0.5), requires_grad=False)
        self.unused = nn.Parameter(torch.ones(3))
        self.register_buffer("offset", torch.linspace(-1, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1)) * self.frozen + self.offset


@pytest.mark.parametrize("local", [LocalSpec(), LocalSpec(correct_grads=partial(proximal_pull,
                                                                                 0.5))])
def test_frozen_unused_parameters_and_constant_buffers(local: LocalSpec) -> None:
    spec = make_spec(make_image_data(per_client=UNEQUAL), FrozenAndUnused, local=local)
    tasks = make_tasks(spec, [CONFIGS["momentum+wd"]] * 5)
    assert_same_as_serial(spec, tasks, VectorizedTrainer(spec).fit_many(tasks))


# ---- convolutions, the recorded graph -------------------------------------------------------

@pytest.mark.parametrize("conv", ["grouped", "loop"])
def test_convolution_formulations_match_serial(conv: str) -> None:
    spec = make_spec(make_image_data(per_client=UNEQUAL), MODELS["cnn"])
    tasks = make_tasks(spec, [CONFIGS["steps"]] * 5)
    for trace_after in (0, 1):
        got = VectorizedTrainer(spec, trace_after=trace_after, conv=conv).fit_many(tasks)
        assert_same_as_serial(spec, tasks, got)


def test_recorded_step_fuses_the_weight_updates_into_the_matmuls() -> None:
    """The speed path: after recording, each Linear weight's update is one ``baddbmm_``."""
    spec = make_spec(make_image_data(per_client=(20,) * 5), MODELS["mlp"])
    trainer = VectorizedTrainer(spec, trace_after=1)
    trainer.fit_many(make_tasks(spec, [CONFIGS["plain"]] * 5))
    graphs = list(trainer.kernel.recorded.values())
    assert graphs
    fused = [n for n in graphs[0].graph.nodes if n.target is torch.ops.aten.baddbmm_.default]
    assert len(fused) == 3


# ---- what is refused -----------------------------------------------------------------------

class Counter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


class Noise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)


class RootDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(36, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.fc(x.flatten(1)), 0.2, self.training)


def head(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), *layers, nn.Linear(8, 4))


REFUSED = {
    "batchnorm": (partial(head, nn.BatchNorm1d(8)),
                  "layer '2' (BatchNorm1d) updates running statistics in training mode"),
    "batchnorm-no-stats": (partial(head, nn.BatchNorm1d(8, track_running_stats=False)),
                           "layer '2' (BatchNorm1d) normalises with statistics of the whole "
                           "batch"),
    "batchnorm2d": (lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(),
                                          nn.Linear(32, 4)),
                    "layer '1' (BatchNorm2d) updates running statistics in training mode"),
    "dropout": (partial(head, nn.ReLU(), nn.Dropout(0.5)),
                "layer '3' (Dropout) draws random masks (p = 0.5)"),
    "buffer": (partial(head, Counter()), "layer '2' (Counter) changes its buffer 'calls'"),
    "random": (partial(head, Noise()), "layer '2' (Noise) draws random numbers in its forward"),
    "functional-dropout": (RootDropout,
                           "the model's own forward (RootDropout) draws random numbers"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_layers_that_cannot_be_vectorized_are_refused_by_name(name: str) -> None:
    model_fn, message = REFUSED[name]
    spec = make_spec(make_image_data(), model_fn)
    with pytest.raises(ConfigError) as err:
        make_fleet(FleetConfig(kind=FleetKind.VECTORIZED), spec)
    assert f"fleet.kind = 'vectorized': {message}" in str(err.value)
    assert "use fleet.kind = 'serial' or 'process'" in str(err.value)
    spec.trainer().fit(make_tasks(spec, [CONFIGS["plain"]])[0])  # the serial fleet takes it


def test_dropout_with_p_zero_is_accepted() -> None:
    spec = make_spec(make_image_data(), partial(head, nn.Dropout(0.0)))
    tasks = make_tasks(spec, [CONFIGS["plain"]] * 5)
    assert_same_as_serial(spec, tasks, VectorizedTrainer(spec).fit_many(tasks))


# ---- the fleet -----------------------------------------------------------------------------

def test_a_client_without_examples_fails_alone() -> None:
    spec = make_spec(make_image_data(per_client=(0, 12, 7, 30, 9)), MODELS["mlp"])
    tasks = make_tasks(spec, [CONFIGS["plain"]] * 5)
    got = VectorizedTrainer(spec).fit_many(tasks)
    assert [o.client_id for o in got] == [0, 1, 2, 3, 4]
    assert isinstance(got[0], ClientFailure) and "no training examples" in got[0].message
    assert_same_as_serial(spec, tasks[1:], got[1:])


def test_fleet_uses_its_threads_and_restores_them() -> None:
    spec = make_spec(make_image_data(), MODELS["mlp"])
    fleet = make_fleet(FleetConfig(kind=FleetKind.VECTORIZED, chunk=2, threads=3), spec)
    assert isinstance(fleet, VectorizedFleet) and fleet.trainer.chunk == 2
    seen: list[int] = []

    def fit_many(tasks: Sequence[Downlink]) -> list[Outcome]:
        seen.append(torch.get_num_threads())
        return []

    fleet.trainer.fit_many = fit_many  # type: ignore[method-assign]
    assert fleet.fit(1, []) == []
    assert seen == [3] and torch.get_num_threads() == 1
    assert fleet.evaluate(torch.zeros(3)) is None
    fleet.close()


def test_simulation_end_to_end_agrees_with_serial() -> None:
    data = make_image_data(per_client=UNEQUAL)
    final = {}
    for fleet in ("serial", "vectorized"):
        sim = Simulation(data=data, model_fn=MODELS["mlp"], algorithm=FedAvg(), rounds=3,
                         cohort_size=4, seed=7, threads=1,
                         fleet=FleetConfig(kind=FleetKind(fleet), threads=1),
                         client=ClientConfig(epochs=2, batch_size=8, lr=0.1, momentum=0.5))
        history = sim.run()
        assert [row["num_results"] for row in history.rows] == [4, 4, 4]
        final[fleet] = (history.final.params, history.series("train_loss"))
    assert float((final["serial"][0] - final["vectorized"][0]).abs().max()) <= TOL
    assert final["vectorized"][1] == pytest.approx(final["serial"][1], rel=1e-5)


def test_in_place_activations() -> None:
    spec = make_spec(make_image_data(per_client=UNEQUAL),
                     partial(head, nn.ReLU(inplace=True)))
    tasks = make_tasks(spec, [CONFIGS["momentum+wd"]] * 5)
    assert_same_as_serial(spec, tasks, VectorizedTrainer(spec, trace_after=1).fit_many(tasks))
