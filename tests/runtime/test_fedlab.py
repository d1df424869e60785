"""FedLab's cross-process runtime: codes, wire checks, handlers (hand-computed), managers against
a scripted network, and real runs of 1 server + 2 client processes on loopback."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
import torch
from torch import nn

import fedloom.runtime.fedlab as fedlab
from fedloom.algorithms.asynchronous import FedAsync, FedAsyncOptions, Staleness
from fedloom.algorithms.fedavg import FedAvg
from fedloom.runtime.fedlab import (
    ClientActiveTopology,
    ClientSyncTop,
    Coordinator,
    FedAsyncServerHandler,
    FedAvgServerHandler,
    MessageCode,
    MessageError,
    PassiveClientManager,
    PayloadError,
    SerialTrainer,
    SynchronousServerManager,
)
from fedloom.runtime.fedlab.wire import MAGIC, decode_body, decode_header, encode
from fedloom.runtime.simulation import Simulation
from fedloom.training.spec import ClientSpec
from tests.loopback import free_port, processes, spawn
from tests.runtime import fedlab_rank as tiny

FEDLAB_CODES = {"ParameterRequest": 0, "GradientUpdate": 1, "ParameterUpdate": 2,
                "EvaluateParams": 3, "Exit": 4, "SetUp": 5, "Activation": 6}


def info(client_id: int, num_examples: int, round: int) -> torch.Tensor:
    return torch.tensor([client_id, num_examples, round], dtype=torch.int64)


def two_params() -> nn.Module:
    return nn.Linear(1, 1)  # weight and bias: 2 flat values


# ---- codes and the wire -----------------------------------------------------------------------

def test_message_codes_are_fedlabs_names_and_values() -> None:
    assert {c.name: c.value for c in MessageCode} == FEDLAB_CODES
    assert MessageCode(2) is MessageCode.ParameterUpdate
    assert sorted(dir(fedlab)) == sorted(fedlab.__all__)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = fedlab.Nope  # type: ignore[attr-defined]


def test_wire_round_trip_keeps_dtypes_and_shapes() -> None:
    tensors = [torch.arange(6, dtype=torch.int64).view(2, 3), torch.tensor([0.5, -1.0]),
               torch.ones(1, dtype=torch.float64)]
    header, body = encode(MessageCode.ParameterUpdate, tensors, torch.device("cpu"))
    assert body is not None
    code, body_len, count = decode_header(header, sender=1, receiver=0)
    assert (code, body_len, count) == (MessageCode.ParameterUpdate, body.numel(), 3)
    got = decode_body(body, code=code, count=count, sender=1, receiver=0)
    assert [(t.dtype, t.shape) for t in got] == [(t.dtype, t.shape) for t in tensors]
    assert all(torch.equal(a, b) for a, b in zip(got, tensors))


def test_an_unknown_code_or_a_foreign_header_names_sender_and_code() -> None:
    with pytest.raises(MessageError, match=r"from rank 2 with code 99 \(not a MessageCode.*"
                                           r"at rank 0: unknown message code") as err:
        decode_header(torch.tensor([MAGIC, 99, 0, 0]), sender=2, receiver=0)
    assert (err.value.sender, err.value.code) == (2, 99)
    with pytest.raises(MessageError, match=r"rank 1 with code Exit.*not a fedloom FedLab header"):
        decode_header(torch.tensor([12345, 4, 0, 0]), sender=1, receiver=0)
    with pytest.raises(MessageError, match="bad header: 2 tensors in a body of 0 bytes"):
        decode_header(torch.tensor([MAGIC, 2, 0, 2]), sender=1, receiver=0)


def test_a_body_that_disagrees_with_its_header_is_refused() -> None:
    _, body = encode(MessageCode.ParameterUpdate, [torch.zeros(2)], torch.device("cpu"))
    assert body is not None
    with pytest.raises(MessageError, match=r"rank 1 with code ParameterUpdate.*announced 2 "
                                           r"tensors, the body holds 1"):
        decode_body(body, code=MessageCode.ParameterUpdate, count=2, sender=1, receiver=0)
    with pytest.raises(MessageError, match="the body says code 2, the header 4"):
        decode_body(body, code=MessageCode.Exit, count=1, sender=1, receiver=0)
    with pytest.raises(MessageError, match="unreadable body"):
        decode_body(torch.zeros(16, dtype=torch.uint8), code=MessageCode.Exit, count=1,
                    sender=1, receiver=0)


def test_coordinator_numbers_clients_across_processes() -> None:
    setup = {2: 2, 1: 3}
    assert Coordinator(setup, "GLOBAL").map_id_list([4, 0, 3]) == {2: [4, 3], 1: [0]}
    assert Coordinator(setup, "local").map_id_list([4, 0, 3]) == {2: [1, 0], 1: [0]}
    assert Coordinator(setup).total == 5
    with pytest.raises(ValueError, match="client id 5 is not held by any process"):
        Coordinator(setup).map_id(5)


# ---- handlers, hand-computed -------------------------------------------------------------------

def test_fedasync_handler_weights_by_staleness_and_advances_the_version() -> None:
    handler = FedAsyncServerHandler(two_params(), global_round=2, params=torch.zeros(2),
                                    algorithm=FedAsync(FedAsyncOptions(
                                        alpha=0.5, staleness=Staleness.POLYNOMIAL, a=1.0)))
    first, second = handler.downlink_package, handler.downlink_package  # both from version 0
    assert int(first[1]) == int(second[1]) == 0
    # staleness 0: mix 0.5 * (0 + 1)^-1 = 0.5 of the way from 0 to 1
    assert handler.load([torch.ones(2), info(0, 5, 0)]) is True
    assert handler.round == 1 and handler.model_parameters.tolist() == [0.5, 0.5]
    # staleness 1: mix 0.5 * (1 + 1)^-1 = 0.25 of the way from 0.5 to 2: 0.875
    assert handler.load([torch.full((2,), 2.0), info(1, 5, 0)]) is True
    assert handler.model_parameters.tolist() == [0.875, 0.875]
    assert handler.arrivals == [(0, 0, 0), (1, 0, 1)] and handler.if_stop
    assert int(handler.downlink_package[1]) == 2
    with pytest.raises(PayloadError, match="version 0, which was not handed out"):
        handler.load([torch.ones(2), info(0, 5, 0)])


def test_fedlab_setup_optim_chooses_fedasync_options() -> None:
    handler = FedAsyncServerHandler(two_params(), global_round=3, params=torch.zeros(2))
    handler.setup_optim(alpha=0.8, strategy="hinge", a=2, b=1)
    handler.downlink_package  # noqa: B018  (version 0 handed out)
    handler.downlink_package  # noqa: B018
    handler.load([torch.ones(2), info(0, 1, 0)])  # staleness 0: 0.8
    handler.downlink_package  # noqa: B018  (version 1)
    handler.load([torch.ones(2), info(1, 1, 0)])  # staleness 1 <= b: 0.8 again
    assert torch.allclose(handler.model_parameters, torch.full((2,), 1 - 0.2 * 0.2))
    handler.load([torch.zeros(2), info(2, 1, 1)])  # hinge at staleness 1: still 0.8
    assert torch.allclose(handler.model_parameters, torch.full((2,), 0.96 * 0.2))


def test_fedavg_handler_aggregates_by_client_id_whatever_the_arrival_order() -> None:
    handler = FedAvgServerHandler(two_params(), global_round=1, num_clients=4, sample_ratio=0.5,
                                  params=torch.zeros(2), seed=0)
    cohort = handler.sample_clients()
    assert len(cohort) == handler.num_clients_per_round == 2
    a, b = cohort
    assert handler.downlink_package[1].tolist() == [1]
    assert handler.load([torch.full((2,), 4.0), info(b, 3, 1)]) is False
    with pytest.raises(PayloadError, match=f"client {b}: a second result in round 1"):
        handler.load([torch.full((2,), 4.0), info(b, 3, 1)])
    assert handler.load([torch.ones(2), info(a, 1, 1)]) is True
    assert handler.model_parameters.tolist() == [3.25, 3.25]  # (1 * 1 + 3 * 4) / 4
    assert handler.round == 1 and handler.if_stop


@pytest.mark.parametrize(("payload", "problem"), [
    ([torch.zeros(2)], r"expected 2 tensors \[params, info.*got 1"),
    ([torch.zeros(3), info(0, 1, 1)], "flat float tensor of 2 values"),
    ([torch.zeros(2), torch.zeros(3)], "info: expected 3 integers"),
    ([torch.zeros(2), info(9, 1, 1)], "client 9 is not in round 1's clients"),
    ([torch.zeros(2), info(0, 1, 2)], "a result for round 2 during round 1"),
    ([torch.full((2,), float("nan")), info(0, 1, 1)], "non-finite"),
])
def test_fedavg_handler_refuses_packages_that_do_not_fit(payload: list[torch.Tensor],
                                                         problem: str) -> None:
    handler = FedAvgServerHandler(two_params(), global_round=1, num_clients=2,
                                  params=torch.zeros(2))
    assert handler.sample_clients() == [0, 1]
    with pytest.raises(PayloadError, match=problem):
        handler.load(payload)


# ---- managers against a scripted network --------------------------------------------------------

class ScriptedNetwork:
    """A DistNetwork stand-in: ``recv`` returns scripted messages, ``send`` records."""

    def __init__(self, rank: int, world_size: int,
                 script: list[tuple[int, MessageCode, list[torch.Tensor] | None]]) -> None:
        self.rank, self.world_size = rank, world_size
        self.script = deque(script)
        self.sent: list[tuple[int, MessageCode, list[torch.Tensor] | None]] = []
        self.closed = False

    def init_network_connection(self) -> None:
        pass

    def close_network_connection(self) -> None:
        self.closed = True

    def send(self, content: object = None, message_code: MessageCode | None = None,
             dst: int = 0) -> None:
        assert message_code is not None
        self.sent.append((dst, message_code, content))  # type: ignore[arg-type]

    def recv(self, src: int | None = None) -> tuple[int, MessageCode, list[torch.Tensor] | None]:
        sender, code, content = self.script.popleft()
        assert src is None or src == sender
        return sender, code, content


def test_a_server_stops_on_a_result_with_the_wrong_tensor_count() -> None:
    network = ScriptedNetwork(0, 2, [(1, MessageCode.SetUp, [torch.tensor([2])]),
                                     (1, MessageCode.ParameterUpdate, [torch.zeros(2)])])
    handler = FedAvgServerHandler(two_params(), global_round=1, params=torch.zeros(2))
    manager = SynchronousServerManager(network, handler)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match=r"message from rank 1 with code ParameterUpdate "
                                           r"\(2\) at rank 0: expected 2 tensors"):
        manager.run()
    assert network.sent[0][1] == MessageCode.ParameterUpdate and network.closed
    assert network.sent[0][2][0].tolist() == [0, 1]  # type: ignore[index]  # LOCAL ids


def test_a_server_stops_on_an_unexpected_code() -> None:
    network = ScriptedNetwork(0, 2, [(1, MessageCode.SetUp, [torch.tensor([1])]),
                                     (1, MessageCode.GradientUpdate, None)])
    handler = FedAvgServerHandler(two_params(), global_round=1, params=torch.zeros(2))
    with pytest.raises(MessageError, match=r"rank 1 with code GradientUpdate.*unexpected here; "
                                           r"expected ParameterUpdate"):
        SynchronousServerManager(network, handler).run()  # type: ignore[arg-type]


def tiny_trainer(**kwargs: object) -> SerialTrainer:
    data, model_fn = tiny.problem()
    spec = ClientSpec(model_fn=model_fn, train=data.train, client_indices=data.client_train,
                      seed=tiny.SEED)
    return SerialTrainer(spec, config=tiny.CLIENT, **kwargs)  # type: ignore[arg-type]


def test_passive_client_trains_the_ids_it_is_sent_and_says_goodbye() -> None:
    trainer = tiny_trainer(client_ids=[3, 4, 5])
    params = torch.zeros(trainer.layout.size)
    network = ScriptedNetwork(2, 3, [
        (0, MessageCode.ParameterUpdate, [torch.tensor([5, 3]), params, torch.tensor([1])]),
        (0, MessageCode.Exit, [torch.tensor([3, 4, 5]), params, torch.tensor([2])])])
    client = PassiveClientManager(network, trainer)  # type: ignore[arg-type]
    client.run()
    codes = [code for _, code, _ in network.sent]
    assert codes == [MessageCode.SetUp, MessageCode.ParameterUpdate,
                     MessageCode.ParameterUpdate, MessageCode.Exit]
    assert [c[1].tolist()[::2] for _, _, c in network.sent[1:3]] == [[5, 1], [3, 1]]  # type: ignore[index]
    assert client.final_payload is not None and network.closed


def test_a_client_stops_on_a_bad_model_message_naming_the_server() -> None:
    network = ScriptedNetwork(1, 2, [(0, MessageCode.ParameterUpdate, [torch.tensor([0])])])
    client = PassiveClientManager(network, tiny_trainer(client_ids=[0]))  # type: ignore[arg-type]
    with pytest.raises(MessageError, match=r"from rank 0 with code ParameterUpdate \(2\) at rank "
                                           r"1: expected \[client ids"):
        client.run()
    trainer = tiny_trainer(client_ids=[0])
    size = trainer.layout.size
    with pytest.raises(MessageError, match="params: expected 33 values, got shape \\[3\\]"):
        PassiveClientManager(ScriptedNetwork(1, 2, [(0, MessageCode.ParameterUpdate, [
            torch.tensor([0]), torch.zeros(3), torch.tensor([1])])]), trainer).run()  # type: ignore[arg-type]
    network = ScriptedNetwork(1, 2, [(0, MessageCode.ParameterUpdate,
                                      [torch.tensor([4]), torch.zeros(size), torch.tensor([1])])])
    client = PassiveClientManager(network, trainer)  # type: ignore[arg-type]
    with pytest.raises(MessageError, match="client 4 is not held by this process"):
        client.run()


def test_fedlab_1x_names_share_the_client_loop() -> None:
    assert issubclass(ClientSyncTop, fedlab.ClientCommunicationTopology)
    assert not ClientSyncTop.active and ClientActiveTopology.active
    assert ClientSyncTop.main_loop is PassiveClientManager.main_loop
    top = ClientActiveTopology(tiny_trainer(client_ids=[0, 1], local_ids=True),
                               ("127.0.0.1", 1), world_size=2, rank=1)
    assert (top.network.rank, top.network.world_size, top.server_addr) == (1, 2, ("127.0.0.1", 1))
    assert [top.next_client() for _ in range(3)] == [0, 1, 0]


def test_serial_trainer_doc_example() -> None:
    import fedloom.runtime.fedlab.trainer as module

    assert doctest.testmod(module).failed == 0


# ---- real processes on loopback ------------------------------------------------------------------

def run_ranks(tmp_path: Path, mode: str, roles: list[str],
              **env: str) -> tuple[list[str], Path]:
    """Rank i runs roles[i]; every process is killed if the test fails."""
    port, out = free_port(), tmp_path / f"{mode}.pt"
    env = {"FEDLOOM_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1", **env}
    with processes() as started:
        procs = [spawn(started, [sys.executable, "-m", "tests.runtime.fedlab_rank", role, mode,
                                 str(port), str(rank), str(len(roles)), str(out)], env=env)
                 for rank, role in enumerate(roles)]
        logs = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                pytest.fail(f"rank {procs.index(p)} did not finish")
            logs.append(f"rc {p.returncode}: {err[-3000:]}")
    return logs, out


@pytest.mark.integration
def test_sync_run_over_processes_equals_the_serial_simulation_bitwise(tmp_path: Path) -> None:
    logs, out = run_ranks(tmp_path, "sync", ["server", "client", "client"])
    assert all(log.startswith("rc 0") for log in logs), logs
    got = torch.load(out)
    data, model_fn = tiny.problem()
    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), client=tiny.CLIENT,
                     rounds=tiny.ROUNDS, cohort_size=tiny.COHORT, seed=tiny.SEED, threads=1)
    reference = sim.run().final.params
    assert got["round"] == tiny.ROUNDS
    assert torch.equal(got["params"], reference)
    assert not torch.equal(reference, sim.initial_params)


@pytest.mark.gpu
@pytest.mark.integration
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_sync_run_with_clients_on_the_gpu_equals_the_serial_fleet_there(
        tmp_path: Path, backend: str) -> None:
    if backend == "nccl" and torch.cuda.device_count() < 3:
        pytest.skip("NCCL needs a GPU per rank (3 here)")
    logs, out = run_ranks(tmp_path, "sync", ["server", "client", "client"],
                          FEDLAB_BACKEND=backend, FEDLAB_DEVICE="cuda:0")
    assert all(log.startswith("rc 0") for log in logs), logs
    from fedloom.fleets.config import FleetConfig, FleetKind

    data, model_fn = tiny.problem()
    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), client=tiny.CLIENT,
                     rounds=tiny.ROUNDS, cohort_size=tiny.COHORT, seed=tiny.SEED, threads=1,
                     fleet=FleetConfig(kind=FleetKind.SERIAL, devices="cuda:0"))
    assert torch.equal(torch.load(out)["params"], sim.run().final.params)


@pytest.mark.integration
def test_async_run_over_processes_advances_the_version(tmp_path: Path) -> None:
    logs, out = run_ranks(tmp_path, "async", ["server", "client", "client"])
    assert all(log.startswith("rc 0") for log in logs), logs
    got = torch.load(out)
    assert got["round"] == tiny.VERSIONS and len(got["arrivals"]) == tiny.VERSIONS
    for version, (client, trained_from, staleness) in enumerate(got["arrivals"]):
        assert 0 <= client < tiny.NUM_CLIENTS
        assert staleness == version - trained_from >= 0
    assert bool(torch.isfinite(got["params"]).all())


@pytest.mark.integration
@pytest.mark.parametrize(("rogue", "says"), [
    ("rogue-count", r"message from rank 1 with code ParameterUpdate \(2\) at rank 0: expected 2 "
                    r"tensors \[params, info"),
    ("rogue-code", r"message from rank 1 with code 99 \(not a MessageCode"),
])
def test_a_bad_message_stops_the_server_naming_sender_and_code(tmp_path: Path, rogue: str,
                                                               says: str) -> None:
    logs, _ = run_ranks(tmp_path, "sync", ["server", rogue])
    assert not logs[0].startswith("rc 0")
    assert "MessageError" in logs[0]
    assert re.search(says, logs[0]), logs[0]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_ported_mnist_example_runs(mode: str) -> None:
    from fedloom.core.errors import DataError
    from fedloom.data.config import DatasetName
    from fedloom.data.locate import IDX_FILES, locate_files

    try:
        locate_files(IDX_FILES[DatasetName.MNIST], None)
    except DataError as err:
        pytest.skip(f"MNIST is not here: {err}")
    where = Path(__file__).resolve().parents[2] / "examples" / "fedlab_cross_process"
    port = str(free_port())
    common = ["--port", port, "--world_size", "3", "--mode", mode, "--clients_per_process", "2"]
    env = {"FEDLOOM_DIST_TIMEOUT": "120", "FEDLOOM_OFFLINE": "1"}
    with processes() as started:
        server = spawn(started, [sys.executable, str(where / "server.py"), "--round", "2",
                                 *common], env=env)
        for rank in (1, 2):
            spawn(started, [sys.executable, str(where / "client.py"), "--rank", str(rank),
                            "--epochs", "1", *common], env=env)
        out, err = server.communicate(timeout=240)
    assert server.returncode == 0, err[-3000:]
    assert f'"mode": "{mode}", "rounds": 2' in out
