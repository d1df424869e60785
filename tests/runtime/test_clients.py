"""The Python client API over a real stream: Flower style, FedLab style, plain functions, an
external command, properties, client-side evaluation and handlers on both sides."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientFailure, ClientResult
from fedloom.fleets.grpc import RoundPolicy
from fedloom.runtime.clients import Client, FunctionClient
from fedloom.runtime.command_client import CommandClient
from fedloom.transport.handlers import Handlers, MessageType
from fedloom.transport.messages import Scalar
from tests.loopback import (
    SYNTH,
    Recorder,
    downlinks,
    serve_to_the_end,
    thread_clients,
    tiny_server,
    wait_until,
)


class FlowerStyle(Client):
    """Flower's NumPyClient methods: parameters are per-tensor, in state_dict order."""

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        return {"device": "cpu", "cores": 2}

    def fit(self, parameters: list[torch.Tensor], config: dict[str, Scalar]
            ) -> tuple[list[torch.Tensor], int, dict[str, float]]:
        assert [tuple(p.shape) for p in parameters] == [(2, 3), (2,)]
        assert config["round"] == 1 and config["lr"] == 0.1
        return [p.numpy() + float(config["client_id"]) for p in parameters], 10, {  # type: ignore[misc]
            "train_loss": 2.0}

    def evaluate(self, parameters: list[torch.Tensor], config: dict[str, Scalar]
                 ) -> tuple[float, int, dict[str, float]]:
        return 0.5, 10 * (int(config["client_id"]) + 1), {"test_accuracy": 0.25}


class FedLabStyle(Client):
    """FedLab's ClientTrainer: local_process on the flat model, then uplink_package."""

    def local_process(self, payload: list[torch.Tensor], config: dict[str, Scalar]) -> None:
        self.model = payload[0] * 2 + 1

    def uplink_package(self) -> list[torch.Tensor]:
        return [self.model, torch.tensor([7])]


def test_flower_style_fit_properties_and_client_side_evaluation() -> None:
    with (tiny_server(policy=RoundPolicy(evaluate_on_clients=True)) as (server, fleet),
          thread_clients(server.port, [0, 1], client=FlowerStyle())):
        fleet.wait_for_clients(2, 10)
        a, b = fleet.fit(1, downlinks(1, [0, 1], server.layout, value=1.0))
        assert isinstance(a, ClientResult) and isinstance(b, ClientResult)
        assert torch.equal(a.params, torch.ones(8))
        assert torch.equal(b.params, torch.full((8,), 2.0))
        assert a.num_examples == 10 and a.metrics["train_loss"] == Mean(20.0, 10.0)
        assert fleet.properties() == {0: {"device": "cpu", "cores": 2},
                                      1: {"device": "cpu", "cores": 2}}
        metrics = fleet.evaluate(torch.zeros(8))
        assert metrics == {"test_loss": Mean(15.0, 30.0), "test_accuracy": Mean(7.5, 30.0)}


def test_fedlab_style_and_plain_functions() -> None:
    def halve(params: list[torch.Tensor], config: dict[str, Scalar]
              ) -> tuple[torch.Tensor, int, dict[str, float]]:
        return torch.cat([p.reshape(-1) for p in params]) / 2, 3, {}

    with (tiny_server() as (server, fleet),
          thread_clients(server.port, [0], client=FedLabStyle()),
          thread_clients(server.port, [1], client=halve),
          thread_clients(server.port, [2], client=FunctionClient(halve))):
        fleet.wait_for_clients(3, 10)
        a, b, c = fleet.fit(1, downlinks(1, [0, 1, 2], server.layout, value=4.0))
    assert isinstance(a, ClientResult) and torch.equal(a.params, torch.full((8,), 9.0))
    assert a.num_examples == 7
    assert isinstance(b, ClientResult) and torch.equal(b.params, torch.full((8,), 2.0))
    assert isinstance(c, ClientResult) and torch.equal(c.params, b.params)


def test_an_exception_in_fit_is_a_failure_value_and_the_client_serves_on() -> None:
    calls: list[int] = []

    def flaky(params: list[torch.Tensor], config: dict[str, Scalar]
              ) -> tuple[list[torch.Tensor], int, dict[str, float]]:
        calls.append(int(config["round"]))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return params, 1, {}

    with tiny_server() as (server, fleet), thread_clients(server.port, [0], client=flaky):
        fleet.wait_for_clients(1, 10)
        (first,) = fleet.fit(1, downlinks(1, [0], server.layout))
        (second,) = fleet.fit(2, downlinks(2, [0], server.layout))
    assert isinstance(first, ClientFailure) and first.stage == "client"
    assert "RuntimeError: out of memory" in first.message
    assert isinstance(second, ClientResult)


def test_an_external_command_trains(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""\
        import json, os, sys
        from safetensors.torch import load_file, save_file
        source, target = sys.argv[1], sys.argv[2]
        tensors = {k: v + 1 for k, v in load_file(source).items()}
        save_file(tensors, target)
        config = json.loads(os.environ["FEDLOOM_CONFIG"])
        with open(target + ".json", "w") as f:
            json.dump({"num_examples": 5, "metrics": {"train_loss": config["lr"]}}, f)
        """))
    broken = tmp_path / "broken.py"
    broken.write_text("import sys; sys.exit('no GPU here')\n")
    trains = CommandClient(f"{sys.executable} {script} {{input}} {{output}}", timeout=60)
    fails = CommandClient([sys.executable, str(broken)], timeout=60)
    with (tiny_server() as (server, fleet), thread_clients(server.port, [0], client=trains),
          thread_clients(server.port, [1], client=fails)):
        fleet.wait_for_clients(2, 10)
        good, bad = fleet.fit(1, downlinks(1, [0, 1], server.layout, value=2.0))
    assert isinstance(good, ClientResult) and torch.equal(good.params, torch.full((8,), 3.0))
    assert good.num_examples == 5 and good.metrics["train_loss"].value == 0.1
    assert isinstance(bad, ClientFailure) and "no GPU here" in bad.message


def test_handlers_see_each_message_type_on_both_sides() -> None:
    client_handlers = Handlers()
    client_events = Recorder(client_handlers, MessageType.WELCOME, MessageType.FIT,
                             MessageType.FIT_REPLY, MessageType.EXIT)
    fits: list[int | None] = []
    client_handlers.on(MessageType.FIT)(lambda e: fits.append(e.round))
    with tiny_server() as (server, fleet):
        server_events = Recorder(server.handlers, MessageType.CONNECTED, MessageType.ROUND_START,
                                 MessageType.FIT_REPLY, MessageType.ROUND_END,
                                 MessageType.DISCONNECTED)
        with thread_clients(server.port, [0], handlers=client_handlers):
            fleet.wait_for_clients(1, 10)
            fleet.fit(1, downlinks(1, [0], server.layout))
            fleet.fit(2, downlinks(2, [0], server.layout))
            fleet.close()  # the run is over: the client is told to exit
            assert wait_until(lambda: bool(client_events.of(MessageType.EXIT)))
    assert fits == [1, 2]
    assert [e.kind for e in client_events.events] == [
        MessageType.WELCOME, MessageType.FIT, MessageType.FIT_REPLY, MessageType.FIT,
        MessageType.FIT_REPLY, MessageType.EXIT]
    kinds = [e.kind for e in server_events.events]
    assert kinds[:4] == [MessageType.CONNECTED, MessageType.ROUND_START, MessageType.FIT_REPLY,
                         MessageType.ROUND_END]
    assert server_events.of(MessageType.FIT_REPLY)[0].detail == {"num_examples": 4}


def test_evaluation_on_the_clients_equals_the_servers_over_the_same_examples(
        tmp_path: Path) -> None:
    """Every client reports loss and accuracy on its own examples; together they are all the
    training examples, which the server also evaluates (eval.train)."""
    cfg = load_config(None, [*SYNTH, "rounds=1", "eval.train=true", f"out={tmp_path / 'run'}"])
    dep = build_deployment(cfg, ServerOptions(address="127.0.0.1:0", insecure=True,
                                              console=False,
                                              policy=RoundPolicy(evaluate_on_clients=True)))
    (row,) = serve_to_the_end(dep).rows
    assert row["test_accuracy"] == pytest.approx(row["global_train_accuracy"], abs=1e-12)
    assert row["test_loss"] == pytest.approx(row["global_train_loss"], rel=1e-6)
