"""The ``attack`` section of a run config: which attack, on what share of the clients, with
its options beside it (``attack.name=alie attack.fraction=0.2 attack.z=1.0``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fedloom.core.errors import ConfigError
from fedloom.core.validate import Problems


class AttackName(StrEnum):
    NONE = "none"
    LABEL_FLIP = "label_flip"      # data: label y -> C - 1 - y
    SIGN_FLIP = "sign_flip"        # update: -scale * update
    GAUSSIAN = "gaussian"          # update: replaced by N(0, std^2) noise
    BACKDOOR = "backdoor"          # data: trigger + target label; update scaled (model replacement)
    ALIE = "alie"                  # update: honest mean - z * honest std (Baruch et al. 2019)
    IPM = "ipm"                    # update: -epsilon * honest mean (Xie et al. 2020)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoOptions:
    """``none`` and ``label_flip`` take no options."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SignFlipOptions:
    """``scale``: the malicious update is ``-scale`` times the one it trained."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.scale > 0, "scale", self.scale, "must be > 0")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class GaussianOptions:
    """``std``: the malicious update is drawn from ``N(0, std^2)`` in every coordinate."""

    std: float = 1.0

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.std > 0, "std", self.std, "must be > 0")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class BackdoorOptions:
    """``target``: the label the trigger should produce; ``poison_fraction``: the share of a
    malicious client's examples given the trigger and the target label (the rest stay clean,
    as in Bagdasaryan et al. 2020); ``boost``: the trained update is multiplied by it (model
    replacement, ``n / server_lr``: 10 for a cohort of 10 at server lr 1; 1: plain poisoning);
    ``size``: the trigger is a ``size x size`` checkerboard of white pixels in the
    bottom-right corner of each image."""

    target: int = 0
    poison_fraction: float = 0.5
    boost: float = 10.0
    size: int = 4

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.target >= 0, "target", self.target, "must be a label (>= 0)")
        p.check(0 < self.poison_fraction <= 1, "poison_fraction", self.poison_fraction,
                "must be in (0, 1]")
        p.check(self.boost > 0, "boost", self.boost, "must be > 0")
        p.check(self.size >= 1, "size", self.size, "must be >= 1 (pixels)")
        p.raise_if_any()


@dataclass(frozen=True, slots=True, kw_only=True)
class AlieOptions:
    """``z``: how many honest standard deviations below the honest mean (null: the paper's
    ``z_max = Phi^-1((n - s) / n)``, ``s = floor(n / 2 + 1) - m``, per round)."""

    z: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class IpmOptions:
    """``epsilon``: the malicious update is ``-epsilon`` times the honest mean."""

    epsilon: float = 0.1

    def __post_init__(self) -> None:
        p = Problems()
        p.check(self.epsilon > 0, "epsilon", self.epsilon, "must be > 0")
        p.raise_if_any()


OPTIONS: Mapping[AttackName, type[Any]] = {
    AttackName.NONE: NoOptions, AttackName.LABEL_FLIP: NoOptions,
    AttackName.SIGN_FLIP: SignFlipOptions, AttackName.GAUSSIAN: GaussianOptions,
    AttackName.BACKDOOR: BackdoorOptions, AttackName.ALIE: AlieOptions,
    AttackName.IPM: IpmOptions,
}
#: attacks that change the malicious clients' training data
DATA_ATTACKS = frozenset({AttackName.LABEL_FLIP, AttackName.BACKDOOR})
#: attacks that change the malicious clients' results after the fit
UPDATE_ATTACKS = frozenset({AttackName.SIGN_FLIP, AttackName.GAUSSIAN, AttackName.BACKDOOR,
                            AttackName.ALIE, AttackName.IPM})


@dataclass(frozen=True, slots=True, kw_only=True)
class AttackConfig:
    """An ``attack`` section: ``name`` picks the attack, ``fraction`` of the registered clients
    are malicious (chosen by ``(seed, client_id)``), the attack's options sit beside them."""

    name: AttackName = AttackName.NONE
    fraction: float = 0.2
    options: Any = None

    def __post_init__(self) -> None:
        if self.options is None:
            object.__setattr__(self, "options", OPTIONS[self.name]())
        p = Problems()
        p.check(0 <= self.fraction < 1, "fraction", self.fraction, "must be in [0, 1)")
        p.check(isinstance(self.options, OPTIONS[self.name]), "options",
                type(self.options).__name__, f"must be {OPTIONS[self.name].__name__}")
        p.raise_if_any()

    @property
    def active(self) -> bool:
        return self.name != AttackName.NONE and self.fraction > 0


def attack_from_mapping(data: Mapping[str, Any]) -> tuple[AttackName, float, dict[str, Any]]:
    """``name``, ``fraction`` and the rest (the options) of an ``attack`` mapping."""
    rest = dict(data)
    name = rest.pop("name", AttackName.NONE.value)
    if name not in [a.value for a in AttackName]:
        raise ConfigError(f"attack.name = {name!r}: must be one of "
                          f"{', '.join(a.value for a in AttackName)}")
    fraction = rest.pop("fraction", 0.2)
    return AttackName(name), fraction, rest


__all__ = ["DATA_ATTACKS", "OPTIONS", "UPDATE_ATTACKS", "AlieOptions", "AttackConfig",
           "AttackName", "BackdoorOptions", "GaussianOptions", "IpmOptions", "NoOptions",
           "SignFlipOptions", "attack_from_mapping"]
