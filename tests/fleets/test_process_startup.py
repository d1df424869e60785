"""The process fleet's start-up: workers forked from a preloaded fork server, started as soon as a
run's fleet exists (before the first fit), and start-up failures still reported by name; and a
large cohort sent in runs of clients per job, bitwise as one client per job."""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import sys
from multiprocessing import forkserver
from pathlib import Path

import pytest
import torch

from fedloom import ClientConfig, FedAvg
from fedloom.core.errors import ClientError
from fedloom.core.packages import ClientResult, Downlink
from fedloom.core.threads import torch_threads
from fedloom.fleets import FleetConfig, FleetKind
from fedloom.fleets.process import ProcessFleet
from fedloom.fleets.process_pool import PRELOAD, ProcessPool, start_fork_server, worker_context
from fedloom.fleets.serial import fit_one
from fedloom.models import mlp
from fedloom.runtime.assemble import assemble
from fedloom.training.spec import ClientSpec
from tests.conftest import make_image_data
from tests.fleets.test_process import alive

DATA = make_image_data()
MODEL_FN = functools.partial(mlp, (1, 6, 6), 4, 8)
HAS_FORKSERVER = "forkserver" in mp.get_all_start_methods()


def probe(index: int, device: str) -> object:
    """A handler factory that reports, when it runs in the worker, what the worker had
    imported before any of its own work and who its parent process is."""
    preloaded = "torch._dynamo" in sys.modules
    return lambda job: (preloaded, os.getppid())


def broken(index: int, device: str) -> object:
    raise RuntimeError(f"no handler for worker {index}")


@pytest.mark.skipif(not HAS_FORKSERVER, reason="no fork server on this platform")
def test_workers_fork_from_a_server_that_imported_torch_and_fedloom() -> None:
    assert worker_context().get_start_method() == "forkserver"
    assert {"torch", "torch._dynamo", "fedloom"} <= set(PRELOAD)
    start_fork_server()
    start_fork_server()  # running already: nothing new
    server = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert server is not None and alive(server)
    pool = ProcessPool(probe, workers=2, devices=["cpu"], threads=1)
    try:
        replies = pool.map([None, None])
    finally:
        pool.close()
    # torch.optim's import of torch._dynamo (seconds) was paid once, by the server
    assert replies == [(True, server)] * 2
    assert forkserver._forkserver._forkserver_pid == server  # type: ignore[attr-defined]


def test_a_worker_that_cannot_start_is_a_client_error_at_first_use() -> None:
    pool = ProcessPool(broken, workers=1, devices=["cpu"], threads=1)  # returns at once
    pids = [w.proc.pid or 0 for w in pool._list]
    try:
        with pytest.raises(ClientError, match="worker 0 could not start") as err:
            pool.map(["job"])
        assert "RuntimeError: no handler for worker 0" in str(err.value)
    finally:
        pool.close()
    assert not any(alive(pid) for pid in pids)


def test_a_run_starts_its_workers_before_the_first_fit_and_matches_serial(
        tmp_path: Path) -> None:
    cfg = FleetConfig(kind=FleetKind.PROCESS, workers=2, threads=1, share_dir=str(tmp_path))
    parts = assemble(data=DATA, model_fn=MODEL_FN, algorithm=FedAvg(), seed=3, fleet=cfg)
    fleet = parts.fleet
    assert isinstance(fleet, ProcessFleet)
    session = fleet._session
    assert session is not None  # started by assemble, not by the first fit
    pids = [w.proc.pid or 0 for w in session.pool._list]
    assert len(pids) == 2 and all(pid > 0 for pid in pids)
    tasks = [Downlink(round=1, client_id=c, params=parts.initial_params,
                      config=ClientConfig(epochs=1, batch_size=4, lr=0.1)) for c in (3, 0, 4)]
    try:
        out = fleet.fit(1, tasks)
        trainer = parts.spec.trainer()
        with torch_threads(1):  # the workers' count: the same bits
            expected = {t.client_id: fit_one(trainer, t) for t in tasks}
        assert [o.client_id for o in out] == [0, 3, 4]
        for o in out:
            assert isinstance(o, ClientResult)
            assert torch.equal(o.params, expected[o.client_id].params)
        assert [w.proc.pid for w in session.pool._list] == pids  # the same workers
    finally:
        fleet.close()
    assert not any(alive(pid) for pid in pids)
    assert os.listdir(tmp_path) == []



def test_a_large_cohort_goes_out_in_runs_of_clients_with_the_same_bits(tmp_path: Path) -> None:
    sizes = tuple(5 + (c % 4) for c in range(18))
    data = make_image_data(num_clients=18, per_client=sizes)
    spec = ClientSpec(model_fn=MODEL_FN, train=data.train, client_indices=data.client_train,
                      seed=2)
    fleet = ProcessFleet(spec, FleetConfig(kind=FleetKind.PROCESS, workers=1,
                                           share_dir=str(tmp_path)))
    # 18 clients on one worker: jobs of 18 // 8 = 2 clients (one client each up to 15)
    assert [len(job) for job in fleet._split(list(range(18)))] == [2] * 9  # type: ignore[arg-type]
    assert [len(job) for job in fleet._split(list(range(15)))] == [1] * 15  # type: ignore[arg-type]
    params = fleet.layout.flatten(MODEL_FN().state_dict())
    tasks = [Downlink(round=4, client_id=c, params=params,
                      config=ClientConfig(epochs=1, batch_size=3, lr=0.1)) for c in range(18)]
    try:
        out = fleet.fit(4, list(reversed(tasks)))
    finally:
        fleet.close()
    trainer = spec.trainer()
    with torch_threads(1):
        for o, t in zip(out, tasks, strict=True):
            assert isinstance(o, ClientResult) and o.client_id == t.client_id
            expected = fit_one(trainer, t)
            assert isinstance(expected, ClientResult)
            assert torch.equal(o.params, expected.params) and o.num_examples == sizes[t.client_id]


EARLY = """
import argparse, sys
import fedloom
from multiprocessing import forkserver
from fedloom.cli.common import start_workers_early
start_workers_early(argparse.Namespace(config=sys.argv[1], resume=None, overrides=sys.argv[2:]))
print("torch" in sys.modules, forkserver._forkserver._forkserver_pid is not None)
"""


@pytest.mark.skipif(not HAS_FORKSERVER, reason="no fork server on this platform")
@pytest.mark.parametrize(("yaml", "overrides", "started"), [
    ("fleet: {kind: process}\n", [], True),
    ("fleet: {kind: serial}\n", ["fleet.kind=process"], True),
    ("fleet: {kind: process}\n", ["fleet.kind=serial", "rounds=2"], False),
    ("rounds: 2\n", ["fleet={kind: process, workers: 2}"], True),  # the whole group overridden
    ("rounds: 2\n", [], False),  # the default fleet is serial
    ("fleet: [unclosed\n", [], False),  # broken YAML: load_config reports it later
])
def test_fedloom_run_starts_the_fork_server_before_it_imports_torch(
        tmp_path: Path, yaml: str, overrides: list[str], started: bool) -> None:
    import subprocess

    config = tmp_path / "run.yaml"
    config.write_text(yaml)
    out = subprocess.run([sys.executable, "-c", EARLY, str(config), *overrides],
                         capture_output=True, text=True, check=True, timeout=120)
    # `import fedloom` and the command line's config look load no torch; the server (which
    # imports torch itself) is up exactly when the config asks for the process fleet
    assert out.stdout.split() == ["False", str(started)]


def tuned(index: int, device: str) -> object:
    """A handler factory reporting whether the worker kept freed memory (core.allocator)."""
    from fedloom.core import allocator

    return lambda job: allocator._done


@pytest.mark.skipif(sys.platform != "linux" or not os.confstr("CS_GNU_LIBC_VERSION"),
                    reason="glibc only")
def test_workers_keep_freed_memory_for_reuse() -> None:
    pool = ProcessPool(tuned, workers=2, devices=["cpu"], threads=1)
    try:
        assert pool.map([None, None]) == [True, True]
    finally:
        pool.close()
