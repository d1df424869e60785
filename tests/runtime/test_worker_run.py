"""``Simulation.run`` on a process that serves another's fleet (a torchrun rank other than 0)
serves that fleet until it stops, then closes it, and returns no rows: the Python API behaves
as ``fedloom run`` does there (the torchrun benchmark's worker ranks call ``sim.run()``)."""

from __future__ import annotations

import torch

from fedloom import (
    ClientConfig,
    DataConfig,
    FedAvg,
    ModelConfig,
    Simulation,
    load_federated,
    model_factory,
)
from fedloom.fleets.base import WrappedFleet


class Worker(WrappedFleet):
    """A fleet on a worker process: it never fits, it serves."""

    def __init__(self, inner: WrappedFleet | object) -> None:
        super().__init__(inner)  # type: ignore[arg-type]
        self.is_worker = True
        self.calls: list[str] = []

    def fit(self, round: int, tasks: object) -> list[object]:  # type: ignore[override]
        raise AssertionError("a worker process never runs the round loop")

    def serve(self) -> None:
        self.calls.append(f"serve on {torch.get_num_threads()} thread(s)")

    def close(self) -> None:
        self.calls.append("close")


def test_a_worker_process_serves_and_returns_no_rows(one_thread: None) -> None:
    data = load_federated(DataConfig(name="synthetic", num_clients=4), seed=0)
    model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), rounds=3, cohort_size=2,
                     client=ClientConfig(lr=0.1, batch_size=10), threads=1)
    fleet = sim.fleet = Worker(sim.fleet)
    history = sim.run()
    assert history.rows == () and history.final.round == 0
    assert fleet.calls == ["serve on 1 thread(s)", "close"]
