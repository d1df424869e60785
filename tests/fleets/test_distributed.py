"""The distributed fleet under torchrun on loopback, against the serial fleet.

Exact mode is bitwise the serial fleet with 2 and 3 ranks; reduce mode agrees within tolerance;
a client failing on a worker rank reaches rank 0 as a failure value; worker ranks write no run
directory; without torchrun the fleet is a clear configuration error.

Ranks are started with ``python -m torch.distributed.run`` on 127.0.0.1 and a free port, in a
session of their own that is killed if it outlives its timeout. They run either the CLI
(``-m fedloom run``) or this file as a script (``main`` below), for scenarios that inject a
failing client.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from fedloom import ClientConfig, ConfigError, DataConfig, FedAvg, Simulation, load_federated
from fedloom.app.config import load_config
from fedloom.app.experiment import run_experiment
from fedloom.cli import main as cli_main
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientFailure, ClientResult, Downlink, Outcome
from fedloom.fleets import FleetConfig, FleetKind
from fedloom.fleets.config import AggregationMode
from fedloom.fleets.dist_env import choose_device
from fedloom.fleets.dist_wire import (
    Op,
    TensorTable,
    decode_outcomes,
    decode_share,
    encode_outcomes,
    encode_round,
    pack,
    unpack,
)
from fedloom.fleets.distributed import DistributedFleet, share_of
from fedloom.models import ModelConfig, model_factory
from fedloom.runtime.sampling import UniformSampler
from fedloom.training.trainer import LocalTrainer

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "fedavg_synthetic_1_1.yaml")
#: 12 clients, 6 per round, 3 rounds; 913 test examples in 10 eval batches, so every rank
#: evaluates a slice, every round (the next round then trains from the model already sent for
#: evaluation); one torch thread per client on both sides.
SMALL = ["data.name=synthetic", "data.num_clients=12", "model.name=logreg", "cohort.size=6",
         "rounds=3", "client.lr=0.01", "client.epochs=1", "client.batch_size=10",
         "fleet.threads=1", "eval.batch_size=100", "eval.every=1"]
#: the second client of round 1's cohort: rank 1's first client when there are 2 ranks
BAD_CLIENT = UniformSampler(num_clients=12, size=6, seed=0).sample(1)[1]
FLAKY = ["cohort.min_success=5"]
#: reduce mode against exact: float64 sums rounded once vs the serial float32 weighted sum
ATOL, RTOL = 1e-6, 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def torchrun(nproc: int, args: Sequence[str], cwd: Path,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Launch ``nproc`` ranks on loopback; kill the whole session if they outlive ``timeout``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(FEDLOOM_DIST_TIMEOUT="60", OMP_NUM_THREADS="1", FEDLOOM_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "--monitor-interval=0.1", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def final_model(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def flaky(original: Callable[[LocalTrainer, Downlink], ClientResult]) \
        -> Callable[[LocalTrainer, Downlink], ClientResult]:
    """``LocalTrainer.fit``, raising for BAD_CLIENT (a client whose training fails)."""

    def fit(self: LocalTrainer, downlink: Downlink) -> ClientResult:
        if downlink.client_id == BAD_CLIENT:
            raise RuntimeError(f"boom on client {downlink.client_id}")
        return original(self, downlink)
    return fit


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "run"
    assert cli_main(["run", CONFIG, *SMALL, f"out={out}", "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def serial_flaky(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial_flaky") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LocalTrainer, "fit", flaky(LocalTrainer.fit))
        run_experiment(load_config(CONFIG, [*SMALL, *FLAKY, f"out={out}"]), console=False)
    return out


# ---- across processes ------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("nproc", [2, 3])
def test_exact_mode_is_bitwise_the_serial_fleet(nproc: int, serial: Path, tmp_path: Path) -> None:
    cwd, out = tmp_path / "cwd", tmp_path / "dist"
    cwd.mkdir()
    proc = torchrun(nproc, ["-m", "fedloom", "run", CONFIG, *SMALL, "fleet.kind=distributed",
                            f"out={out}", "--quiet"], cwd)
    assert proc.returncode == 0, proc.stderr
    expected, got = final_model(serial), final_model(out)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not torch.equal(got["1.weight"], torch.zeros_like(got["1.weight"]))
    for want, have in zip(rows(serial), rows(out), strict=True):
        for key in ("round", "num_results", "num_failures", "train_loss", "test_accuracy"):
            assert have[key] == want[key], key
        if want["test_loss"] is not None:  # spread over ranks: float64 sums in another order
            assert math.isclose(have["test_loss"], want["test_loss"], rel_tol=1e-12)
    # only rank 0 wrote a run directory and reported; the workers left nothing behind
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.jsonl",
                                               "model.safetensors", "metrics.png"}
    assert list(cwd.iterdir()) == []
    assert proc.stdout.count("final test accuracy") == 1


@pytest.mark.integration
@pytest.mark.parametrize(("algorithm", "nproc"), [("scaffold", 2), ("scaffold", 3),
                                                   ("ditto", 2), ("feddyn", 2)])
def test_algorithms_with_per_client_state_are_bitwise_the_serial_fleet(
        algorithm: str, nproc: int, tmp_path: Path) -> None:
    """Per-client extras (SCAFFOLD's c_i, Ditto's personal models, FedDyn's h_i) travel to the
    rank that trains the client and back; the final model equals the serial fleet's."""
    overrides = [*SMALL, f"algorithm.name={algorithm}"]
    serial_out = tmp_path / "serial"
    assert cli_main(["run", CONFIG, *overrides, f"out={serial_out}", "--quiet"]) == 0
    cwd, out = tmp_path / "cwd", tmp_path / "dist"
    cwd.mkdir()
    proc = torchrun(nproc, ["-m", "fedloom", "run", CONFIG, *overrides,
                            "fleet.kind=distributed", f"out={out}", "--quiet"], cwd)
    assert proc.returncode == 0, proc.stderr
    expected, got = final_model(serial_out), final_model(out)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [r["train_loss"] for r in rows(out)] == [r["train_loss"] for r in rows(serial_out)]


def rank_main(scenario: str, base: str) -> int:
    """One rank of a script scenario (under torchrun): FedAvg with BAD_CLIENT failing, with
    ``fleet.aggregation=reduce`` (``reduce``) or with FedAvg made non-reducible so it falls
    back to exact (``fallback``). Each rank is given its own ``out``; rank 0 reports the
    failures its fleet returned."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    rank = int(os.environ["RANK"])
    failures: list[list[object]] = []

    def recording(method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(self: DistributedFleet, round: int, tasks: Sequence[Downlink]) -> Any:
            got = method(self, round, tasks)
            outcomes: list[Outcome] = got[0] if isinstance(got, tuple) else got
            failures.extend([o.round, o.client_id, o.stage, o.message] for o in outcomes
                            if isinstance(o, ClientFailure))
            return got
        return wrapped

    expected = Op.REDUCE if scenario == "reduce" else Op.FIT
    server_fit = DistributedFleet._server_fit

    def only_expected(self: DistributedFleet, op: Op, round: int,
                      tasks: Sequence[Downlink]) -> Any:
        if op is not expected:
            raise AssertionError(f"scenario {scenario}: the {op.name} path must not run")
        return server_fit(self, op, round, tasks)

    LocalTrainer.fit = flaky(LocalTrainer.fit)  # type: ignore[method-assign]
    DistributedFleet.fit = recording(DistributedFleet.fit)  # type: ignore[method-assign]
    DistributedFleet._server_fit = only_expected  # type: ignore[method-assign]
    if scenario != "reduce":
        FedAvg.reducible = False
    cfg = load_config(CONFIG, [*SMALL, *FLAKY, "fleet.kind=distributed",
                               "fleet.aggregation=reduce", f"out={base}/rank{rank}"])
    run_experiment(cfg, console=False)
    if rank == 0:
        (Path(base) / "failures.json").write_text(json.dumps(failures))
    return 0


@pytest.mark.integration
@pytest.mark.parametrize("scenario", ["reduce", "fallback"])
def test_failure_on_a_worker_rank_and_reduce_mode(scenario: str, serial_flaky: Path,
                                                  tmp_path: Path) -> None:
    tasks = [Downlink(round=1, client_id=c, params=torch.zeros(1), config=ClientConfig())
             for c in UniformSampler(num_clients=12, size=6, seed=0).sample(1)]
    assert BAD_CLIENT in [t.client_id for t in share_of(tasks, 1, 2)]  # a worker's client
    proc = torchrun(2, [__file__, scenario, str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # worker ranks wrote no run directory
    assert {p.name for p in tmp_path.iterdir()} == {"rank0", "failures.json"}
    failures = json.loads((tmp_path / "failures.json").read_text())
    assert [1, BAD_CLIENT, "fit", f"RuntimeError: boom on client {BAD_CLIENT}"] in failures
    assert all(f[1] == BAD_CLIENT for f in failures)
    got, expected = final_model(tmp_path / "rank0"), final_model(serial_flaky)
    assert [r["num_failures"] for r in rows(tmp_path / "rank0")] == \
        [r["num_failures"] for r in rows(serial_flaky)]
    assert rows(tmp_path / "rank0")[0]["num_failures"] == 1
    if scenario == "fallback":
        assert "not reducible" in proc.stderr
        assert all(torch.equal(expected[k], got[k]) for k in expected)
    else:
        assert "not reducible" not in proc.stderr
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], atol=ATOL, rtol=RTOL)


# ---- in this process -------------------------------------------------------------------------

def test_without_torchrun_is_a_config_error_naming_the_launch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert not dist.is_initialized()
    code = cli_main(["run", CONFIG, *SMALL, "fleet.kind=distributed", f"out={tmp_path / 'x'}",
                     "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "torchrun --nproc_per_node" in err and "RANK" in err
    assert not (tmp_path / "x").exists()


@pytest.fixture
def world_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torchrun's environment for a single rank in this process; the group is gone after."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("FEDLOOM_DIST_TIMEOUT", "30")
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def small_sim(fleet: str | FleetConfig) -> Simulation:
    data = load_federated(DataConfig(name="synthetic", num_clients=12), seed=0)
    model_fn = model_factory(ModelConfig(name="logreg"), data.input_shape, data.num_classes)
    return Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(),
                      client=ClientConfig(lr=0.01, batch_size=10), rounds=2, cohort_size=4,
                      seed=3, fleet=fleet, eval_batch_size=100, threads=1)


class FakeVectorizedTrainer:
    """Stands in for fedloom.fleets.vectorized.VectorizedTrainer: records each fit_many."""

    calls: ClassVar[list[list[int]]] = []

    def __init__(self, spec: Any, *, device: torch.device, chunk: int | None) -> None:
        self.trainer = spec.trainer(device)

    def fit_many(self, tasks: Sequence[Downlink]) -> list[Outcome]:
        FakeVectorizedTrainer.calls.append([t.client_id for t in tasks])
        return [self.trainer.fit(t) for t in tasks]


@pytest.mark.parametrize("mode", [AggregationMode.EXACT, AggregationMode.REDUCE])
def test_world_of_one_vectorized_share(mode: AggregationMode, world_of_one: None,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("fedloom.fleets.vectorized")
    fake.VectorizedTrainer = FakeVectorizedTrainer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fedloom.fleets.vectorized", fake)
    FakeVectorizedTrainer.calls = []
    expected = small_sim("serial").run()
    sim = small_sim(FleetConfig(kind=FleetKind.DISTRIBUTED, threads=1, vectorize=True,
                                aggregation=mode))
    assert sim.fleet.reduces == (mode is AggregationMode.REDUCE)  # type: ignore[attr-defined]
    got = sim.run()
    assert not dist.is_initialized()  # close() destroyed the group it created
    assert FakeVectorizedTrainer.calls == [sim.sampler.sample(r) for r in (1, 2)]
    if mode is AggregationMode.EXACT:
        assert torch.equal(got.final.params, expected.final.params)
        assert got.rows[-1]["test_accuracy"] == expected.rows[-1]["test_accuracy"]
    else:
        torch.testing.assert_close(got.final.params, expected.final.params, atol=ATOL,
                                   rtol=RTOL)


def test_vectorize_without_a_vectorized_trainer_is_a_config_error(
        world_of_one: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fedloom.fleets.vectorized", None)
    with pytest.raises(ConfigError, match=r"fleet\.vectorize"):
        small_sim(FleetConfig(kind=FleetKind.DISTRIBUTED, vectorize=True))
    assert not dist.is_initialized()


def test_tasks_and_outcomes_cross_the_wire_unchanged() -> None:
    params = torch.randn(7)
    extra = torch.arange(3, dtype=torch.int64)
    cfg = ClientConfig(steps=4, batch_size=3, lr=0.3, momentum=0.5)
    tasks = [Downlink(round=2, client_id=c, params=params, config=cfg,
                      extras={"c": extra} if c == 5 else {}) for c in (1, 5, 9)]
    meta, shared, own = encode_round(tasks, 2)  # rank 0: clients 1 and 9; rank 1: client 5
    assert shared.tensors == [params]  # the shared model once, to every rank
    assert [len(t.tensors) for t in own] == [0, 1]  # client 5's own tensor goes to rank 1 only
    got_meta, tensors = unpack(pack(meta, shared.tensors))
    (back,) = decode_share(2, got_meta, 1, 2, tensors, unpack(pack([], own[1].tensors))[1])
    assert back.client_id == 5 and back.config == cfg and torch.equal(back.params, params)
    assert torch.equal(back.extras["c"], extra)
    mine = decode_share(2, got_meta, 0, 2, tensors, [])
    assert [t.client_id for t in mine] == [1, 9] and mine[0].extras == {}
    outcomes: list[Outcome] = [
        ClientResult(round=2, client_id=1, params=torch.randn(7, dtype=torch.float64),
                     num_examples=11, num_steps=3, metrics={"train_loss": Mean(0.1 + 0.2, 3)},
                     extras={"c_i": torch.randn(2, 3)}),
        ClientFailure(round=2, client_id=5, stage="fit", message="RuntimeError: boom"),
    ]
    table = TensorTable()
    back_outcomes = decode_outcomes(*unpack(pack(encode_outcomes(outcomes, table),
                                                 table.tensors)))
    first, second = back_outcomes
    assert second == outcomes[1]
    assert isinstance(first, ClientResult) and isinstance(outcomes[0], ClientResult)
    assert torch.equal(first.params, outcomes[0].params)
    assert torch.equal(first.extras["c_i"], outcomes[0].extras["c_i"])
    assert first.metrics == outcomes[0].metrics and first.num_examples == 11


def test_shares_are_disjoint_round_robin_and_cover_the_cohort() -> None:
    tasks = [Downlink(round=1, client_id=c, params=torch.zeros(1), config=ClientConfig())
             for c in (8, 3, 5, 1, 9)]
    shares = [[t.client_id for t in share_of(tasks, r, 3)] for r in range(3)]
    assert shares == [[1, 8], [3, 9], [5]]


def test_devices_are_assigned_round_robin_and_checked() -> None:
    assert choose_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(ConfigError, match="one kind of device"):
        choose_device("cpu,cuda:0", 0)
    with pytest.raises(ConfigError, match="cpu \\(gloo\\) or cuda"):
        choose_device("meta", 0)
    if not torch.cuda.is_available():
        assert choose_device(None, 1) == torch.device("cpu")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            choose_device("cuda:0", 0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_default_device_and_wire() -> None:
    count = torch.cuda.device_count()
    assert choose_device(None, 1) == torch.device("cuda", 1 % count)
    assert choose_device("cuda:0,cuda:0", 1) == torch.device("cuda", 0)
    params = torch.randn(5)
    meta, shared, _ = encode_round(
        [Downlink(round=1, client_id=c, params=params, config=ClientConfig()) for c in (0, 1)], 2)
    got_meta, tensors = unpack(pack(meta, shared.tensors, torch.device("cuda", 0)))
    assert tensors[0].device.type == "cuda"
    assert torch.equal(decode_share(1, got_meta, 1, 2, tensors, [])[0].params.cpu(), params)


if __name__ == "__main__":  # a rank of a script scenario, started by torchrun
    sys.exit(rank_main(*sys.argv[1:]))
