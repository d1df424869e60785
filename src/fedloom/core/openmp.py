"""Idle OpenMP threads that sleep soon instead of spinning for milliseconds (GNU libgomp).

After each parallel region, libgomp's idle threads busy-wait ``GOMP_SPINCOUNT`` iterations
(300,000 by default, a few milliseconds here) before they sleep. Whenever this process's
multi-threaded op is followed by work on other threads or processes (the vectorized fleet's
parts, the process fleet's workers, evaluation overlapping a fit), those spinning threads take
the cores that work needs: a 10-client W1 round on the vectorized fleet took 14.4 ms with the
default and 7.9 ms with 10,000 spins (``benchmarks/bench_scaling.py``, 2 cores), while
back-to-back 2-thread ops (the serial fleet's steps) did not measurably slow down.

libgomp reads the variable once, when torch loads it, so :func:`spin_briefly` sets it only if
torch has not been imported yet; ``import fedloom`` calls it (so does ``fedloom run``, which
imports fedloom first). A value the user set, or ``OMP_WAIT_POLICY``, is left as it is.
Imported after torch, fedloom cannot change it: :func:`too_late` says so, and setting
``GOMP_SPINCOUNT`` in the environment does the same. This module imports nothing heavy.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)

#: spins before an idle libgomp thread sleeps (libgomp's own default: 300,000)
SPINS = 10_000

_late = False
_noted = False


def spin_briefly() -> bool:
    """Set ``GOMP_SPINCOUNT`` to :data:`SPINS` for the OpenMP runtime torch will load; whether
    it was set now. Not when torch is already imported, nor when the user chose
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``."""
    global _late
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    if "torch" in sys.modules:
        _late = True
        return False
    os.environ["GOMP_SPINCOUNT"] = str(SPINS)
    return True


def too_late() -> bool:
    """Whether torch was imported before fedloom with libgomp's default spinning in place."""
    return _late and "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ


def note_if_too_late() -> None:
    """Say once (log level info) how to get brief spinning when torch came first."""
    global _noted
    if too_late() and not _noted:
        _noted = True
        log.info("torch was imported before fedloom, so its OpenMP threads spin for "
                 "milliseconds after each parallel op and can hold cores other threads and "
                 "processes need; import fedloom first or set GOMP_SPINCOUNT=%d (see "
                 "fedloom.core.openmp)", SPINS)
