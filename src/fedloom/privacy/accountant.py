"""Epsilon after a number of rounds, from Google's ``dp-accounting`` (RDP or PLD).

Each mechanism's round is described as a ``dp_accounting`` event; ``rounds`` rounds are that
event self-composed, and epsilon is read at the configured delta. What is accounted:

- ``central`` / ``adaptive`` (client-level, add/remove one client): each round a Poisson-
  sampled Gaussian mechanism with sampling rate ``q = cohort.size / num_clients`` and noise
  multiplier ``z`` (adaptive: the total of Andrew et al.'s split). fedloom draws fixed-size
  cohorts without replacement; accounting them as Poisson sampling is the approximation
  DP-FedAvg, TF Federated and Flower make.
- ``local`` (one client's whole update, any two inputs): the update is clipped to ``C``, so two
  inputs differ by up to ``2C`` and a round is a Gaussian mechanism with multiplier ``z / 2``,
  composed over every round (the client is assumed to take part in all of them: no
  amplification, since the server knows who took part).
- ``sample`` (example-level, add/remove one example of one client): each local step is a
  Poisson-sampled Gaussian with ``q = batch_size / n_k`` (shuffled fixed-size batches accounted
  as Poisson, as Abadi et al. and Opacus do), ``steps_k`` steps per round, every round. With
  clients of different sizes one event bounds them all: the largest ``q`` with the most steps
  (epsilon grows with both), exact when every client holds as many examples.

``dp-accounting`` logs (through absl) every Renyi order it drops for not converging; those
messages are held back while epsilon is computed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING

from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig
from fedloom.privacy.config import AccountantKind, Mechanism, PrivacyConfig

if TYPE_CHECKING:
    import dp_accounting


def _library() -> None:
    """Import ``dp-accounting`` (the optional ``privacy`` extra) or say how to install it."""
    try:
        import dp_accounting  # noqa: F401
    except ImportError:
        raise ConfigError("privacy: the accountant needs Google's dp-accounting: "
                          "pip install 'fedloom[privacy]'") from None


def epsilon(event: dp_accounting.DpEvent, count: int, delta: float,
            kind: AccountantKind = AccountantKind.RDP) -> float:
    """Epsilon at ``delta`` of ``event`` composed ``count`` times (0 for no rounds)."""
    if count == 0:
        return 0.0
    from dp_accounting.pld import pld_privacy_accountant
    from dp_accounting.rdp import rdp_privacy_accountant

    with _quiet_absl():
        acc: dp_accounting.PrivacyAccountant = (
            rdp_privacy_accountant.RdpAccountant() if kind == AccountantKind.RDP
            else pld_privacy_accountant.PLDAccountant())
        acc.compose(event, count)
        return float(acc.get_epsilon(delta))


@contextmanager
def _quiet_absl() -> Iterator[None]:
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def sampled_gaussian(q: float, noise_multiplier: float) -> dp_accounting.DpEvent:
    """A Gaussian mechanism on a Poisson sample of rate ``q`` (no sampling when q >= 1)."""
    import dp_accounting

    gauss = dp_accounting.GaussianDpEvent(noise_multiplier)
    return gauss if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, gauss)


def local_steps(num_examples: int, client: ClientConfig) -> tuple[float, int]:
    """``(q, steps)`` of one client's round of DP-SGD."""
    batch = num_examples if client.batch_size == 0 else min(client.batch_size, num_examples)
    steps = client.steps if client.steps is not None else \
        client.epochs * math.ceil(num_examples / batch)
    return batch / num_examples, steps


class Accountant:
    """Epsilon after ``rounds`` rounds of a run (see the module docstring).

    Args:
        privacy: the run's privacy section.
        num_examples: every registered client's example count.
        cohort_size: clients per round.
        client: the clients' local training (sample-level DP's batches and steps).
    """

    def __init__(self, privacy: PrivacyConfig, *, num_examples: Sequence[int],
                 cohort_size: int, client: ClientConfig) -> None:
        _library()
        import dp_accounting

        self.delta, self.kind = privacy.delta, privacy.accountant
        z = privacy.noise_multiplier
        mech = privacy.mechanism
        self.events: list[dp_accounting.DpEvent] = []
        if z == 0:
            return  # no noise: epsilon is infinite
        if mech in (Mechanism.CENTRAL, Mechanism.ADAPTIVE):
            self.events = [sampled_gaussian(cohort_size / len(num_examples), z)]
        elif mech == Mechanism.LOCAL:
            self.events = [dp_accounting.GaussianDpEvent(z / 2)]
        else:
            shapes = [local_steps(n, client) for n in num_examples if n > 0]
            q, steps = max(s[0] for s in shapes), max(s[1] for s in shapes)
            self.events = [dp_accounting.SelfComposedDpEvent(sampled_gaussian(q, z), steps)]
        self._epsilon = lru_cache(maxsize=None)(self._compute)

    def epsilon(self, rounds: int) -> float:
        """Epsilon at the configured delta after ``rounds`` rounds (inf without noise)."""
        if not self.events:
            return 0.0 if rounds == 0 else math.inf
        return float(self._epsilon(rounds))

    def _compute(self, rounds: int) -> float:
        return max(epsilon(e, rounds, self.delta, self.kind) for e in self.events)


__all__ = ["Accountant", "epsilon", "local_steps", "sampled_gaussian"]
