"""Handlers that act (FederatedScope's register_handlers, FedML's listeners) and Flower's
get_parameters, over a real stream on loopback."""

from __future__ import annotations

import pytest
import torch

from fedloom.app.config import load_config
from fedloom.app.server import ServerOptions, build_deployment, start_from_a_client
from fedloom.core.errors import ClientError, ConfigError
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientResult
from fedloom.core.rng import derive_seed
from fedloom.runtime.acting import ActingClient
from fedloom.runtime.clients import Client, FunctionClient
from fedloom.transport.codec import MessageRejected, check_content
from fedloom.transport.generated import fedloom_pb2 as pb
from fedloom.transport.handlers import SERVER, Event, Handlers, Message, MessageType
from fedloom.transport.messages import Scalar
from tests.loopback import (
    SYNTH,
    downlinks,
    plus_one,
    thread_clients,
    tiny_layout,
    tiny_server,
    wait_until,
)


def join_in_info_client(num_sample: int) -> Handlers:
    """FederatedScope's client: answers ``ask_for_join_in_info`` with a ``join_in_info``
    message holding what the server asked for."""
    handlers = Handlers()

    def callback_funcs_for_join_in_info(message: Message) -> Message:
        requirements = str(message.content["requirements"]).split(",")
        info: dict[str, Scalar | torch.Tensor] = {}
        for requirement in requirements:
            if requirement == "num_sample":
                info["num_sample"] = num_sample
            elif requirement == "client_resource":
                info["client_resource"] = torch.tensor([1.0, 2.0])
        return Message(msg_type="join_in_info", sender=message.receiver, receiver=SERVER,
                       state=message.state, content=info)

    handlers.register_handlers("ask_for_join_in_info", callback_funcs_for_join_in_info,
                               send_msg=["join_in_info"])
    return handlers


def test_federatedscopes_join_in_info_exchange() -> None:
    """The server asks every client for its join-in info; the clients' handlers answer; the
    server's handler for ``join_in_info`` stores each answer, and the caller gets them too."""
    join_in_info: dict[int, dict[str, object]] = {}
    with tiny_server() as (server, fleet):
        server.handlers.register_handlers(
            "join_in_info", lambda m: join_in_info.update({m.sender: dict(m.content)}))
        seen: list[Event] = []
        server.handlers.add_message_listener("join_in_info", seen.append)
        with (thread_clients(server.port, [0], handlers=join_in_info_client(40)),
              thread_clients(server.port, [1], handlers=join_in_info_client(60))):
            fleet.wait_for_clients(2, 10)
            replies = fleet.request("ask_for_join_in_info",
                                    {"requirements": "num_sample,client_resource"}, round=3)
    assert sorted(replies) == [0, 1]
    assert {cid: m.content["num_sample"] for cid, m in replies.items()} == {0: 40, 1: 60}
    assert all(m.msg_type == "join_in_info" and m.state == 3 for m in replies.values())
    assert join_in_info[1]["num_sample"] == 60
    assert torch.equal(join_in_info[0]["client_resource"], torch.tensor([1.0, 2.0]))  # type: ignore[arg-type]
    assert sorted(e.client_id for e in seen if e.client_id is not None) == [0, 1]


def test_a_type_without_a_handler_is_a_failure_and_removed_handlers_stop_answering() -> None:
    handlers = Handlers()
    handlers.register_handlers("ping", lambda m: {"pong": int(m.content["n"]) + 1})
    with tiny_server() as (server, fleet), thread_clients(server.port, [0], handlers=handlers):
        fleet.wait_for_clients(1, 10)
        assert fleet.request("ping", {"n": 1})[0].content == {"pong": 2}
        assert handlers.remove("ping")
        failures: list[Event] = []
        server.handlers.register(MessageType.FAILURE, failures.append)
        assert fleet.request("ping", {"n": 1}) == {}  # the client said it has no handler
        assert wait_until(lambda: bool(failures))
        assert "no handler is registered for message type 'ping'" in str(failures[0].detail)
        assert fleet.request("ping", {"n": 1}, client_ids=[]) == {}


def test_acting_handlers_replace_the_default_fit_evaluate_and_properties() -> None:
    """A handler for ``fit`` answers instead of the client (its params reach the server);
    removed, the client's own fit answers again."""
    handlers = Handlers()

    def fit(message: Message) -> dict[str, Scalar | torch.Tensor]:
        params = message.content["params"]
        assert isinstance(params, torch.Tensor) and message.content["lr"] == 0.1
        return {"params": params * 10, "num_examples": 5, "num_steps": 2, "train_loss": 0.5}

    handlers.register_handlers(MessageType.FIT, fit)
    handlers.register_message_receive_handler("properties", lambda m: {"gpu": False})
    handlers.register_handlers("evaluate", lambda m: {"num_examples": 4, "test_loss": 0.25})
    with tiny_server() as (server, fleet), thread_clients(server.port, [0], handlers=handlers):
        fleet.wait_for_clients(1, 10)
        (result,) = fleet.fit(1, downlinks(1, [0], server.layout, value=1.0))
        assert isinstance(result, ClientResult)
        assert torch.equal(result.params, torch.full((8,), 10.0))
        assert (result.num_examples, result.num_steps) == (5, 2)
        assert result.metrics == {"train_loss": Mean(2.5, 5.0)}
        assert fleet.properties() == {0: {"gpu": False}}
        fleet.policy = type(fleet.policy)(round_timeout=30, evaluate_on_clients=True)
        assert fleet.evaluate(torch.zeros(8)) == {"test_loss": Mean(1.0, 4.0)}
        handlers.remove(MessageType.FIT)
        (result,) = fleet.fit(2, downlinks(2, [0], server.layout, value=1.0))
        assert isinstance(result, ClientResult)
        assert torch.equal(result.params, torch.full((8,), 2.0))  # plus_one, the default


def test_bad_replies_from_a_handler_are_named() -> None:
    handlers = Handlers()
    handlers.register_handlers("fit", lambda m: {"params": torch.zeros(3), "num_examples": 1})
    client = ActingClient(FunctionClient(plus_one), handlers)
    layout = tiny_layout()
    (down,) = downlinks(1, [0], layout)
    with pytest.raises(ClientError, match="needs 'params': a tensor of 8 values"):
        client.run_fit(down, layout)
    handlers.register_handlers("fit", lambda m: {"params": m.content["params"],
                                                 "num_examples": 0})
    with pytest.raises(ClientError, match="num_examples = 0, need an integer >= 1"):
        client.run_fit(down, layout)


def test_message_types_are_checked_on_registration_and_on_the_wire() -> None:
    with pytest.raises(ConfigError, match=r"message type '\.\./etc'"):
        Handlers().register_handlers("../etc", lambda m: None)
    with pytest.raises(ConfigError, match="message type"):
        Handlers().register("x" * 65, lambda e: None)
    for bad in ("../etc", "a b", "x" * 65, ""):
        with pytest.raises(MessageRejected, match="message type"):
            check_content(pb.Header(kind=pb.MESSAGE_REPLY, msg_type=bad))
    check_content(pb.Header(kind=pb.MESSAGE_REPLY, msg_type="join_in_info"))


class WithModel(Client):
    """Flower's ``get_parameters``: the client holds the model to start from."""

    def __init__(self, value: float) -> None:
        self.value = value

    def get_parameters(self, config: dict[str, Scalar]) -> list[torch.Tensor]:
        return [torch.full(e.shape, self.value) for e in self._layout.entries]

    def fit(self, parameters: list[torch.Tensor], config: dict[str, Scalar]
            ) -> tuple[list[torch.Tensor], int, dict[str, float]]:
        return parameters, 1, {}


def test_flowers_get_parameters_gives_the_initial_model_when_the_server_has_none() -> None:
    cfg = load_config(None, [*SYNTH, "rounds=1"])
    dep = build_deployment(cfg, ServerOptions(address="127.0.0.1:0", insecure=True,
                                              console=False, initial_parameters="client"))
    try:
        with (thread_clients(dep.server.port, [0], client=WithModel(0.5)),
              thread_clients(dep.server.port, [1],
                             client=FunctionClient(lambda p, c: (p, 1, {})))):
            dep.fleet.wait_for_clients(2, 10)
            assert torch.equal(dep.fleet.initial_parameters(0),
                               torch.full((dep.loop.layout.size,), 0.5))
            with pytest.raises(ClientError, match="client 1 gave no initial parameters"):
                dep.fleet.initial_parameters(1)  # the default get_parameters has none
            dep.fleet.wait_for_clients(2, 10)
            seed = next(s for s in range(100)
                        if derive_seed(s, 0, 0, "initial_parameters") % 2 == 0)
            start_from_a_client(dep, seed=seed)  # the seed picks client 0 of the two
            assert torch.equal(dep.loop.state.params, torch.full((dep.loop.layout.size,), 0.5))
            history = dep.loop.run()
    finally:
        dep.fleet.close()
        dep.server.stop(grace=0.5)
    assert len(history.rows) == 1
    assert torch.equal(dep.loop.state.params, torch.full((dep.loop.layout.size,), 0.5))


def test_initial_parameters_option_is_checked() -> None:
    with pytest.raises(ConfigError, match="initial_parameters = 'peer'"):
        ServerOptions(insecure=True, initial_parameters="peer").check()  # type: ignore[arg-type]
