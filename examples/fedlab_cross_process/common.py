"""What the server and the client processes of this example share: the data and the model.

FedLab's example gets MNIST from torchvision and splits it with ``PathologicalMNIST`` (two
label-sorted shards per client). fedloom has no torchvision dependency, so this reads the MNIST
IDX files (``../shared/data/mnist`` or ``$FEDLOOM_DATA``; see ``fedloom.data.locate``) with
``fedloom.load_federated`` and its ``shards`` partition, the same pathological split. The model
is FedLab's ``MLP(784, 10)`` (784-200-200-10), which is fedloom's ``mlp``.
"""

from functools import partial

from fedloom import DataConfig, FederatedData, load_federated
from fedloom.models import ModelFn, mlp


def mnist(num_clients: int, seed: int, data_dir: str | None = None) -> FederatedData:
    return load_federated(DataConfig(name="mnist", dir=data_dir, num_clients=num_clients,
                                     partition="shards", shards_per_client=2), seed=seed)


def model_fn(data: FederatedData) -> ModelFn:
    return partial(mlp, data.input_shape, data.num_classes, 200)
