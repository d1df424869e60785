"""Which clients are malicious: a fixed set per run, chosen by ``(seed, client_id)``.

Each client gets a key ``derive_seed(seed, 0, client_id, "malicious")``; the
``round(fraction * num_clients)`` clients with the smallest keys are malicious. The set depends
on the seed and the client ids only (never on a fleet, a cohort or an order), and a client's
key does not depend on how many clients there are.

Example:
    >>> sorted(malicious_clients(seed=0, num_clients=10, fraction=0.2))
    [1, 8]
"""

from __future__ import annotations

from fedloom.core.rng import derive_seed

PURPOSE = "malicious"


def malicious_clients(*, seed: int, num_clients: int, fraction: float) -> frozenset[int]:
    count = int(fraction * num_clients + 0.5)
    keys = sorted(range(num_clients), key=lambda c: derive_seed(seed, 0, c, PURPOSE))
    return frozenset(keys[:count])


__all__ = ["malicious_clients"]
