"""FedLab's cross-process MNIST server (``examples/cross-process-mnist/server.py`` and, with
``--mode async``, ``examples/asynchronous-cross-process-mnist/server.py``), on fedloom.

Changed from FedLab: imports (``fedlab.core.*`` and ``fedlab.contrib.algorithm.*`` ->
``fedloom.runtime.fedlab``); handlers take keyword arguments and a ``seed`` (the cohort of
round r is drawn from ``(seed, r)``); the model comes from ``common.py``; at the end the server
prints the final model's MNIST test loss and accuracy as JSON.
"""

import argparse
import json

import torch
from common import mnist, model_fn

from fedloom.models import init_module
from fedloom.runtime.fedlab import (
    AsynchronousServerManager,
    DistNetwork,
    FedAsyncServerHandler,
    FedAvgServerHandler,
    SynchronousServerManager,
)
from fedloom.training.evaluation import CentralEvaluator

parser = argparse.ArgumentParser(description="FL server example")
parser.add_argument("--ip", type=str, default="127.0.0.1")
parser.add_argument("--port", type=str, default="3001")
parser.add_argument("--world_size", type=int, required=True)
parser.add_argument("--ethernet", type=str, default=None)
parser.add_argument("--mode", choices=["sync", "async"], default="sync")
parser.add_argument("--round", type=int, default=3)  # rounds (sync) or model versions (async)
parser.add_argument("--sample", type=float, default=1)
parser.add_argument("--alpha", type=float, default=0.5)  # FedAsync's mixing weight
parser.add_argument("--clients_per_process", type=int, default=5)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--data_dir", type=str, default=None)
args = parser.parse_args()
torch.set_num_threads(args.threads)

data = mnist(args.clients_per_process * (args.world_size - 1), args.seed, args.data_dir)
model = init_module(model_fn(data), args.seed)

network = DistNetwork(address=(args.ip, args.port), world_size=args.world_size, rank=0,
                      ethernet=args.ethernet)
if args.mode == "sync":
    handler = FedAvgServerHandler(model, global_round=args.round, sample_ratio=args.sample,
                                  seed=args.seed)
    manager = SynchronousServerManager(network=network, handler=handler, mode="GLOBAL")
    manager.run()
    params = handler.model_parameters
else:
    async_handler = FedAsyncServerHandler(model, global_round=args.round)
    async_handler.setup_optim(args.alpha)
    AsynchronousServerManager(network=network, handler=async_handler).run()
    params = async_handler.model_parameters

metrics = CentralEvaluator(model_fn=model_fn(data), test=data.test)(params)
print(json.dumps({"mode": args.mode, "rounds": args.round,
                  **{k: round(m.value, 4) for k, m in metrics.items()}}), flush=True)
