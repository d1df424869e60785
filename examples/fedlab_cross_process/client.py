"""FedLab's cross-process MNIST client (``examples/cross-process-mnist/client.py`` and, with
``--mode async``, ``examples/asynchronous-cross-process-mnist/client.py``), on fedloom.

Changed from FedLab: imports (``fedlab.*`` -> ``fedloom.runtime.fedlab``); no torchvision (MNIST
comes from ``common.py``); each process holds ``--clients_per_process`` clients (FedLab's
example holds one) in a ``SerialTrainer``, fedloom's local SGD, which replaces FedLab's
``FedAvgClientTrainer``/``SGDSerialClientTrainer`` and its ``setup_dataset``/``setup_optim``.
"""

import argparse

import torch
from common import mnist, model_fn

from fedloom import ClientConfig
from fedloom.runtime.fedlab import (
    ActiveClientManager,
    DistNetwork,
    PassiveClientManager,
    SerialTrainer,
)
from fedloom.training.spec import ClientSpec

parser = argparse.ArgumentParser(description="FL client example")
parser.add_argument("--ip", type=str, default="127.0.0.1")
parser.add_argument("--port", type=str, default="3001")
parser.add_argument("--world_size", type=int, required=True)
parser.add_argument("--rank", type=int, required=True)
parser.add_argument("--ethernet", type=str, default=None)
parser.add_argument("--mode", choices=["sync", "async"], default="sync")
parser.add_argument("--lr", type=float, default=0.01)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--batch_size", type=int, default=100)
parser.add_argument("--clients_per_process", type=int, default=5)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--data_dir", type=str, default=None)
args = parser.parse_args()
torch.set_num_threads(args.threads)

device = "cuda" if torch.cuda.is_available() else "cpu"
per = args.clients_per_process
data = mnist(per * (args.world_size - 1), args.seed, args.data_dir)
spec = ClientSpec(model_fn=model_fn(data), train=data.train, client_indices=data.client_train,
                  seed=args.seed)
trainer = SerialTrainer(spec, client_ids=range((args.rank - 1) * per, args.rank * per),
                        config=ClientConfig(lr=args.lr, epochs=args.epochs,
                                            batch_size=args.batch_size),
                        device=device, local_ids=args.mode == "async")

network = DistNetwork(address=(args.ip, args.port), world_size=args.world_size,
                      rank=args.rank, ethernet=args.ethernet)
Manager = PassiveClientManager if args.mode == "sync" else ActiveClientManager
Manager(network=network, trainer=trainer).run()
