"""Power-of-choice selection (pow-d): the cohort is the highest-loss of d sampled candidates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from fedloom.algorithms.power_of_choice import (
    PowerOfChoice,
    PowerOfChoiceOptions,
    highest_losses,
)
from fedloom.app.build import build_run
from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig, ClientResult, Downlink, ServerState
from fedloom.data import load_federated
from fedloom.models import model_factory
from fedloom.runtime.loop import ServerLoop
from fedloom.training.evaluation import ClientLosses
from fedloom.transport.handlers import MessageType
from tests.loopback import SYNTH, serve_to_the_end


class FakeSelection:
    """Candidates 0..n-1 with the given losses; records what was asked."""

    def __init__(self, size: int, losses: dict[int, float], n: int) -> None:
        self.size, self._losses, self.n = size, losses, n
        self.asked: list[int] = []

    def sample(self, size: int) -> list[int]:
        self.asked.append(size)
        return list(range(min(size, self.n)))

    def losses(self, client_ids: Sequence[int]) -> dict[int, float]:
        return {c: self._losses[c] for c in client_ids if c in self._losses}


def test_the_highest_losses_win_ties_go_to_the_lower_id_and_silence_counts_last() -> None:
    losses = {0: 0.5, 1: 2.0, 2: 0.5, 3: 1.0, 5: 0.1}
    assert highest_losses(range(6), losses, 3) == [0, 1, 3]
    assert highest_losses(range(6), losses, 4) == [0, 1, 2, 3]
    assert highest_losses(range(6), losses, 6) == [0, 1, 2, 3, 4, 5]  # 4 reported nothing
    assert highest_losses(range(6), {}, 2) == [0, 1]


def test_select_samples_d_candidates_and_keeps_the_cohort_size() -> None:
    algo = PowerOfChoice(PowerOfChoiceOptions(d=5))
    state = algo.init(torch.zeros(2))
    chosen = algo.select(1, state, sel := FakeSelection(2, {0: 1.0, 1: 3.0, 2: 2.0, 3: 0.0,
                                                            4: 9.0}, 10))
    assert chosen == [1, 4] and sel.asked == [5]
    # d below the cohort size: the cohort is drawn as usual, no losses needed
    small = PowerOfChoice(PowerOfChoiceOptions(d=1))
    assert small.select(1, state, sel := FakeSelection(3, {}, 10)) == [0, 1, 2]
    assert sel.asked == [3]


def test_the_server_step_is_the_unweighted_mean_of_the_selected() -> None:
    algo = PowerOfChoice()
    state = algo.init(torch.zeros(2))
    results = [ClientResult(round=1, client_id=c, params=torch.tensor(v), num_examples=n,
                            num_steps=1)
               for c, v, n in ((0, [0.0, 3.0], 1), (4, [3.0, 6.0], 100))]
    assert algo.aggregate(1, state, results).params.tolist() == [1.5, 4.5]
    assert algo.aggregate(2, state, []).params.tolist() == [0.0, 0.0]


RUN = ["data.name=synthetic", "data.num_clients=20", "model.name=logreg", "cohort.size=4",
       "client.lr=0.01", "rounds=3", "fleet.threads=1", "algorithm.name=powd",
       "algorithm.d=10"]


@pytest.mark.parametrize("fleet", ["serial", "process"])
def test_every_round_trains_the_highest_loss_candidates_at_the_current_model(
        fleet: str) -> None:
    cfg = load_config(None, [*RUN, f"fleet.kind={fleet}"])
    run = build_run(cfg)
    assert isinstance(run, ServerLoop)
    data = load_federated(cfg.data, seed=cfg.seed)  # an independent copy of the clients' data
    probe = ClientLosses(model_fn=model_factory(cfg.model, data.input_shape, data.num_classes),
                         data=data)
    chosen: list[list[int]] = []
    configure = run.algorithm.configure

    def record(round: int, state: ServerState, cohort: Sequence[int],
               client: ClientConfig) -> list[Downlink]:
        candidates = run.sampler.sample(round, 10)
        losses = {c: m.value for c, m in probe(state.params, candidates).items()}
        assert list(cohort) == highest_losses(candidates, losses, 4)
        chosen.append(list(cohort))
        return configure(round, state, cohort, client)

    run.algorithm.configure = record  # type: ignore[method-assign, assignment]
    history = run.run()
    assert [r["cohort_size"] for r in history.rows] == [4, 4, 4]
    assert len(chosen) == 3 and any(c != run.sampler.sample(r + 1) for r, c in enumerate(chosen))


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"algorithm\.d = 0: must be >= 1"):
        load_config(None, ["algorithm.name=powd", "algorithm.d=0"])


@pytest.mark.integration
def test_a_deployment_asks_the_candidates_for_their_losses(tmp_path: Path) -> None:
    """Over gRPC the candidates evaluate the model on their own data; the ones reporting the
    highest losses train, and the run ends with the simulation's model (the clients' losses
    equal the server-side ones: the same data and trainer)."""
    overrides = [*SYNTH, "rounds=3", "cohort.size=2", "algorithm.name=powd", "algorithm.d=4"]
    expected = build_run(load_config(None, overrides)).run().final.params
    cfg = load_config(None, [*overrides, f"out={tmp_path / 'run'}"])
    dep = build_deployment(cfg, ServerOptions(address="127.0.0.1:0", insecure=True,
                                              console=False))
    evaluated: list[int] = []
    dep.server.handlers.register(MessageType.EVALUATE_REPLY,
                                 lambda e: evaluated.append(e.client_id or -1))
    history = serve_to_the_end(dep)
    assert len(evaluated) == 3 * 4  # d candidates asked each round
    assert [r["num_results"] for r in history.rows] == [2, 2, 2]
    assert torch.equal(history.final.params, expected)
