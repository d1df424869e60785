"""A population of clients whose data is made on demand: memory that does not grow with it.

``data.name=generated`` registers ``data.num_clients`` clients (a million is fine), each with
``data.examples_per_client`` examples of FedProx-style synthetic classification data: client
``k`` has its own model ``W_k, b_k ~ N(u_k, 1)`` with ``u_k ~ N(0, alpha)`` and its own feature
mean ``v_k ~ N(B_k, 1)`` with ``B_k ~ N(0, beta)``; features are ``N(v_k, diag(j^-1.2))`` and the
label is ``argmax(W_k x + b_k)``. Nothing per client is stored: client ``k``'s examples are drawn
from the generator keyed ``(seed, k)`` whenever it trains (a small cache keeps the most recent
ones), so they are the same every time and on every fleet. The central test set is held-out
examples of ``data.test_clients`` clients drawn once.

Example:
    >>> source = GeneratedClients(num_clients=1_000_000, per_client=5, num_features=4,
    ...                           num_classes=3, alpha=1.0, beta=1.0, seed=0)
    >>> x, y = source.batch(torch.tensor([5 * 999_999, 5 * 999_999 + 4]))
    >>> tuple(x.shape), bool(torch.equal(x, source.batch(torch.tensor([4999995, 4999999]))[0]))
    ((2, 4), True)
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import overload

import torch

from fedloom.core.counts import Repeated as Repeated  # re-exported: the population's counts
from fedloom.core.rng import SERVER, Purpose, choose, torch_generator
from fedloom.data.dataset import ArrayData, FederatedData

CACHED_CLIENTS = 256  # generated clients kept (a vectorized step touches a cohort of them)
TEST_EXAMPLES_PER_CLIENT = 10


class GeneratedClients:
    """The training examples of every client, generated when asked for.

    Example ``i`` is example ``i % per_client`` of client ``i // per_client``. Used where an
    :class:`~fedloom.data.dataset.ArrayData` of training examples is (``batch``, ``len``, ``to``);
    ``x`` and ``y`` do not exist, since the examples are never all in memory.
    """

    def __init__(self, *, num_clients: int, per_client: int, num_features: int,
                 num_classes: int, alpha: float, beta: float, seed: int,
                 device: str | torch.device = "cpu") -> None:
        self.num_clients = num_clients
        self.per_client = per_client
        self.num_features = num_features
        self.num_classes = num_classes
        self.alpha, self.beta, self.seed = alpha, beta, seed
        self.device = torch.device(device)
        self._std = torch.arange(1, num_features + 1, dtype=torch.float64).pow(-0.6)
        self._cache: OrderedDict[int, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return self.num_clients * self.per_client

    def __getstate__(self) -> dict[str, object]:  # pickled for other processes without cache
        state = dict(self.__dict__)
        state["_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)

    def to(self, device: str | torch.device) -> GeneratedClients:
        """The same population with batches on ``device``."""
        if torch.device(device) == self.device:
            return self
        other = GeneratedClients(num_clients=self.num_clients, per_client=self.per_client,
                                 num_features=self.num_features, num_classes=self.num_classes,
                                 alpha=self.alpha, beta=self.beta, seed=self.seed, device=device)
        return other

    def examples(self, client_id: int, count: int, *, test: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``count`` examples of client ``client_id`` (its training stream, or a held-out one)."""
        gen = torch_generator(self.seed, 0, client_id, Purpose.DATA)
        d, c = self.num_features, self.num_classes
        u = torch.randn((), generator=gen, dtype=torch.float64) * math.sqrt(self.alpha)
        big_b = torch.randn((), generator=gen, dtype=torch.float64) * math.sqrt(self.beta)
        w = torch.randn(d, c, generator=gen, dtype=torch.float64) + u
        b = torch.randn(c, generator=gen, dtype=torch.float64) + u
        v = torch.randn(d, generator=gen, dtype=torch.float64) + big_b
        if test:  # a stream of its own: training examples stay the same whatever is tested
            gen = torch_generator(self.seed, 1, client_id, Purpose.DATA)
        x = torch.randn(count, d, generator=gen, dtype=torch.float64) * self._std + v
        y = (x @ w + b).argmax(1)
        return x.float(), y

    def client(self, client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """All training examples of one client (cached)."""
        hit = self._cache.get(client_id)
        if hit is not None:
            self._cache.move_to_end(client_id)
            return hit
        x, y = self.examples(client_id, self.per_client)
        made = (x.to(self.device), y.to(self.device))
        self._cache[client_id] = made
        if len(self._cache) > CACHED_CLIENTS:
            self._cache.popitem(last=False)
        return made

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The examples at global indices ``idx`` (any clients, any order)."""
        idx = idx.to("cpu").reshape(-1)
        owners = torch.div(idx, self.per_client, rounding_mode="floor")
        if idx.numel() and bool(owners[0] == owners[-1]) and bool((owners == owners[0]).all()):
            x, y = self.client(int(owners[0]))
            local = (idx - int(owners[0]) * self.per_client).to(self.device)
            return x.index_select(0, local), y.index_select(0, local)
        xs = torch.empty(idx.numel(), self.num_features, device=self.device)
        ys = torch.empty(idx.numel(), dtype=torch.long, device=self.device)
        for owner in torch.unique(owners).tolist():
            rows = (owners == owner).nonzero().reshape(-1)
            x, y = self.client(owner)
            local = (idx[rows] - owner * self.per_client).to(self.device)
            xs[rows.to(self.device)] = x.index_select(0, local)
            ys[rows.to(self.device)] = y.index_select(0, local)
        return xs, ys


class ClientRanges(Sequence[torch.Tensor]):
    """Client ``k``'s example indices ``[k * per_client, (k + 1) * per_client)``, made when
    asked for: a sequence of index tensors that costs nothing per client."""

    def __init__(self, num_clients: int, per_client: int) -> None:
        self.num_clients, self.per_client = num_clients, per_client

    def __len__(self) -> int:
        return self.num_clients

    @overload
    def __getitem__(self, k: int) -> torch.Tensor: ...

    @overload
    def __getitem__(self, k: slice) -> Sequence[torch.Tensor]: ...

    def __getitem__(self, k: int | slice) -> torch.Tensor | Sequence[torch.Tensor]:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.num_clients))]
        if not -self.num_clients <= k < self.num_clients:
            raise IndexError(f"client {k} of {self.num_clients}")
        k %= self.num_clients
        return torch.arange(k * self.per_client, (k + 1) * self.per_client)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self[k] for k in range(self.num_clients))

    def __reduce__(self) -> tuple[type, tuple[int, int]]:
        return ClientRanges, (self.num_clients, self.per_client)


def test_set(source: GeneratedClients, num_clients: int) -> ArrayData:
    """Held-out examples of ``num_clients`` clients drawn once (O(num_clients) to make)."""
    gen = torch_generator(source.seed, 0, SERVER, Purpose.PARTITION)
    ids = choose(source.num_clients, min(num_clients, source.num_clients), gen)
    parts = [source.examples(k, TEST_EXAMPLES_PER_CLIENT, test=True) for k in ids]
    return ArrayData(x=torch.cat([x for x, _ in parts]), y=torch.cat([y for _, y in parts]))


def load_generated(*, num_clients: int, per_client: int, num_features: int, num_classes: int,
                   alpha: float, beta: float, test_clients: int, seed: int) -> FederatedData:
    """The ``generated`` population as a :class:`FederatedData` (see the module docstring)."""
    source = GeneratedClients(num_clients=num_clients, per_client=per_client,
                              num_features=num_features, num_classes=num_classes, alpha=alpha,
                              beta=beta, seed=seed)
    return FederatedData(name="generated", train=source, test=test_set(source, test_clients),
                         client_train=ClientRanges(num_clients, per_client), client_test=None,
                         num_classes=num_classes, input_shape=(num_features,))
