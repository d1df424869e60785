"""Shared fixtures: small in-memory federated datasets built by the tests themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from fedloom.data.dataset import ArrayData, FederatedData

# deployment tests run servers and clients on 127.0.0.1; gRPC's C core stays quiet
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


def make_image_data(num_clients: int = 5, per_client: tuple[int, ...] = (23, 17, 30, 9, 12),
                    seed: int = 0) -> FederatedData:
    """Random uint8 'images' (1x6x6) with 4 classes; clients own contiguous index blocks."""
    gen = torch.Generator().manual_seed(seed)
    n = sum(per_client)
    x = torch.randint(0, 256, (n, 1, 6, 6), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 4, (n,), generator=gen)
    bounds = torch.tensor((0, *per_client)).cumsum(0).tolist()
    clients = tuple(torch.arange(bounds[i], bounds[i + 1]) for i in range(num_clients))
    test_x = torch.randint(0, 256, (40, 1, 6, 6), generator=gen, dtype=torch.uint8)
    test_y = torch.randint(0, 4, (40,), generator=gen)
    return FederatedData(
        name="tiny", train=ArrayData(x=x, y=y, mean=0.13, std=0.31),
        test=ArrayData(x=test_x, y=test_y, mean=0.13, std=0.31),
        client_train=clients, client_test=None, num_classes=4, input_shape=(1, 6, 6),
    )


@pytest.fixture
def image_data() -> FederatedData:
    return make_image_data()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test (tiny models: fastest, and immune to other jobs on the
    machine); the count before is restored. Use with ``pytestmark = pytest.mark.usefixtures(
    "one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
