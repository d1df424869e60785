"""An algorithm made differentially private by a run's ``privacy`` section.

:func:`privatize` is what the one build path calls: ``central`` and ``adaptive`` replace the
algorithm's mean by :class:`~fedloom.privacy.central.GaussianSum` (through
:class:`~fedloom.algorithms.combined.Combined`, so any reducible averaging algorithm's server
step, FedOpt's optimisers included, steps from the private mean); ``local`` and ``sample``
change only the client half (:func:`private_local`). Every metrics row then carries
``epsilon`` (at ``privacy.delta``), and :meth:`Private.stop_reason` tells the round loop to stop
before a round that would spend more than ``privacy.target_epsilon``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedloom.algorithms.base import Algorithm, LocalSpec
from fedloom.algorithms.combined import Combined
from fedloom.algorithms.wrapped import Wrapped
from fedloom.core.errors import ConfigError
from fedloom.core.packages import ClientConfig, ServerState
from fedloom.privacy.accountant import Accountant
from fedloom.privacy.central import GaussianSum
from fedloom.privacy.config import Mechanism, PrivacyConfig
from fedloom.privacy.local import local_dp, sample_dp


def private_local(privacy: PrivacyConfig | None, local: LocalSpec, seed: int) -> LocalSpec:
    """The client half a client runs under ``privacy`` (a deployed client calls this too)."""
    if privacy is None or privacy.mechanism in (Mechanism.CENTRAL, Mechanism.ADAPTIVE):
        return local
    if privacy.mechanism == Mechanism.LOCAL:
        return local_dp(local, clip=privacy.clip, noise_multiplier=privacy.noise_multiplier,
                        seed=seed)
    if local.before is not None:
        raise ConfigError(
            f"privacy.mechanism = 'sample': the algorithm's pass before training reads the "
            f"client's data without clipping or noise ({local.before!r}); DP-SGD cannot account "
            "for it, so choose an algorithm without one (e.g. fedavg, fedprox)")
    return sample_dp(local, clip=privacy.clip, noise_multiplier=privacy.noise_multiplier,
                     seed=seed)


class Private(Wrapped):
    """``inner`` under ``privacy`` (see the module docstring); build it with :func:`privatize`."""

    def __init__(self, inner: Algorithm, privacy: PrivacyConfig, accountant: Accountant,
                 local: LocalSpec) -> None:
        super().__init__(inner, local)
        self.privacy, self.accountant = privacy, accountant

    def row_metrics(self, state: ServerState) -> Mapping[str, float]:
        return {**self.inner.row_metrics(state),
                "epsilon": self.accountant.epsilon(state.round)}

    def stop_reason(self, round: int) -> str | None:
        """Why round ``round`` must not run (it would spend more than the target), or None."""
        target = self.privacy.target_epsilon
        if target is None:
            return None
        spent = self.accountant.epsilon(round)
        if spent <= target:
            return None
        return (f"privacy.target_epsilon = {target}: round {round} would bring epsilon to "
                f"{spent:.4g} (delta {self.privacy.delta}); stopping after round {round - 1} at "
                f"epsilon {self.accountant.epsilon(round - 1):.4g}")


def privatize(algorithm: Algorithm, privacy: PrivacyConfig, *, seed: int, cohort_size: int,
              num_examples: Sequence[int], client: ClientConfig) -> Private:
    """``algorithm`` made private as ``privacy`` says.

    Raises:
        ConfigError: the combination cannot be private (an asynchronous algorithm; central DP
            on an algorithm that does not average, or adaptive clipping whose count noise
            would spend the whole budget).
    """
    if algorithm.asynchronous:
        raise ConfigError(f"privacy: {algorithm.name} is asynchronous; differential privacy "
                          "is accounted per synchronous round, so use a synchronous algorithm")
    accountant = Accountant(privacy, num_examples=num_examples, cohort_size=cohort_size,
                            client=client)
    mech = privacy.mechanism
    inner: Algorithm = algorithm
    if mech in (Mechanism.CENTRAL, Mechanism.ADAPTIVE):
        inner = Combined(algorithm, GaussianSum(
            clip=privacy.clip, noise_multiplier=privacy.noise_multiplier,
            expected_cohort=cohort_size, seed=seed, adaptive=mech == Mechanism.ADAPTIVE,
            target_quantile=privacy.target_quantile, clip_lr=privacy.clip_lr,
            count_stddev=privacy.count_stddev))
    return Private(inner, privacy, accountant, private_local(privacy, algorithm.local, seed))


__all__ = ["Private", "private_local", "privatize"]
