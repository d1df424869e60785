"""Differential privacy: central DP-FedAvg (fixed and adaptive clipping), local DP, sample-level
DP-SGD, and an accountant from Google's ``dp-accounting`` (the ``privacy`` extra).

A run's ``privacy`` section (:class:`~fedloom.privacy.config.PrivacyConfig`) is applied by the
one build path (:func:`fedloom.app.build.build_run`) through
:func:`fedloom.privacy.private.privatize`; every metrics row then carries ``epsilon`` at
``privacy.delta`` and the run stops before the round that would exceed
``privacy.target_epsilon``.

========= ===================================== ========================================
mechanism where                                 fleets
========= ===================================== ========================================
central   server: clip, sum, noise, / m         every synchronous fleet (the distributed
                                                fleet gathers the updates: the rule needs
                                                each one, so ``aggregation=reduce`` is off)
adaptive  as central; the clip norm follows a   as central
          noised quantile (server state)
local     client ``finish``: clip and noise     every fleet, and deployed clients
          the update before it leaves           (``fedloom client``)
sample    client SGD loop: per-example clip     serial, process, thread, distributed and
          and noise (DP-SGD)                    deployed clients run the serial trainer's;
                                                vectorized has its own batched kernel
========= ===================================== ========================================

Refused at config time, each with its reason: asynchronous algorithms and topologies (no
synchronous round to account), central/adaptive on an algorithm that does not average
(:class:`~fedloom.algorithms.combined.Combined` says why), ``sample`` with an algorithm whose
pass before training reads the data unprotected (q-FFL, SCAFFOLD option I).

The package's modules import torch only, but :mod:`.accountant` and :mod:`.private`, which
need ``dp-accounting`` when a run asks for privacy.
"""

from fedloom.privacy.config import AccountantKind, Mechanism, PrivacyConfig

__all__ = ["AccountantKind", "Mechanism", "PrivacyConfig"]
