"""BlazeFL's documented trainer contracts (1.x disk protocol, 2.x pools) on fedloom's workers.

The subclasses are written the way BlazeFL's documentation writes them: a 1.x
``ParallelClientTrainer`` with ``get_shared_data`` and a static ``process_client(path, device)``
that reads and writes files; 2.x subclasses that set their own attributes without calling
``super().__init__``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fedloom import ClientError, ConfigError
from fedloom.fleets import (
    IPCMode,
    ParallelClientTrainer,
    ProcessPoolClientTrainer,
    SHMHandle,
    ThreadPoolClientTrainer,
)

DIM = 20_000  # 80 KB of float32: large enough for fedloom's shared files


@dataclass
class Shared:
    cid: int
    weights: torch.Tensor
    seed: int


@dataclass
class Upload:
    cid: int
    weights: torch.Tensor
    data_size: int


def local_sgd(cid: int, weights: torch.Tensor, seed: int) -> Upload:
    """A few noisy steps towards ``cid``: its own generator, so any worker computes the same."""
    gen = torch.Generator().manual_seed(seed * 1000 + cid)
    w = weights.clone()
    for _ in range(3):
        w -= 0.1 * (w - cid) + 0.01 * torch.randn(w.shape, generator=gen)
    return Upload(cid, w, 10 + cid)


class DiskTrainer(ParallelClientTrainer[Upload, torch.Tensor, Shared]):
    def __init__(self, num_parallels: int, share_dir: Path, device: str) -> None:
        super().__init__(num_parallels, share_dir, device)
        self.seed = 5

    def get_shared_data(self, cid: int, payload: torch.Tensor) -> Shared:
        return Shared(cid=cid, weights=payload, seed=self.seed)

    @staticmethod
    def process_client(path: Path, device: str) -> Path:
        data = torch.load(path, weights_only=False)
        assert isinstance(data, Shared)
        if data.cid == 13:
            raise ValueError("unlucky client")
        torch.save(local_sgd(data.cid, data.weights.to(device), data.seed), path)
        return path

    def uplink_package(self) -> list[Upload]:  # as BlazeFL's FedAvg trainer writes it
        package = self.cache
        self.cache = []
        return package


class OldDiskTrainer(ParallelClientTrainer[int, int, dict[str, int]]):
    """BlazeFL 0.1.x: no device, ``process_client(path)``."""

    def get_shared_data(self, cid: int, payload: int) -> dict[str, int]:
        return {"cid": cid, "payload": payload}

    @staticmethod
    def process_client(path: Path) -> Path:  # type: ignore[override]
        data = torch.load(path, weights_only=False)
        torch.save(data["cid"] ** 2 + data["payload"], path)
        return path


def rounds(trainer: ParallelClientTrainer[Upload, torch.Tensor, Shared]) -> torch.Tensor:
    weights = torch.zeros(DIM)
    for _ in range(2):
        trainer.local_process(weights, [4, 1, 7])
        uploads = trainer.uplink_package()
        assert [u.cid for u in uploads] == [4, 1, 7]
        total = sum(u.data_size for u in uploads)
        weights = sum((u.weights * (u.data_size / total) for u in uploads), torch.zeros(DIM))
    return weights


def test_v1_disk_protocol_gives_the_same_bits_on_one_and_two_workers(tmp_path: Path) -> None:
    with DiskTrainer(1, tmp_path / "one", "cpu") as one, \
            DiskTrainer(2, tmp_path / "two", "cpu") as two:
        a, b = rounds(one), rounds(two)
    expected = torch.zeros(DIM)
    for _ in range(2):
        ups = [local_sgd(c, expected, 5) for c in (4, 1, 7)]
        total = sum(u.data_size for u in ups)
        expected = sum((u.weights * (u.data_size / total) for u in ups), torch.zeros(DIM))
    assert torch.equal(a, b)
    assert torch.allclose(a, expected)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["1.pkl", "4.pkl", "7.pkl"]
    assert one.num_parallels == 1 and one.share_dir == tmp_path / "one" and one.cache == []


def test_v0_one_argument_process_client_and_default_device(tmp_path: Path) -> None:
    with OldDiskTrainer(2, tmp_path) as trainer:
        trainer.local_process(10, [1, 2, 3])
        trainer.local_process(0, [5])
        assert trainer.uplink_package() == [11, 14, 19, 25]
        assert trainer.uplink_package() == []


def test_a_failing_process_client_names_the_client_and_the_cause(tmp_path: Path) -> None:
    with DiskTrainer(2, tmp_path, "cpu") as trainer:
        with pytest.raises(ClientError, match=r"client 13: ValueError: unlucky client") as err:
            trainer.local_process(torch.zeros(3), [2, 13])
        assert err.value.client_id == 13
        assert trainer.cache == []  # nothing of the failed call
        trainer.local_process(torch.zeros(3), [2])  # the pool goes on
        assert [u.cid for u in trainer.uplink_package()] == [2]


def test_a_subclass_missing_an_abstract_method_fails_when_built(tmp_path: Path) -> None:
    class NoProcess(ParallelClientTrainer[int, int, int]):
        def get_shared_data(self, cid: int, payload: int) -> int:
            return cid

    class NoWorker(ThreadPoolClientTrainer[int, int]):
        def uplink_package(self) -> list[int]:
            return []

    with pytest.raises(TypeError, match="process_client"):
        NoProcess(1, tmp_path)  # type: ignore[abstract]
    with pytest.raises(TypeError, match="worker"):
        NoWorker()  # type: ignore[abstract]
    with pytest.raises(ConfigError, match="num_parallels = 0"):
        OldDiskTrainer(0, tmp_path)


@dataclass
class Config:
    cid: int
    seed: int


@dataclass
class Payload:
    weights: torch.Tensor


class PoolTrainer(ProcessPoolClientTrainer[Upload, Payload, Config]):
    """Written as BlazeFL 2.x's FedAvg trainer is: attributes set here, no super().__init__."""

    def __init__(self, share_dir: Path, num_parallels: int, ipc_mode: IPCMode) -> None:
        self.num_parallels = num_parallels
        self.share_dir = share_dir
        self.share_dir.mkdir(parents=True, exist_ok=True)
        self.device = "cpu"
        self.cache = []
        self.ipc_mode = ipc_mode
        self.stop_event = threading.Event()
        self.seen: list[int] = []

    def progress_fn(self, it: list[object]) -> list[object]:  # type: ignore[override]
        self.seen.append(len(it))
        return it

    def get_client_config(self, cid: int) -> Config:
        return Config(cid=cid, seed=5)

    def prepare_uplink_package_buffer(self) -> Upload:
        return Upload(-1, torch.zeros(DIM), 0)

    @staticmethod
    def worker(config: Config | Path, payload: Payload | Path, device: str,
               stop_event: threading.Event, *,
               shm_buffer: Upload | None = None) -> Upload | Path:
        if isinstance(config, Path) and isinstance(payload, Path):
            cfg, pay = torch.load(config, weights_only=False), torch.load(payload,
                                                                          weights_only=False)
            torch.save(local_sgd(cfg.cid, pay.weights, cfg.seed), config)
            return config
        assert isinstance(config, Config) and isinstance(payload, Payload)
        assert shm_buffer is not None and not stop_event.is_set()
        package = local_sgd(config.cid, payload.weights, config.seed)
        shm_buffer.weights.copy_(package.weights)
        package.weights = SHMHandle()  # type: ignore[assignment]
        return package

    def uplink_package(self) -> list[Upload]:
        package, self.cache = self.cache, []
        return package


@pytest.mark.parametrize("mode", [IPCMode.STORAGE, IPCMode.SHARED_MEMORY])
def test_v2_process_pool_in_both_ipc_modes(tmp_path: Path, mode: IPCMode) -> None:
    trainer = PoolTrainer(tmp_path, 2, mode)
    try:
        weights = torch.full((DIM,), 0.5)
        trainer.local_process(Payload(weights), [3, 0])
        uploads = trainer.uplink_package()
    finally:
        trainer.close()
    expected = [local_sgd(c, weights, 5) for c in (3, 0)]
    assert [u.cid for u in uploads] == [3, 0] and trainer.seen == [2]
    assert all(torch.equal(u.weights, e.weights) for u, e in zip(uploads, expected))
    assert trainer.stop_event.is_set()


class Threads(ThreadPoolClientTrainer[Upload, torch.Tensor]):
    def __init__(self) -> None:
        self.num_parallels = 2
        self.device = "cpu"
        self.cache = []
        self.stop_event = threading.Event()

    def worker(self, cid: int, device: str, payload: torch.Tensor,
               stop_event: threading.Event) -> Upload:
        if cid == 13:
            raise RuntimeError("thread client broke")
        return local_sgd(cid, payload.to(device), 5)

    def uplink_package(self) -> list[Upload]:
        package, self.cache = self.cache, []
        return package


def test_v2_thread_pool_keeps_order_and_names_a_failing_client() -> None:
    trainer = Threads()
    trainer.local_process(torch.zeros(5), [2, 9, 1])
    assert [u.cid for u in trainer.uplink_package()] == [2, 9, 1]
    with pytest.raises(ClientError, match="client 13: RuntimeError: thread client broke"):
        trainer.local_process(torch.zeros(5), [1, 13])
    assert trainer.cache == []
