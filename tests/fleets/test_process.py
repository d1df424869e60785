"""The process fleet: bitwise equal to the serial fleet, shared memory, failures, clean shutdown.

Spawning a worker costs a few seconds, so the fleets are module-scoped and shared by the tests.
Hooks that kill a worker are module-level (spawned workers import them) and fire only in rounds
no other test uses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import torch

from fedloom import ClientConfig, ClientFailure, ClientResult, ConfigError, FedAvg, Simulation
from fedloom.algorithms.base import PLAIN, LocalSpec
from fedloom.core.metrics import Mean
from fedloom.core.packages import Downlink, Outcome, split_outcomes
from fedloom.fleets import Fleet, FleetConfig, FleetKind
from fedloom.fleets.client_worker import eval_slices
from fedloom.fleets.process import ProcessFleet
from fedloom.fleets.serial import fit_one
from fedloom.models import mlp
from fedloom.training.evaluation import CentralEvaluator
from fedloom.training.spec import ClientSpec
from tests.conftest import make_image_data

DATA = make_image_data()
MODEL_FN = functools.partial(mlp, (1, 6, 6), 4, 8)
CONFIGS = [ClientConfig(epochs=2, batch_size=4, lr=0.05),
           ClientConfig(epochs=1, batch_size=5, lr=0.1, momentum=0.9, weight_decay=1e-3)]
DEATH_ROUND, FAIL_ROUND = 99, 98


def misbehave(result: ClientResult, downlink: Downlink) -> ClientResult:
    """A ``finish`` hook: in DEATH_ROUND client 1 exits and client 2 is killed; in FAIL_ROUND
    client 3 raises."""
    if downlink.round == DEATH_ROUND and downlink.client_id == 1:
        os._exit(3)
    if downlink.round == DEATH_ROUND and downlink.client_id == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    if downlink.round == FAIL_ROUND and downlink.client_id == 3:
        raise RuntimeError("bad client")
    return result


SPEC = ClientSpec(model_fn=MODEL_FN, train=DATA.train, client_indices=DATA.client_train, seed=5,
                  local=LocalSpec(finish=misbehave), test=DATA.test, eval_batch_size=8)


def process_fleet(workers: int, **kw: object) -> Iterator[ProcessFleet]:
    fleet = ProcessFleet(SPEC, FleetConfig(kind=FleetKind.PROCESS, workers=workers, **kw))
    yield fleet
    fleet.close()


@pytest.fixture(scope="module")
def fleet2() -> Iterator[ProcessFleet]:
    yield from process_fleet(2)


def user_loop(fleet: Fleet, cfg: ClientConfig, rounds: int = 3) -> torch.Tensor:
    """The round loop by hand over any fleet (what Simulation.run computes)."""
    sim = Simulation(data=DATA, model_fn=MODEL_FN, algorithm=FedAvg(), client=cfg, rounds=rounds,
                     cohort_size=3, seed=5, threads=1)
    state = sim.state
    for rnd in range(1, rounds + 1):
        tasks = sim.algorithm.configure(rnd, state, sim.sampler.sample(rnd), cfg)
        ok, failed = split_outcomes(fleet.fit(rnd, tasks), sim.layout.size)
        assert not failed
        state = sim.algorithm.aggregate(rnd, state, ok)
    return state.params


def serial_final(cfg: ClientConfig) -> torch.Tensor:
    sim = Simulation(data=DATA, model_fn=MODEL_FN, algorithm=FedAvg(), client=cfg, rounds=3,
                     cohort_size=3, seed=5, threads=1)
    final = sim.run().final.params
    assert not torch.equal(final, sim.initial_params)
    return final


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_process_fleet_is_bitwise_the_serial_fleet(workers: int, fleet2: ProcessFleet) -> None:
    fleets = [fleet2] if workers == 2 else list(process_fleet(workers))
    try:
        for cfg in CONFIGS:
            expected = serial_final(cfg)
            assert torch.equal(user_loop(fleets[0], cfg), expected)
    finally:
        if workers != 2:
            fleets[0].close()


def tasks_for(round: int, cohort: Sequence[int], params: torch.Tensor) -> list[Downlink]:
    return [Downlink(round=round, client_id=c, params=params, config=CONFIGS[1]) for c in cohort]


def serial_outcomes(tasks: list[Downlink]) -> dict[int, Outcome]:
    trainer = dataclasses.replace(SPEC, local=PLAIN).trainer()  # the hook would kill pytest
    return {t.client_id: fit_one(trainer, t) for t in tasks}


def test_failed_and_growing_cohorts_match_serial(fleet2: ProcessFleet) -> None:
    params = fleet2.layout.flatten(MODEL_FN().state_dict())
    for cohort in ([4, 0], [0, 1, 2, 3, 4]):  # the slab grows from 2 rows to 5
        tasks = tasks_for(FAIL_ROUND, cohort, params)
        out = fleet2.fit(FAIL_ROUND, list(reversed(tasks)))
        assert [o.client_id for o in out] == sorted(cohort)
        expected = serial_outcomes(tasks)
        for o in out:
            if o.client_id == 3:
                assert isinstance(o, ClientFailure) and o.stage == "fit"
                assert "RuntimeError: bad client" in o.message
            else:
                e = expected[o.client_id]
                assert isinstance(o, ClientResult) and isinstance(e, ClientResult)
                assert torch.equal(o.params, e.params)
                assert (o.num_examples, o.num_steps, o.metrics) == \
                    (e.num_examples, e.num_steps, e.metrics)


def test_each_task_trains_at_its_own_round(fleet2: ProcessFleet) -> None:
    """One fit may carry tasks of different rounds (a hierarchy's clients, an async run's
    tasks): each client's batches come from its own round's stream, as on the serial fleet."""
    params = fleet2.layout.flatten(MODEL_FN().state_dict())
    tasks = [*tasks_for(2, [0, 1], params), *tasks_for(7, [2, 4], params)]
    expected = serial_outcomes(tasks)
    for o in fleet2.fit(1, tasks):
        e = expected[o.client_id]
        assert isinstance(o, ClientResult) and isinstance(e, ClientResult)
        assert o.round == e.round and torch.equal(o.params, e.params)


def test_kept_results_are_never_overwritten_and_dropped_ones_are_reused(
        fleet2: ProcessFleet) -> None:
    params = fleet2.layout.flatten(MODEL_FN().state_dict())
    first = fleet2.fit(3, tasks_for(3, [0, 1], params))
    kept = [o.params.clone() for o in first]  # type: ignore[union-attr]
    assert fleet2._session is not None
    slab = fleet2._session.up.ref
    second = fleet2.fit(4, tasks_for(4, [0, 1], params))  # other round, other bits
    assert fleet2._session.up.ref != slab  # `first` is alive: a fresh slab
    assert all(torch.equal(o.params, k) for o, k in zip(first, kept))  # type: ignore[union-attr]
    assert not torch.equal(second[0].params, kept[0])  # type: ignore[union-attr]
    del first, second
    slab = fleet2._session.up.ref
    fleet2.fit(5, tasks_for(5, [0, 1], params))
    assert fleet2._session.up.ref == slab  # nothing kept: written in place


def worker_pids(fleet: ProcessFleet) -> list[int]:
    assert fleet._session is not None
    return [w.proc.pid or 0 for w in fleet._session.pool._list]


def test_dead_workers_become_failures_and_are_replaced(fleet2: ProcessFleet) -> None:
    params = fleet2.layout.flatten(MODEL_FN().state_dict())
    fleet2.fit(1, tasks_for(1, [0], params))
    before = worker_pids(fleet2)
    tasks = tasks_for(DEATH_ROUND, range(5), params)
    out = {o.client_id: o for o in fleet2.fit(DEATH_ROUND, tasks)}
    assert isinstance(out[1], ClientFailure) and out[1].stage == "worker"
    assert "exited with code 3" in out[1].message
    assert isinstance(out[2], ClientFailure) and "killed by signal SIGKILL" in out[2].message
    expected = serial_outcomes(tasks)
    for cid in (0, 3, 4):
        assert torch.equal(out[cid].params, expected[cid].params)  # type: ignore[union-attr]
    after = worker_pids(fleet2)
    assert len(after) == 2 and set(after) != set(before)
    again = fleet2.fit(2, tasks_for(2, range(5), params))  # the run goes on
    assert all(isinstance(o, ClientResult) for o in again)


def test_evaluation_is_spread_and_matches_the_serial_evaluator(fleet2: ProcessFleet) -> None:
    assert eval_slices(40, 8, 2) == [(0, 16), (16, 40)]
    params = fleet2.layout.flatten(MODEL_FN().state_dict())
    got = fleet2.evaluate(params)
    want = CentralEvaluator(model_fn=MODEL_FN, test=DATA.test, batch_size=8)(params)
    assert got is not None
    assert abs(got["test_loss"].value - want["test_loss"].value) < 1e-6
    assert got["test_accuracy"] == want["test_accuracy"]
    assert fleet2.last_fit is not None and len(fleet2.last_fit.busy) == 2


def test_simulation_on_the_process_fleet_equals_serial(fleet2: ProcessFleet) -> None:
    """The last test of fleet2: Simulation.run closes the fleet it is given."""
    def sim(fleet: Fleet | str) -> Simulation:
        return Simulation(data=DATA, model_fn=MODEL_FN, algorithm=FedAvg(), client=CONFIGS[1],
                          rounds=3, cohort_size=3, seed=5, threads=1, eval_batch_size=8,
                          fleet=fleet)

    serial, spread = sim("serial").run(), sim(fleet2).run()
    assert torch.equal(spread.final.params, serial.final.params)
    for a, b in zip(spread.rows, serial.rows, strict=True):
        assert abs(a["test_loss"] - b["test_loss"]) < 1e-6  # type: ignore[operator]
        assert a["test_accuracy"] == b["test_accuracy"]
    assert fleet2._session is None  # closed: workers stopped, shared files removed


def test_eval_slices_cover_on_batch_boundaries() -> None:
    assert eval_slices(10_000, 1000, 2) == [(0, 5000), (5000, 10_000)]
    assert eval_slices(40, 1000, 3) == [(0, 40)]
    assert eval_slices(25, 10, 2) == [(0, 20), (20, 25)]


def test_unpicklable_model_or_loss_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model_fn = .*lambda.*module-level function"):
        ProcessFleet(ClientSpec(model_fn=lambda: MODEL_FN(), train=DATA.train,
                                client_indices=DATA.client_train, seed=0))
    with pytest.raises(ConfigError, match=r"loss_fn = .*functools.partial"):
        ProcessFleet(ClientSpec(model_fn=MODEL_FN, train=DATA.train, seed=0,
                                client_indices=DATA.client_train, loss_fn=lambda a, b: a.sum()))


def test_unwritable_share_dir_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"fleet.share_dir = .*missing.*not a writable"):
        ProcessFleet(SPEC, FleetConfig(kind=FleetKind.PROCESS, share_dir=str(tmp_path / "missing")))


def test_vectorize_without_the_vectorized_trainer_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fedloom.fleets.vectorized",
                        types.ModuleType("fedloom.fleets.vectorized"))
    with pytest.raises(ConfigError, match=r"fleet.vectorize .* not available"):
        ProcessFleet(SPEC, FleetConfig(kind=FleetKind.PROCESS, vectorize=True))


class FakeVectorized:
    """Stands in for VectorizedTrainer: trains its share serially, reporting the share's size."""

    def __init__(self, spec: ClientSpec, device: str, chunk: int | None) -> None:
        self.trainer = spec.trainer(device)

    def fit_many(self, tasks: Sequence[Downlink]) -> list[Outcome]:
        out = [fit_one(self.trainer, t) for t in tasks]
        return [ClientResult(round=o.round, client_id=o.client_id, params=o.params,
                             num_examples=o.num_examples, num_steps=o.num_steps,
                             metrics={"share": Mean(len(tasks), 1)})
                for o in out if isinstance(o, ClientResult)]


def test_vectorize_gives_each_worker_a_contiguous_share(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    fake = types.ModuleType("fedloom.fleets.vectorized")
    fake.VectorizedTrainer = FakeVectorized  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fedloom.fleets.vectorized", fake)
    cfg = FleetConfig(kind=FleetKind.PROCESS, workers=3, vectorize=True)
    fleet = ProcessFleet(SPEC, cfg)  # not started: _split needs no workers
    shares = fleet._split(list(range(5)))  # type: ignore[arg-type]
    assert shares == [(0, 1), (2, 3), (4,)]
    with ProcessFleet(SPEC, FleetConfig(kind=FleetKind.PROCESS, workers=1, vectorize=True,
                                        share_dir=str(tmp_path))) as one:
        tasks = tasks_for(1, [2, 0, 4], one.layout.flatten(MODEL_FN().state_dict()))
        out = one.fit(1, tasks)
        expected = serial_outcomes(tasks)
        assert [o.metrics["share"].value for o in out] == [3.0] * 3  # type: ignore[union-attr]
        assert all(torch.equal(o.params, expected[o.client_id].params)  # type: ignore[union-attr]
                   for o in out)
        pids = worker_pids(one)
        assert os.listdir(tmp_path)  # data, params and slab live in share_dir
    assert os.listdir(tmp_path) == []
    assert all(not alive(pid) for pid in pids)
    assert torch.isfinite(out[0].params).all()  # type: ignore[union-attr]  # mapping outlives


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


CTRL_C_SCRIPT = textwrap.dedent("""
    import json, signal, sys
    # Ctrl-C raises KeyboardInterrupt even when the test runner was started with SIGINT ignored
    # (a background job of a non-interactive shell), which its children would inherit
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from fedloom.fleets import FleetConfig, FleetKind
    from fedloom.fleets.process import ProcessFleet
    sys.path.insert(0, {here!r})
    from test_process import SPEC, tasks_for

    if __name__ == "__main__":
        fleet = ProcessFleet(SPEC, FleetConfig(kind=FleetKind.PROCESS, workers=1))
        params = fleet.layout.flatten(SPEC.model_fn().state_dict())
        fleet.fit(1, tasks_for(1, range(5), params))
        pids = [w.proc.pid for w in fleet._session.pool._list]
        print(json.dumps({{"pids": pids, "prefix": fleet._session.arena.prefix}}), flush=True)
        while True:  # no close, no context manager: the atexit handler must clean up
            fleet.fit(2, tasks_for(2, range(5), params))
""")


def test_ctrl_c_stops_workers_and_removes_shared_files(tmp_path: Path) -> None:
    script = tmp_path / "ctrl_c.py"
    script.write_text(CTRL_C_SCRIPT.format(here=str(Path(__file__).parent)))
    root = Path(__file__).parents[2]
    proc = subprocess.Popen([sys.executable, str(script)], cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate()[1]
    info = json.loads(line)
    prefix = Path(info["prefix"])
    assert [p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name)]
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=30)
    assert "KeyboardInterrupt" in err and proc.returncode != 0
    assert [p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name)] == []
    assert not any(alive(pid) for pid in info["pids"])
    assert err.count("KeyboardInterrupt") == 1, err  # workers ignored it
