"""fedloom: federated learning for PyTorch.

The pieces of a run, each usable on its own::

    from fedloom import (ClientConfig, DataConfig, FedAvg, ModelConfig, Simulation,
                         load_federated, model_factory)

    data = load_federated(DataConfig(name="mnist", num_clients=100), seed=0)
    model_fn = model_factory(ModelConfig(name="mlp"), data.input_shape, data.num_classes)
    sim = Simulation(data=data, model_fn=model_fn, algorithm=FedAvg(), rounds=20,
                     cohort_size=10, client=ClientConfig(lr=0.05, batch_size=10))
    history = sim.run()
    print(history.series("test_accuracy"))
"""

import importlib
from typing import TYPE_CHECKING

from fedloom.core.openmp import spin_briefly

spin_briefly()  # before torch loads its OpenMP runtime (see fedloom.core.openmp)

if TYPE_CHECKING:
    from fedloom.algorithms import Algorithm, FedAvg, FedAvgOptions, LocalSpec
    from fedloom.app.client import ConfigClient, trainer_client
    from fedloom.app.server import ServerOptions, run_server
    from fedloom.core.errors import (
        AggregationError,
        CheckpointError,
        ClientError,
        ConfigError,
        DataError,
        FedloomError,
        TransportError,
    )
    from fedloom.core.layout import BoundModule, ParamLayout
    from fedloom.core.metrics import Mean
    from fedloom.core.packages import (
        ClientConfig,
        ClientFailure,
        ClientResult,
        Downlink,
        ServerState,
    )
    from fedloom.data import load_federated
    from fedloom.data.config import DataConfig
    from fedloom.data.dataset import ArrayData, FederatedData
    from fedloom.fleets import Fleet, SerialFleet
    from fedloom.fleets.grpc import GrpcFleet, RoundPolicy
    from fedloom.models import ModelConfig, model_factory
    from fedloom.runtime.client_loop import Backoff, ClientLoop, RefusedError, start_client
    from fedloom.runtime.clients import Client, FunctionClient, TrainerClient
    from fedloom.runtime.command_client import CommandClient
    from fedloom.runtime.sampling import UniformSampler
    from fedloom.runtime.simulation import History, Simulation
    from fedloom.training.trainer import LocalTrainer
    from fedloom.transport.certs import make_certs
    from fedloom.transport.handlers import Event, Handlers, MessageType
    from fedloom.transport.security import TlsFiles
    from fedloom.transport.service import FederationServer, Limits

__version__ = "0.1.0"

#: every public name and the module it comes from, imported on first use: ``import fedloom``
#: loads neither torch nor gRPC, so ``fedloom run`` can start the process fleet's fork server
#: (which imports torch) before it imports torch itself
_LAZY = {
    **dict.fromkeys(("Algorithm", "FedAvg", "FedAvgOptions", "LocalSpec"), "fedloom.algorithms"),
    **dict.fromkeys(("AggregationError", "CheckpointError", "ClientError", "ConfigError",
                     "DataError", "FedloomError", "TransportError"), "fedloom.core.errors"),
    "BoundModule": "fedloom.core.layout", "ParamLayout": "fedloom.core.layout",
    "Mean": "fedloom.core.metrics",
    **dict.fromkeys(("ClientConfig", "ClientFailure", "ClientResult", "Downlink", "ServerState"),
                    "fedloom.core.packages"),
    "load_federated": "fedloom.data", "DataConfig": "fedloom.data.config",
    "ArrayData": "fedloom.data.dataset", "FederatedData": "fedloom.data.dataset",
    "Fleet": "fedloom.fleets", "SerialFleet": "fedloom.fleets",
    "ModelConfig": "fedloom.models", "model_factory": "fedloom.models",
    "UniformSampler": "fedloom.runtime.sampling", "History": "fedloom.runtime.simulation",
    "Simulation": "fedloom.runtime.simulation", "LocalTrainer": "fedloom.training.trainer",
    # deployment
    "Client": "fedloom.runtime.clients", "FunctionClient": "fedloom.runtime.clients",
    "TrainerClient": "fedloom.runtime.clients", "CommandClient": "fedloom.runtime.command_client",
    "ClientLoop": "fedloom.runtime.client_loop", "Backoff": "fedloom.runtime.client_loop",
    "RefusedError": "fedloom.runtime.client_loop", "start_client": "fedloom.runtime.client_loop",
    "GrpcFleet": "fedloom.fleets.grpc", "RoundPolicy": "fedloom.fleets.grpc",
    "FederationServer": "fedloom.transport.service", "Limits": "fedloom.transport.service",
    "Event": "fedloom.transport.handlers", "Handlers": "fedloom.transport.handlers",
    "MessageType": "fedloom.transport.handlers", "make_certs": "fedloom.transport.certs",
    "TlsFiles": "fedloom.transport.security", "ServerOptions": "fedloom.app.server",
    "run_server": "fedloom.app.server", "ConfigClient": "fedloom.app.client",
    "trainer_client": "fedloom.app.client",
}

__all__ = [
    "AggregationError", "Algorithm", "ArrayData", "BoundModule", "CheckpointError",
    "ClientConfig", "ClientError", "ClientFailure", "ClientResult", "ConfigError", "DataConfig",
    "DataError", "Downlink", "FedAvg", "FedAvgOptions", "FederatedData", "FedloomError", "Fleet",
    "History", "LocalSpec", "LocalTrainer", "Mean", "ModelConfig", "ParamLayout", "SerialFleet",
    "ServerState", "Simulation", "TransportError", "UniformSampler", "load_federated",
    "model_factory",
    # deployment (imported on first use)
    "Client", "FunctionClient", "TrainerClient", "CommandClient", "ClientLoop", "Backoff",
    "RefusedError", "start_client", "GrpcFleet", "RoundPolicy", "FederationServer", "Limits",
    "Event", "Handlers", "MessageType", "make_certs", "TlsFiles", "ServerOptions",
    "run_server", "ConfigClient", "trainer_client",
]


def __getattr__(name: str) -> object:
    if name not in _LAZY:
        raise AttributeError(f"module 'fedloom' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # found once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
