"""Compiled vectorized steps: agreement with the eager replay, compilations bounded across rounds
and cohort sizes, client-count buckets, the eager fallback.

The fast tests compile with ``aot_eager`` (dynamo's capture and functionalization, no C++), the
slow one with inductor, as a run does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence

import pytest
import torch
from torch._dynamo.utils import counters

from fedloom import ClientConfig, ConfigError
from fedloom.core.packages import Downlink, Outcome
from fedloom.fleets import FleetConfig, FleetKind, make_fleet
from fedloom.fleets.config import CompileMode
from fedloom.fleets.vectorized import VectorizedFleet, VectorizedTrainer
from fedloom.fleets.vectorized.compiled import Buckets, compiles
from tests.conftest import make_image_data
from tests.fleets.test_vectorized import MODELS, TOL, make_spec, make_tasks, max_diff

SIZES = (3, 10, 23, 7, 14)  # short last batches and one client under a batch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
    torch.set_num_threads(before)


def rounds(trainer: VectorizedTrainer, cohorts: Sequence[Sequence[int]],
           cfg: ClientConfig) -> list[list[Outcome]]:
    """One fit per cohort (client ids), each as round r of one global model."""
    spec = trainer.spec
    every = make_tasks(spec, [cfg] * len(SIZES))
    return [trainer.fit_many([Downlink(round=r, client_id=c, params=every[c].params,
                                       config=cfg) for c in ids])
            for r, ids in enumerate(cohorts, start=1)]


def test_buckets_pad_client_counts_to_a_ladder_anchored_at_the_first() -> None:
    b = Buckets()
    assert [b(k) for k in (10, 9, 6, 5, 4, 3, 2, 1, 11, 20, 21)] == \
        [10, 10, 10, 5, 5, 3, 2, 1, 20, 20, 40]
    one = Buckets()
    assert [one(k) for k in (1, 2, 7, 1)] == [1, 2, 8, 1]
    with pytest.raises(ValueError, match="at least one client"):
        b(0)


def test_auto_compiles_on_cuda_only() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert [compiles(m, cpu) for m in ("auto", "on", "off")] == [False, True, False]
    assert [compiles(m, cuda) for m in ("auto", "on", "off")] == [True, True, False]


@pytest.mark.parametrize("cfg", [ClientConfig(epochs=2, batch_size=10, lr=0.1),
                                 ClientConfig(epochs=1, batch_size=6, lr=0.05, momentum=0.9,
                                              weight_decay=1e-3)], ids=["plain", "momentum"])
def test_compiled_agrees_with_eager_and_compiles_once_per_bucket(cfg: ClientConfig) -> None:
    """Cohorts of 5, 4, 3, 5 and 4 clients over five rounds: every round agrees with the eager
    trainer; two buckets (5 and 3) are compiled, once each, whatever the round."""
    spec = make_spec(make_image_data(num_clients=len(SIZES), per_client=SIZES), MODELS["mlp"])
    cohorts = [[0, 1, 2, 3, 4], [0, 2, 3, 4], [1, 3, 4], [0, 1, 2, 3, 4], [0, 1, 3, 4]]
    eager = rounds(VectorizedTrainer(spec, trace_after=1, compile="off"), cohorts, cfg)
    before = counters["stats"]["unique_graphs"]
    trainer = VectorizedTrainer(spec, trace_after=1, compile="on", backend="aot_eager")
    got = rounds(trainer, cohorts, cfg)
    for want, have in zip(eager, got):
        assert max_diff(want, have) <= TOL
    assert trainer.compiler is not None and not trainer.compiler.failed
    # one graph per bucket: plain SGD's fused step, or momentum's gradients
    assert trainer.compiler.compiled == 2
    assert counters["stats"]["unique_graphs"] - before == trainer.compiler.compiled
    assert trainer.compiler.seconds > 0


def failing_backend(gm: torch.fx.GraphModule,
                    inputs: Sequence[torch.Tensor]) -> Callable[..., object]:
    raise RuntimeError("no C++ compiler here")


def test_a_step_that_cannot_be_compiled_runs_eagerly_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    spec = make_spec(make_image_data(num_clients=len(SIZES), per_client=SIZES), MODELS["mlp"])
    cfg = ClientConfig(epochs=2, batch_size=10, lr=0.1)
    cohorts = [[0, 1, 2, 3, 4], [1, 3, 4], [0, 1, 2, 3, 4]]
    eager = rounds(VectorizedTrainer(spec, trace_after=1, compile="off"), cohorts, cfg)
    trainer = VectorizedTrainer(spec, trace_after=1, compile="on", backend=failing_backend)
    with caplog.at_level(logging.WARNING, logger="fedloom"):
        got = rounds(trainer, cohorts, cfg)
    for want, have in zip(eager, got):
        assert max_diff(want, have) == 0.0  # the same recorded graph, replayed
    assert trainer.compiler is not None and trainer.compiler.failed
    warned = [r for r in caplog.records if "cannot compile" in r.getMessage()]
    assert len(warned) == 1 and "no C++ compiler here" in warned[0].getMessage()


def test_custom_losses_and_dp_sgd_are_not_compiled() -> None:
    """Only the masked default loss lets a chunk be padded to a bucket, so only it compiles."""
    spec = make_spec(make_image_data(), MODELS["mlp"],
                     loss_fn=lambda logits, y: torch.nn.functional.cross_entropy(logits, y))
    assert VectorizedTrainer(spec, compile="on").compiler is None
    plain = make_spec(make_image_data(), MODELS["mlp"])
    assert VectorizedTrainer(plain, compile="on").compiler is not None
    assert VectorizedTrainer(plain, compile="on", trace_after=0).compiler is None


def test_fleet_config_compile_option() -> None:
    spec = make_spec(make_image_data(), MODELS["mlp"])
    fleet = make_fleet(FleetConfig(kind=FleetKind.VECTORIZED, compile=CompileMode.ON), spec)
    assert isinstance(fleet, VectorizedFleet) and fleet.trainer.compiler is not None
    off = make_fleet(FleetConfig(kind=FleetKind.VECTORIZED), spec)  # auto: not on CPU
    assert isinstance(off, VectorizedFleet) and off.trainer.compiler is None
    with pytest.raises(ValueError, match="sometimes"):
        CompileMode("sometimes")


def test_fleet_compile_in_a_run_config() -> None:
    from fedloom.app.config import load_config

    cfg = load_config("configs/fedavg_mnist_2nn_iid.yaml",
                      ["fleet.kind=vectorized", "fleet.compile='on'"])  # bare on: YAML's True
    assert cfg.fleet.compile is CompileMode.ON
    assert load_config("configs/fedavg_mnist_2nn_iid.yaml",
                       ["fleet.compile=auto"]).fleet.compile is CompileMode.AUTO
    for bare, mode in (("on", CompileMode.ON), ("off", CompileMode.OFF)):  # YAML: booleans
        assert load_config("configs/fedavg_mnist_2nn_iid.yaml",
                           [f"fleet.compile={bare}"]).fleet.compile is mode
    with pytest.raises(ConfigError, match="compile"):
        load_config("configs/fedavg_mnist_2nn_iid.yaml", ["fleet.compile=sometimes"])


@pytest.mark.slow
def test_inductor_compiled_step_agrees_with_eager() -> None:
    """The real backend (a C++ compiler): within TOL of eager, one compilation per bucket."""
    spec = make_spec(make_image_data(num_clients=len(SIZES), per_client=SIZES), MODELS["mlp"])
    cfg = ClientConfig(epochs=2, batch_size=10, lr=0.1)
    cohorts = [[0, 1, 2, 3, 4], [0, 2, 3, 4], [0, 1, 2, 3, 4]]
    eager = rounds(VectorizedTrainer(spec, trace_after=1, compile="off"), cohorts, cfg)
    trainer = VectorizedTrainer(spec, trace_after=1, compile="on")
    got = rounds(trainer, cohorts, cfg)
    for want, have in zip(eager, got):
        assert max_diff(want, have) <= TOL
    assert trainer.compiler is not None and not trainer.compiler.failed
    assert trainer.compiler.compiled == 1
