"""Update attacks as a fleet wrapper: :class:`AttackedFleet` runs the round on any fleet and
rewrites the malicious clients' results before the server sees them.

The crafted update replaces the trained one (``params = global + crafted``); example counts,
metrics and extras stay as the client reported them. ALIE and IPM read the round's honest
updates (an omniscient attacker: the strongest version, as the papers evaluate it); a round
with no honest or no malicious result is left as it is. The Gaussian attack draws from
``(seed, round, client_id, "attack")``, so a run is reproducible on every fleet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from fedloom.attacks import updates as u
from fedloom.attacks.config import AttackConfig, AttackName
from fedloom.core.packages import ClientResult, Downlink, Outcome
from fedloom.core.rng import torch_generator
from fedloom.fleets.base import Fleet, WrappedFleet


class AttackedFleet(WrappedFleet):
    """``inner`` with the malicious clients' results rewritten by ``attack``."""

    def __init__(self, inner: Fleet, attack: AttackConfig, malicious: frozenset[int],
                 seed: int) -> None:
        super().__init__(inner)
        self.attack, self.malicious, self.seed = attack, malicious, seed

    def fit(self, round: int, tasks: Sequence[Downlink]) -> list[Outcome]:
        outcomes = self.inner.fit(round, tasks)
        sent = {t.client_id: t.params for t in tasks}
        bad = [o for o in outcomes if isinstance(o, ClientResult) and o.client_id in self.malicious]
        if not bad:
            return outcomes
        honest = [o.params - sent[o.client_id] for o in outcomes
                  if isinstance(o, ClientResult) and o.client_id not in self.malicious]
        crafted: dict[int, torch.Tensor] = {}
        for o in bad:
            new = self.craft(round, o.client_id, o.params - sent[o.client_id], honest,
                             n=len(bad) + len(honest), m=len(bad))
            if new is not None:
                crafted[o.client_id] = sent[o.client_id] + new
        return [replace(o, params=crafted[o.client_id])
                if isinstance(o, ClientResult) and o.client_id in crafted else o
                for o in outcomes]

    def craft(self, round: int, client_id: int, trained: torch.Tensor,
              honest: list[torch.Tensor], *, n: int, m: int) -> torch.Tensor | None:
        """What malicious client ``client_id`` sends instead of ``trained`` (None: as is)."""
        name, opts = self.attack.name, self.attack.options
        if name == AttackName.SIGN_FLIP:
            return u.sign_flip(trained, scale=opts.scale)
        if name == AttackName.GAUSSIAN:
            gen = torch_generator(self.seed, round, client_id, "attack")
            return u.gaussian(trained, std=opts.std, generator=gen)
        if name == AttackName.BACKDOOR:
            return u.boosted(trained, boost=opts.boost)
        if name in (AttackName.ALIE, AttackName.IPM) and honest:
            stacked = torch.stack(honest)
            if name == AttackName.IPM:
                return u.ipm(stacked, epsilon=opts.epsilon)
            return u.alie(stacked, z=u.alie_z(n, m) if opts.z is None else opts.z)
        return None



__all__ = ["AttackedFleet"]
