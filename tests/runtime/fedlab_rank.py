"""One rank of a tiny FedLab-style run, for tests/runtime/test_fedlab.py.

    python -m tests.runtime.fedlab_rank ROLE MODE PORT RANK WORLD OUT

ROLE is ``server``, ``client`` or a rogue client (``rogue-count``: answers with one tensor
instead of two; ``rogue-code``: sends a header with message code 99). MODE is ``sync`` or
``async``. The server writes its final model and what it saw to OUT (``torch.save``). Every
process runs on one torch thread. ``$FEDLAB_BACKEND`` (default gloo) and ``$FEDLAB_DEVICE``
(where clients train, default cpu) are for the GPU check.
"""

from __future__ import annotations

import contextlib
import os
import sys
from functools import partial

import torch

from fedloom.core.packages import ClientConfig
from fedloom.data.config import DataConfig
from fedloom.data.dataset import FederatedData
from fedloom.data.load import load_federated
from fedloom.models import ModelFn, init_module, logreg
from fedloom.runtime.fedlab import (
    ActiveClientManager,
    AsynchronousServerManager,
    DistNetwork,
    FedAsyncServerHandler,
    FedAvgServerHandler,
    MessageCode,
    PassiveClientManager,
    SerialTrainer,
    SynchronousServerManager,
)
from fedloom.training.spec import ClientSpec

SEED = 3
NUM_CLIENTS = 6
ROUNDS = 3
COHORT = 3  # sample_ratio 0.5 of 6
VERSIONS = 6
CLIENT = ClientConfig(lr=0.05, batch_size=8, epochs=1)


def problem() -> tuple[FederatedData, ModelFn]:
    data = load_federated(DataConfig(name="synthetic", num_clients=NUM_CLIENTS,
                                     num_features=10, num_classes=3), seed=SEED)
    return data, partial(logreg, data.input_shape, data.num_classes)


def clients_of(rank: int, world: int) -> list[int]:
    """Rank r of the client processes holds an equal run of the clients."""
    per = NUM_CLIENTS // (world - 1)
    return list(range((rank - 1) * per, rank * per))


def server(mode: str, network: DistNetwork, out: str) -> None:
    _, model_fn = problem()
    model = init_module(model_fn, SEED)
    if mode == "sync":
        handler = FedAvgServerHandler(model, global_round=ROUNDS, sample_ratio=0.5, seed=SEED)
        SynchronousServerManager(network, handler, mode="GLOBAL").run()
        torch.save({"params": handler.model_parameters, "round": handler.round}, out)
        return
    fedasync = FedAsyncServerHandler(model, global_round=VERSIONS)
    fedasync.setup_optim(alpha=0.5, strategy="polynomial", a=0.5)
    AsynchronousServerManager(network, fedasync).run()
    torch.save({"params": fedasync.model_parameters, "round": fedasync.round,
                "arrivals": fedasync.arrivals}, out)


def client(mode: str, network: DistNetwork) -> None:
    data, model_fn = problem()
    spec = ClientSpec(model_fn=model_fn, train=data.train, client_indices=data.client_train,
                      seed=SEED)
    ids = clients_of(network.rank, network.world_size)
    device = os.environ.get("FEDLAB_DEVICE", "cpu")
    trainer = SerialTrainer(spec, client_ids=ids, config=CLIENT, device=device,
                            local_ids=mode != "sync")
    manager = PassiveClientManager if mode == "sync" else ActiveClientManager
    manager(network, trainer).run()


def rogue(kind: str, network: DistNetwork) -> None:
    """Joins, reports two clients, then answers the first model with a bad message."""
    import torch.distributed as dist

    from fedloom.runtime.fedlab.wire import HEADER_TAG, MAGIC

    network.init_network_connection()
    network.send(torch.tensor([2]), MessageCode.SetUp, 0)
    network.recv(0)
    if kind == "rogue-count":
        network.send([torch.zeros(3)], MessageCode.ParameterUpdate, 0)
    else:
        dist.send(torch.tensor([MAGIC, 99, 0, 0], dtype=torch.int64), dst=0, tag=HEADER_TAG)
    with contextlib.suppress(Exception):
        network.recv(0)  # the server stops: this fails once it is gone


def main(argv: list[str]) -> None:
    role, mode, port, rank, world, out = argv
    torch.set_num_threads(1)
    network = DistNetwork(address=("127.0.0.1", int(port)), world_size=int(world),
                          rank=int(rank), dist_backend=os.environ.get("FEDLAB_BACKEND", "gloo"))
    if role == "server":
        server(mode, network, out)
    elif role == "client":
        client(mode, network)
    else:
        rogue(role, network)


if __name__ == "__main__":
    main(sys.argv[1:])
