"""Attacks, to test the defences: a share of the clients is malicious (chosen by
``(seed, client_id)``) and either trains on poisoned data (label flipping, a backdoor trigger)
or sends a crafted update (sign flipping, Gaussian noise, model replacement, ALIE, IPM).

Data attacks change the malicious clients' training arrays (:mod:`fedloom.attacks.poison`);
update attacks rewrite their results after the fit (:class:`AttackedFleet`), so both work on
every simulation fleet. A run config names one: ``attack.name=alie attack.fraction=0.2``.
"""

from fedloom.attacks.config import AttackConfig, AttackName
from fedloom.attacks.fleet import AttackedFleet
from fedloom.attacks.malicious import malicious_clients
from fedloom.attacks.setup import AttackPlan, plan_attack

__all__ = ["AttackConfig", "AttackName", "AttackPlan", "AttackedFleet", "malicious_clients",
           "plan_attack"]
