"""FedLab's serial client trainer on fedloom's local SGD: several clients in one process.

:class:`SerialTrainer` is FedLab's ``SGDSerialClientTrainer``/``FedAvgSerialClientTrainer``
contract (``local_process(payload, id_list)``, then ``uplink_package``) on fedloom's
:class:`~fedloom.training.trainer.LocalTrainer`: one reusable model bound to a flat buffer,
batches as ``index_select`` s, each client's shuffles drawn from ``(seed, round, client_id)``.
A client therefore computes the same bits here as on any fedloom fleet.

Example:
    >>> from fedloom import ClientConfig, DataConfig, load_federated
    >>> from fedloom.models import logreg
    >>> from fedloom.training.spec import ClientSpec
    >>> from functools import partial
    >>> data = load_federated(DataConfig(name="synthetic", num_clients=4), seed=0)
    >>> spec = ClientSpec(model_fn=partial(logreg, data.input_shape, data.num_classes),
    ...                   train=data.train, client_indices=data.client_train, seed=0)
    >>> trainer = SerialTrainer(spec, client_ids=[2, 3], config=ClientConfig(lr=0.01))
    >>> params = torch.zeros(trainer.layout.size)
    >>> trainer.local_process([params, torch.tensor([1])], [3])
    >>> [p[1].tolist() for p in trainer.uplink_package]  # [client_id, num_examples, round]
    [[3, 1179, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch

from fedloom.core.packages import ClientConfig, Downlink
from fedloom.core.threads import torch_threads
from fedloom.runtime.fedlab.codes import PayloadError
from fedloom.training.spec import ClientSpec


class SerialTrainer:
    """Trains the clients ``client_ids`` (global ids into ``spec.client_indices``) one after
    another, each from the downlink ``[params, round]``; uploads ``[params, info]`` per client
    with ``info = [client_id, num_examples, round]``.

    Args:
        spec: the clients' model, data, seed and algorithm client half.
        client_ids: the clients this process holds, in its local order.
        config: local training (epochs or steps, batch size, lr, ...).
        device: where the clients train; packages go up on the CPU.
        local_ids: the server sends ids counted from 0 in this process (its
            ``mode="LOCAL"``) rather than global ids (``mode="GLOBAL"``).
        threads: torch threads while training (None: leave as set).
    """

    def __init__(self, spec: ClientSpec, *, client_ids: Sequence[int], config: ClientConfig,
                 device: str | torch.device = "cpu", local_ids: bool = False,
                 threads: int | None = None) -> None:
        ids = [int(c) for c in client_ids]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"SerialTrainer: client_ids = {ids}: give at least one id, "
                             "each once")
        known = len(spec.client_indices)
        if any(not 0 <= c < known for c in ids):
            raise ValueError(f"SerialTrainer: client_ids {ids}: the data has clients "
                             f"0-{known - 1}")
        self.spec, self.config, self.local_ids, self.threads = spec, config, local_ids, threads
        self._global = ids
        self._trainer = spec.trainer(device)
        self.layout = self._trainer.layout
        self._cache: list[list[torch.Tensor]] = []

    @property
    def num_clients(self) -> int:
        return len(self._global)

    @property
    def client_ids(self) -> list[int]:
        """The ids the server uses for this process's clients (local or global)."""
        return list(range(len(self._global))) if self.local_ids else list(self._global)

    def global_id(self, id: int) -> int:
        """The global id of a client as the server named it."""
        if self.local_ids:
            if not 0 <= id < len(self._global):
                raise PayloadError(f"local client id {id}: this process holds "
                                   f"{len(self._global)} clients (0-{len(self._global) - 1})")
            return self._global[id]
        if id not in self._global:
            raise PayloadError(f"client {id} is not held by this process (it holds "
                               f"{self._global}); is the server's mode 'LOCAL'? then pass "
                               "local_ids=True")
        return id

    def local_process(self, payload: list[torch.Tensor], id_list: list[int]) -> None:
        """Train the clients of ``id_list`` from ``payload = [params, round]``."""
        if len(payload) != 2 or payload[1].numel() != 1:
            raise PayloadError(f"expected [params, round], got "
                               f"{[(str(t.dtype), list(t.shape)) for t in payload]}")
        params, round = payload[0], int(payload[1].item())
        if params.dim() != 1 or params.shape[0] != self.layout.size:
            raise PayloadError(f"params: expected {self.layout.size} values, got shape "
                               f"{list(params.shape)}")
        params = params.to("cpu", self.layout.dtype)
        with torch_threads(self.threads) if self.threads else nullcontext():
            for id in id_list:
                client = self.global_id(int(id))
                result = self._trainer.fit(Downlink(round=round, client_id=client,
                                                    params=params, config=self.config))
                info = torch.tensor([client, result.num_examples, round], dtype=torch.int64)
                self._cache.append([result.params, info])

    @property
    def uplink_package(self) -> list[list[torch.Tensor]]:
        """The packages of the clients trained since the last call (then forgotten)."""
        packages, self._cache = self._cache, []
        return packages
