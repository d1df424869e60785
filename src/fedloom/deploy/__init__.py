"""Deployment: a real server and real clients over gRPC, with the simulation's round loop.

The server runs the same :class:`~fedloom.runtime.loop.ServerLoop` and algorithm objects as a
simulation; only the fleet differs (:class:`GrpcFleet`). Clients are :class:`Client` subclasses
(Flower-style ``fit``/``evaluate`` or FedLab-style ``local_process``/``uplink_package``), plain
functions, fedloom's own trainer, or an external command (:class:`CommandClient`).

Example (a client with its own data and training function)::

    from fedloom.deploy import Client, start_client
    from fedloom.transport.security import TlsFiles

    class MyClient(Client):
        def fit(self, parameters, config):
            ...  # train from `parameters` (tensors in state_dict order)
            return new_parameters, num_examples, {"train_loss": loss}

    start_client("server.example.org:8080", client_id=3, token=TOKEN, client=MyClient(),
                 tls=TlsFiles(ca="ca.pem"))

Names are imported on first use, so ``fedloom --help`` does not load gRPC.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedloom.deploy.async_loop import AsyncServerLoop
    from fedloom.deploy.certs import make_certs
    from fedloom.deploy.client import Client, FunctionClient, TrainerClient
    from fedloom.deploy.command import CommandClient
    from fedloom.deploy.grpc_fleet import GrpcFleet, RoundPolicy
    from fedloom.deploy.handlers import Event, Handlers, MessageType
    from fedloom.deploy.local import ConfigClient, trainer_client
    from fedloom.deploy.runner import Backoff, ClientRunner, RefusedError, start_client
    from fedloom.deploy.server import ServerOptions, build_deployment, run_server
    from fedloom.deploy.service import FederationServer, Limits

_WHERE = {
    "AsyncServerLoop": "async_loop", "make_certs": "certs", "Client": "client",
    "FunctionClient": "client", "TrainerClient": "client", "CommandClient": "command",
    "GrpcFleet": "grpc_fleet", "RoundPolicy": "grpc_fleet", "Event": "handlers",
    "Handlers": "handlers", "MessageType": "handlers", "ConfigClient": "local",
    "trainer_client": "local", "Backoff": "runner", "ClientRunner": "runner",
    "RefusedError": "runner", "start_client": "runner", "ServerOptions": "server",
    "build_deployment": "server", "run_server": "server", "FederationServer": "service",
    "Limits": "service",
}

__all__ = [
    "AsyncServerLoop", "Backoff", "Client", "ClientRunner", "CommandClient", "ConfigClient",
    "Event", "FederationServer", "FunctionClient", "GrpcFleet", "Handlers", "Limits",
    "MessageType", "RefusedError", "RoundPolicy", "ServerOptions", "TrainerClient",
    "build_deployment", "make_certs", "run_server", "start_client", "trainer_client",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'fedloom.deploy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fedloom.deploy.{_WHERE[name]}"), name)
