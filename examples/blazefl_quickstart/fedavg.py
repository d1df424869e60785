"""FedAvg in BlazeFL's shape (its ``blazefl.contrib`` names), written on fedloom's contracts.

One server handler and the three trainers of BlazeFL 2.x's quickstart: serial
(``FedAvgBaseClientTrainer``), process pool and thread pool. fedloom ships its own FedAvg
(``fedloom.FedAvg``), so these live with the example rather than in the library.
"""

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from dataset import FedAvgPartitionType
from torch.utils.data import DataLoader

from fedloom.fleets import (
    BaseClientTrainer,
    BaseServerHandler,
    IPCMode,
    ModelSelector,
    PartitionedDataset,
    ProcessPoolClientTrainer,
    SHMHandle,
    ThreadPoolClientTrainer,
    create_rng_suite,
    deserialize_model,
    serialize_model,
)


@dataclass
class FedAvgUplinkPackage:
    cid: int
    model_parameters: torch.Tensor
    data_size: int


@dataclass
class FedAvgDownlinkPackage:
    model_parameters: torch.Tensor


@dataclass
class FedAvgClientConfig:
    model_selector: ModelSelector
    model_name: str
    dataset: PartitionedDataset
    epochs: int
    batch_size: int
    lr: float
    cid: int
    seed: int
    state_path: Path


def train(model: torch.nn.Module, parameters: torch.Tensor, loader: DataLoader, device: str,
          epochs: int, lr: float, cid: int, stop_event: threading.Event | None = None
          ) -> FedAvgUplinkPackage:
    """Local SGD from the global parameters; the package counts examples seen."""
    model.to(device)
    deserialize_model(model, parameters)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    seen = 0
    for _ in range(epochs):
        if stop_event is not None and stop_event.is_set():
            break
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(y)
    return FedAvgUplinkPackage(cid, serialize_model(model), seen)


class FedAvgBaseServerHandler(BaseServerHandler[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    def __init__(self, model_selector: ModelSelector, model_name: str,
                 dataset: PartitionedDataset, global_round: int, num_clients: int,
                 sample_ratio: float, device: str, batch_size: int, seed: int) -> None:
        self.model = model_selector.select_model(model_name)
        self.dataset, self.device, self.batch_size = dataset, device, batch_size
        self.global_round, self.num_clients = global_round, num_clients
        self.num_clients_per_round = max(1, int(num_clients * sample_ratio))
        self.round = 0
        self.client_buffer_cache: list[FedAvgUplinkPackage] = []
        self.rng_suite = create_rng_suite(seed)

    def sample_clients(self) -> list[int]:
        return sorted(self.rng_suite.python.sample(range(self.num_clients),
                                                   self.num_clients_per_round))

    def if_stop(self) -> bool:
        return self.round >= self.global_round

    def downlink_package(self) -> FedAvgDownlinkPackage:
        return FedAvgDownlinkPackage(serialize_model(self.model))

    def load(self, payload: FedAvgUplinkPackage) -> bool:
        self.client_buffer_cache.append(payload)
        if len(self.client_buffer_cache) < self.num_clients_per_round:
            return False
        self.global_update(self.client_buffer_cache)
        self.round += 1
        self.client_buffer_cache = []
        return True

    def global_update(self, buffer: list[FedAvgUplinkPackage]) -> None:
        buffer = sorted(buffer, key=lambda p: p.cid)
        total = sum(p.data_size for p in buffer)
        average = sum((p.model_parameters * (p.data_size / total) for p in buffer),
                      torch.zeros_like(buffer[0].model_parameters))
        deserialize_model(self.model, average)

    def get_summary(self) -> dict[str, float]:
        loader = self.dataset.get_dataloader(FedAvgPartitionType.TEST, None, self.batch_size,
                                             self.rng_suite.torch_cpu)
        self.model.to(self.device).eval()
        loss = correct = count = 0.0
        with torch.no_grad():
            for x, y in loader:
                out = self.model(x.to(self.device))
                y = y.to(self.device)
                loss += float(torch.nn.functional.cross_entropy(out, y, reduction="sum"))
                correct += float((out.argmax(1) == y).sum())
                count += len(y)
        return {"server_acc": correct / count, "server_loss": loss / count}


class FedAvgBaseClientTrainer(BaseClientTrainer[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    def __init__(self, model_selector: ModelSelector, model_name: str,
                 dataset: PartitionedDataset, device: str, num_clients: int, epochs: int,
                 batch_size: int, lr: float, seed: int) -> None:
        self.model = model_selector.select_model(model_name)
        self.dataset, self.device, self.num_clients = dataset, device, num_clients
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.rng_suite = create_rng_suite(seed)
        self.cache: list[FedAvgUplinkPackage] = []

    def local_process(self, payload: FedAvgDownlinkPackage, cid_list: list[int]) -> None:
        for cid in cid_list:
            loader = self.dataset.get_dataloader(FedAvgPartitionType.TRAIN, cid,
                                                 self.batch_size, self.rng_suite.torch_cpu)
            self.cache.append(train(self.model, payload.model_parameters, loader, self.device,
                                    self.epochs, self.lr, cid))

    def uplink_package(self) -> list[FedAvgUplinkPackage]:
        package, self.cache = self.cache, []
        return package


class FedAvgProcessPoolClientTrainer(
        ProcessPoolClientTrainer[FedAvgUplinkPackage, FedAvgDownlinkPackage, FedAvgClientConfig]):
    def __init__(self, model_selector: ModelSelector, model_name: str, share_dir: Path,
                 state_dir: Path, dataset: PartitionedDataset, device: str, num_clients: int,
                 epochs: int, batch_size: int, lr: float, seed: int, num_parallels: int,
                 ipc_mode: IPCMode) -> None:
        self.num_parallels, self.device, self.ipc_mode = num_parallels, device, ipc_mode
        self.share_dir, self.state_dir = share_dir, state_dir
        share_dir.mkdir(parents=True, exist_ok=True)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.model_selector, self.model_name, self.dataset = model_selector, model_name, dataset
        self.num_clients, self.epochs, self.batch_size = num_clients, epochs, batch_size
        self.lr, self.seed = lr, seed
        self.cache: list[FedAvgUplinkPackage] = []
        self.stop_event = threading.Event()
        self.parameters_buffer = serialize_model(model_selector.select_model(model_name))

    def get_client_config(self, cid: int) -> FedAvgClientConfig:
        return FedAvgClientConfig(self.model_selector, self.model_name, self.dataset,
                                  self.epochs, self.batch_size, self.lr, cid, self.seed,
                                  self.state_dir / f"{cid}.pt")

    def prepare_uplink_package_buffer(self) -> FedAvgUplinkPackage:
        return FedAvgUplinkPackage(-1, self.parameters_buffer.clone(), 0)

    @staticmethod
    def worker(config: FedAvgClientConfig | Path, payload: FedAvgDownlinkPackage | Path,
               device: str, stop_event: threading.Event, *,
               shm_buffer: FedAvgUplinkPackage | None = None) -> FedAvgUplinkPackage | Path:
        if isinstance(config, Path):  # IPCMode.STORAGE: files in, a file out
            package = FedAvgProcessPoolClientTrainer.train_client(
                torch.load(config, weights_only=False), torch.load(payload, weights_only=False),
                device, stop_event)
            torch.save(package, config)
            return config
        assert isinstance(payload, FedAvgDownlinkPackage) and shm_buffer is not None
        package = FedAvgProcessPoolClientTrainer.train_client(config, payload, device, stop_event)
        shm_buffer.model_parameters.copy_(package.model_parameters)
        package.model_parameters = SHMHandle()  # the parent reads the buffer
        return package

    @staticmethod
    def train_client(config: FedAvgClientConfig, payload: FedAvgDownlinkPackage, device: str,
                     stop_event: threading.Event) -> FedAvgUplinkPackage:
        generator = torch.Generator().manual_seed(config.seed + config.cid)
        if config.state_path.exists():  # each client's shuffling continues across rounds
            generator.set_state(torch.load(config.state_path))
        loader = config.dataset.get_dataloader(FedAvgPartitionType.TRAIN, config.cid,
                                               config.batch_size, generator)
        model = config.model_selector.select_model(config.model_name)
        package = train(model, payload.model_parameters, loader, device, config.epochs,
                        config.lr, config.cid, stop_event)
        torch.save(generator.get_state(), config.state_path)
        return package

    def uplink_package(self) -> list[FedAvgUplinkPackage]:
        package, self.cache = self.cache, []
        return package


class FedAvgThreadPoolClientTrainer(
        ThreadPoolClientTrainer[FedAvgUplinkPackage, FedAvgDownlinkPackage]):
    def __init__(self, model_selector: ModelSelector, model_name: str,
                 dataset: PartitionedDataset, device: str, num_clients: int, epochs: int,
                 batch_size: int, lr: float, seed: int, num_parallels: int) -> None:
        self.model_selector, self.model_name, self.dataset = model_selector, model_name, dataset
        self.device, self.num_clients, self.num_parallels = device, num_clients, num_parallels
        self.epochs, self.batch_size, self.lr, self.seed = epochs, batch_size, lr, seed
        self.cache: list[FedAvgUplinkPackage] = []
        self.stop_event = threading.Event()

    def worker(self, cid: int, device: str, payload: FedAvgDownlinkPackage,
               stop_event: threading.Event) -> FedAvgUplinkPackage:
        generator = torch.Generator().manual_seed(self.seed + cid)
        loader = self.dataset.get_dataloader(FedAvgPartitionType.TRAIN, cid, self.batch_size,
                                             generator)
        return train(self.model_selector.select_model(self.model_name),
                     payload.model_parameters, loader, device, self.epochs, self.lr, cid,
                     stop_event)

    def uplink_package(self) -> list[FedAvgUplinkPackage]:
        package, self.cache = self.cache, []
        return package
