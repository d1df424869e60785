"""BlazeFL's FedAvg quickstart on fedloom: the same pipeline, handler and trainers.

    python main.py --num-clients 10 --global-round 2 --execution-mode multi-process

Differences from BlazeFL's (see README.md): imports, MNIST instead of CIFAR-10, argparse instead
of typer, and metrics to stdout/JSONL instead of wandb.
"""

import argparse
import json
import logging
import sys
from datetime import datetime
from pathlib import Path

import torch
import torch.multiprocessing as mp
from dataset import PartitionedMNIST
from fedavg import (
    FedAvgBaseClientTrainer,
    FedAvgBaseServerHandler,
    FedAvgProcessPoolClientTrainer,
    FedAvgThreadPoolClientTrainer,
)

from fedloom.fleets import IPCMode, setup_reproducibility
from models import FedAvgModelName, FedAvgModelSelector

Trainer = FedAvgBaseClientTrainer | FedAvgProcessPoolClientTrainer | FedAvgThreadPoolClientTrainer


class Run:
    """What the pipeline logs to (wandb's ``run.log`` in BlazeFL's): rows kept, and appended to
    a JSONL file when one is given."""

    def __init__(self, path: Path | None = None) -> None:
        self.path, self.rows = path, []

    def log(self, summary: dict[str, float], step: int) -> None:
        self.rows.append({"round": step, **summary})
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(self.rows[-1]) + "\n")


class FedAvgPipeline:
    def __init__(self, handler: FedAvgBaseServerHandler, trainer: Trainer, run: Run) -> None:
        self.handler, self.trainer, self.run = handler, trainer, run

    def main(self) -> None:
        while not self.handler.if_stop():
            round_ = self.handler.round
            sampled_clients = self.handler.sample_clients()  # server
            broadcast = self.handler.downlink_package()
            self.trainer.local_process(broadcast, sampled_clients)  # clients
            for pack in self.trainer.uplink_package():  # server
                self.handler.load(pack)
            summary = self.handler.get_summary()
            self.run.log(summary, step=round_)
            logging.info("round: %d, %s", round_,
                         ", ".join(f"{k}: {v:.3f}" for k, v in summary.items()))
        logging.info("done!")


def main(model_name: FedAvgModelName = FedAvgModelName.CNN, num_clients: int = 100,
         global_round: int = 5, sample_ratio: float = 1.0, num_shards: int = 200, seed: int = 42,
         epochs: int = 5, lr: float = 0.1, batch_size: int = 50, num_parallels: int = 10,
         dataset_root_dir: Path | None = None,
         share_dir_base: Path = Path("/tmp/quickstart-fedavg/share"),
         state_dir_base: Path = Path("/tmp/quickstart-fedavg/state"),
         split_dir_base: Path = Path("/tmp/quickstart-fedavg/split"),
         execution_mode: str = "multi-threaded", ipc_mode: IPCMode = IPCMode.SHARED_MEMORY,
         max_samples: int | None = None, metrics: Path | None = None) -> list[dict[str, float]]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    timestamp = datetime.now().strftime("%Y%m%d_%H%M%S_%f")
    share_dir, state_dir = share_dir_base / timestamp, state_dir_base / timestamp
    setup_reproducibility(seed)

    dataset = PartitionedMNIST(root=dataset_root_dir, path=split_dir_base / timestamp,
                               num_clients=num_clients, seed=seed, num_shards=num_shards,
                               max_samples=max_samples)
    model_selector = FedAvgModelSelector(num_classes=10, seed=seed)
    handler = FedAvgBaseServerHandler(
        model_selector=model_selector, model_name=model_name, dataset=dataset,
        global_round=global_round, num_clients=num_clients, device=device,
        sample_ratio=sample_ratio, batch_size=batch_size, seed=seed)
    common = dict(model_selector=model_selector, model_name=model_name, dataset=dataset,
                  device=device, num_clients=num_clients, epochs=epochs, lr=lr,
                  batch_size=batch_size, seed=seed)
    match execution_mode:
        case "single-threaded":
            trainer: Trainer = FedAvgBaseClientTrainer(**common)
        case "multi-process":
            trainer = FedAvgProcessPoolClientTrainer(
                **common, share_dir=share_dir, state_dir=state_dir,
                num_parallels=num_parallels, ipc_mode=ipc_mode)
        case "multi-threaded":
            trainer = FedAvgThreadPoolClientTrainer(**common, num_parallels=num_parallels)
        case _:
            raise ValueError(f"execution_mode = {execution_mode!r}: must be single-threaded, "
                             f"multi-process or multi-threaded")
    run = Run(metrics)
    try:
        FedAvgPipeline(handler=handler, trainer=trainer, run=run).main()
    except KeyboardInterrupt:
        logging.info("KeyboardInterrupt")
    finally:
        if isinstance(trainer, FedAvgProcessPoolClientTrainer):
            trainer.close()  # fedloom keeps its worker processes between rounds
    return run.rows


def parse(argv: list[str]) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, kind, default in [
            ("num_clients", int, 100), ("global_round", int, 5), ("sample_ratio", float, 1.0),
            ("num_shards", int, 200), ("seed", int, 42), ("epochs", int, 5), ("lr", float, 0.1),
            ("batch_size", int, 50), ("num_parallels", int, 10), ("max_samples", int, None),
            ("dataset_root_dir", Path, None), ("metrics", Path, None),
            ("share_dir_base", Path, Path("/tmp/quickstart-fedavg/share")),
            ("state_dir_base", Path, Path("/tmp/quickstart-fedavg/state")),
            ("split_dir_base", Path, Path("/tmp/quickstart-fedavg/split")),
            ("execution_mode", str, "multi-threaded"), ("ipc_mode", IPCMode,
                                                         IPCMode.SHARED_MEMORY)]:
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=default)
    return vars(p.parse_args(argv))


if __name__ == "__main__":
    # NOTE: To use CUDA with multiprocessing, you must use the 'spawn' start method
    mp.set_start_method("spawn")
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s [%(levelname)s] %(message)s")
    main(**parse(sys.argv[1:]))  # type: ignore[arg-type]
