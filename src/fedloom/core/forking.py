"""The process fleet's fork server, startable before anything heavy is imported.

Workers are forked from one server process that imported :data:`PRELOAD` once, so none of them
pays torch's imports. The server takes about as long to import them as the parent does, so it
should start as early as possible: ``fedloom run`` starts it before the command line imports
torch (:mod:`fedloom.cli`), and the two import side by side. This module imports nothing heavy
(only :mod:`multiprocessing`).
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing import forkserver
from multiprocessing.context import ForkServerContext, SpawnContext

#: what the fork server imports once for all its workers (torch.optim imports torch._dynamo on
#: first use, ~1.5 s per worker otherwise)
PRELOAD = ("torch", "torch._dynamo", "fedloom", "fedloom.fleets.client_worker",
           "fedloom.fleets.process_pool")


def worker_context() -> ForkServerContext | SpawnContext:
    """``forkserver`` preloaded with :data:`PRELOAD` where the platform has it, else ``spawn``."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))  # used when this process starts its server
    return ctx


def start_fork_server() -> None:
    """Start the fork server now and return at once: it imports :data:`PRELOAD` in the
    background, and the first worker is forked when it is done (no-op without a fork server,
    or when it is already running)."""
    if isinstance(worker_context(), ForkServerContext):
        forkserver.ensure_running()
