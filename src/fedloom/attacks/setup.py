"""An attack on a run, in the one build path: :func:`plan_attack` turns the ``attack`` section
into an :class:`AttackPlan` that poisons the data, wraps the fleet and adds the backdoor's
success rate to the evaluation (:func:`fedloom.app.build.build_run` applies it).

Attacks are for simulations of a flat, synchronous run: a deployment's clients are real (an
attack there is a client program of its own), an asynchronous run has no round of honest
updates to read, and a topology aggregates per node; each is refused with that reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from fedloom.attacks.config import DATA_ATTACKS, UPDATE_ATTACKS, AttackConfig, AttackName
from fedloom.attacks.fleet import AttackedFleet
from fedloom.attacks.malicious import malicious_clients
from fedloom.attacks.poison import poison, triggered_test
from fedloom.core.errors import ConfigError
from fedloom.data.dataset import FederatedData
from fedloom.fleets.base import Fleet
from fedloom.models import ModelFn
from fedloom.training.evaluation import CentralEvaluator

EvaluateFn = Callable[[torch.Tensor], dict[str, float]]


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackPlan:
    """One run's attack: the config, the malicious clients and the run's seed."""

    config: AttackConfig
    malicious: frozenset[int]
    seed: int

    def poison(self, data: FederatedData) -> FederatedData:
        """The data with the malicious clients' examples poisoned (data attacks)."""
        if self.config.name not in DATA_ATTACKS:
            return data
        return poison(data, self.config, self.malicious, self.seed)

    def fleet(self, fleet: Fleet) -> Fleet:
        """``fleet`` with the malicious clients' results rewritten (update attacks)."""
        if self.config.name not in UPDATE_ATTACKS:
            return fleet
        return AttackedFleet(fleet, self.config, self.malicious, self.seed)

    def evaluate(self, evaluate: EvaluateFn, *, model_fn: ModelFn, data: FederatedData,
                 batch_size: int) -> EvaluateFn:
        """``evaluate`` plus ``backdoor_accuracy`` (the share of triggered test examples not of
        the target class that the model puts in the target class) for a backdoor attack."""
        if self.config.name != AttackName.BACKDOOR:
            return evaluate
        triggered = CentralEvaluator(model_fn=model_fn, batch_size=batch_size,
                                     test=triggered_test(data.test, self.config.options))

        def with_backdoor(params: torch.Tensor) -> dict[str, float]:
            return {**evaluate(params),
                    "backdoor_accuracy": triggered(params)["test_accuracy"].value}

        return with_backdoor


def plan_attack(config: AttackConfig, *, seed: int, num_clients: int,
                remote: bool = False) -> AttackPlan | None:
    """The plan for ``config`` (None: no attack). Raises ConfigError for a deployment."""
    if not config.active:
        return None
    if remote:
        raise ConfigError(f"attack.name = {config.name.value!r}: attacks are simulated; a "
                          "deployment's clients are real programs (remove the attack section)")
    return AttackPlan(config=config, seed=seed, malicious=malicious_clients(
        seed=seed, num_clients=num_clients, fraction=config.fraction))


__all__ = ["AttackPlan", "plan_attack"]
