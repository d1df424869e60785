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

from fedloom.algorithms import Algorithm, FedAvg, FedAvgOptions, LocalSpec
from fedloom.client.trainer import LocalTrainer
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
from fedloom.core.packages import ClientConfig, ClientFailure, ClientResult, Downlink, ServerState
from fedloom.data import load_federated
from fedloom.data.config import DataConfig
from fedloom.data.dataset import ArrayData, FederatedData
from fedloom.fleets import Fleet, SerialFleet
from fedloom.models import ModelConfig, model_factory
from fedloom.runtime.simulation import History, Simulation
from fedloom.sampling import UniformSampler

__version__ = "0.1.0"

__all__ = [
    "AggregationError", "Algorithm", "ArrayData", "BoundModule", "CheckpointError",
    "ClientConfig", "ClientError", "ClientFailure", "ClientResult", "ConfigError", "DataConfig",
    "DataError", "Downlink", "FedAvg", "FedAvgOptions", "FederatedData", "FedloomError", "Fleet",
    "History", "LocalSpec", "LocalTrainer", "Mean", "ModelConfig", "ParamLayout", "SerialFleet",
    "ServerState", "Simulation", "TransportError", "UniformSampler", "load_federated",
    "model_factory",
]
