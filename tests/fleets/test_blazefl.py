"""ClientRunner: a user's own per-client function, identical on serial, thread and process pools.

The function is BlazeFL-style: it gets a context (device, its own generator, data shared once),
the round's payload and a client id, and returns whatever package it likes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import cast

import pytest
import torch

from fedloom import ClientFailure, ConfigError
from fedloom.fleets.blazefl import ClientContext, ClientRunner

DIM = 17_000  # a float32 vector of this size (68 KB) travels through shared files
GEN = torch.Generator().manual_seed(0)
DATA = {"x": torch.randn(60, DIM, generator=GEN), "y": torch.randn(60, generator=GEN),
        "bounds": [0, 10, 25, 40, 60]}


def sgd_client(ctx: ClientContext, payload: object, client_id: int) -> dict[str, object]:
    """Five steps of least-squares SGD on the client's rows, batches from its own generator."""
    data = cast(Mapping[str, torch.Tensor], ctx.data)
    pay = cast(Mapping[str, torch.Tensor], payload)
    if client_id == 99:
        raise ValueError("no such client")
    lo, hi = cast(list[int], data["bounds"])[client_id:client_id + 2]
    w = pay["w"].clone()
    gen = ctx.generator()
    for _ in range(5):
        rows = lo + torch.randperm(hi - lo, generator=gen)[:4]
        x, y = data["x"][rows], data["y"][rows]
        w -= float(pay["lr"]) * x.T @ (x @ w - y) / len(rows)
    return {"w": w, "num_examples": hi - lo, "round": ctx.round, "device": str(ctx.device)}


def rounds(runner: ClientRunner) -> list[object]:
    """Two rounds of FedAvg written by the user around the runner."""
    w = torch.zeros(DIM)
    for _ in range(2):
        runner.local_process({"w": w, "lr": torch.tensor(1e-5)}, [3, 0, 2])
        packages = cast(list[dict[str, torch.Tensor]], runner.uplink_package())
        total = sum(int(p["num_examples"]) for p in packages)
        w = sum((p["w"] * (int(p["num_examples"]) / total) for p in packages),
                torch.zeros(DIM))
    return [w, packages]


@pytest.fixture(scope="module")
def process_runner() -> Iterator[ClientRunner]:
    with ClientRunner(sgd_client, kind="process", workers=2, data=DATA, seed=7) as runner:
        yield runner


def test_same_function_same_bits_on_serial_thread_and_process(
        process_runner: ClientRunner) -> None:
    with ClientRunner(sgd_client, kind="serial", data=DATA, seed=7) as serial, \
            ClientRunner(sgd_client, kind="thread", workers=2, data=DATA, seed=7) as threaded:
        w_serial, packages = rounds(serial)
        w_thread, _ = rounds(threaded)
    w_process, process_packages = rounds(process_runner)
    assert torch.equal(w_serial, w_thread)  # type: ignore[arg-type]
    assert torch.equal(w_serial, w_process)  # type: ignore[arg-type]
    assert not torch.equal(w_serial, torch.zeros(DIM))  # type: ignore[arg-type]
    assert [p["round"] for p in process_packages] == [2, 2, 2]  # type: ignore[index]
    assert [p["num_examples"] for p in packages] == [20, 10, 15]  # type: ignore[index]


def test_a_raising_client_is_a_failure_value_in_place(process_runner: ClientRunner) -> None:
    process_runner.local_process({"w": torch.zeros(DIM), "lr": torch.tensor(0.0)}, [1, 99],
                                 round=5)
    ok, failed = process_runner.uplink_package()
    assert isinstance(ok, dict) and ok["round"] == 5
    assert isinstance(failed, ClientFailure) and failed.client_id == 99
    assert failed.stage == "client" and "ValueError: no such client" in failed.message


def test_share_dir_holds_the_files_and_is_emptied(tmp_path: Path) -> None:
    runner = ClientRunner(sgd_client, kind="process", workers=1, data=DATA, share_dir=str(tmp_path))
    with runner:
        runner.local_process({"w": torch.zeros(DIM), "lr": torch.tensor(1e-5)}, [0])
        assert os.listdir(tmp_path)  # the shared data
        [package] = runner.uplink_package()
    assert os.listdir(tmp_path) == []
    assert isinstance(package, dict) and package["w"].shape == (DIM,)


def test_bad_setup_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"process_client = .*module-level function"):
        ClientRunner(lambda ctx, p, c: None, kind="process")
    with pytest.raises(ConfigError, match=r"kind = 'gpu'"):
        ClientRunner(sgd_client, kind="gpu")
    with pytest.raises(ConfigError, match=r"workers = 0"):
        ClientRunner(sgd_client, kind="thread", workers=0)
