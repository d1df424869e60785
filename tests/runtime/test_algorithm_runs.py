"""Every algorithm runs from a config end to end; heterogeneity, samplers, federated evaluation,
Ditto's personal models and the async runner are wired through the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom.algorithms import registry
from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment
from fedloom.core.packages import ClientResult
from fedloom.runtime.loop import ServerLoop

TINY = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=4",
        "client.lr=0.01", "client.batch_size=10", "rounds=3", "fleet.threads=1"]
#: what an algorithm needs of the run beyond TINY (FedPer: a model with a body and a head)
NEEDS = {"fedper": ["model.name=mlp", "model.hidden=8"]}


def _run(tmp_path: Path, *overrides: str) -> list[dict[str, object]]:
    cfg = load_config(None, [*TINY, f"out={tmp_path / 'run'}", *overrides])
    return [dict(r) for r in run_experiment(cfg, console=False).history.rows]


@pytest.mark.parametrize("name", sorted(registry()))
def test_every_algorithm_runs_and_learns_something(name: str, tmp_path: Path) -> None:
    rows = _run(tmp_path, f"algorithm.name={name}", "eval.train=true", *NEEDS.get(name, ()))
    assert len(rows) == 3
    losses = [r["global_train_loss"] for r in rows]
    assert all(isinstance(v, float) for v in losses)
    if name not in ("fedasync", "fedbuff"):  # one client per update: see tests/runtime/test_async
        assert losses[-1] < losses[0], losses  # type: ignore[operator]


def test_stragglers_are_dropped_by_fedavg_and_kept_by_fedprox(tmp_path: Path) -> None:
    fedavg = _run(tmp_path / "a", "client.straggler_fraction=0.5", "client.epochs=4")
    fedprox = _run(tmp_path / "p", "client.straggler_fraction=0.5", "client.epochs=4",
                   "algorithm.name=fedprox", "algorithm.mu=1.0")
    assert [r["num_results"] for r in fedavg] == [2, 2, 2]
    assert [r["num_dropped"] for r in fedavg] == [2, 2, 2]
    assert [r["num_results"] for r in fedprox] == [4, 4, 4]


def test_dropout_and_weighted_sampler(tmp_path: Path) -> None:
    rows = _run(tmp_path, "cohort.dropout=0.25", "cohort.sampler=weighted")
    assert [r["num_results"] for r in rows] == [3, 3, 3]


def test_federated_evaluation_and_ditto_personal_accuracy(tmp_path: Path) -> None:
    rows = _run(tmp_path, "algorithm.name=ditto", "algorithm.lam=0.5", "eval.federated=true",
                "cohort.size=12", "client.epochs=3")
    last = rows[-1]
    for key in ("fed_accuracy_mean", "fed_accuracy_worst10", "personal_accuracy_mean",
                "personal_accuracy_worst10"):
        assert 0.0 <= last[key] <= 1.0  # type: ignore[operator]
    assert last["fed_accuracy_worst10"] <= last["fed_accuracy_mean"]  # type: ignore[operator]


def test_client_test_fraction_gives_image_style_data_local_splits(tmp_path: Path) -> None:
    rows = _run(tmp_path, "data.partition=iid", "data.client_test_fraction=0.2",
                "eval.federated=true")
    assert rows[-1]["fed_accuracy_mean"] is not None


def test_async_algorithm_runs_from_a_config_with_simulated_time(tmp_path: Path) -> None:
    rows = _run(tmp_path, "algorithm.name=fedbuff", "algorithm.buffer_size=2",
                "clock.speed=pareto", "clock.concurrency=4")
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rows[0]["sim_time"] < rows[-1]["sim_time"]  # type: ignore[operator]


def test_sync_rounds_report_simulated_time_with_a_clock(tmp_path: Path) -> None:
    rows = _run(tmp_path, "clock.speed=lognormal")
    times = [r["sim_time"] for r in rows]
    assert times == sorted(times) and times[0] > 0  # type: ignore[operator]


SYNC = [n for n in sorted(registry()) if n not in ("fedasync", "fedbuff")]  # one update at a time


@pytest.mark.parametrize("name", SYNC)
def test_every_algorithm_declares_exactly_what_its_clients_send(name: str) -> None:
    """``result_needs`` (what a deployment server checks replies against) matches the extras and
    metrics the algorithm's own local training produces."""
    sim = build_run(load_config(None, [*TINY, f"algorithm.name={name}", *NEEDS.get(name, ())]))
    assert isinstance(sim, ServerLoop)
    tasks = sim.algorithm.configure(1, sim.state, sim.sampler.sample(1), sim.client)
    results = [o for o in sim.fleet.fit(1, tasks) if isinstance(o, ClientResult)]
    needs = sim.algorithm.result_needs(sim.layout)
    assert results
    for result in results:
        assert {k: int(v.numel()) for k, v in result.extras.items()} == dict(needs.extras)
        assert needs.metrics <= set(result.metrics)
