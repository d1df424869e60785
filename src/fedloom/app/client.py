"""Clients built from a run config: partition ``client_id`` of the configured dataset, trained by
fedloom's own :class:`~fedloom.training.trainer.LocalTrainer` with the configured algorithm's
client half. This is what ``fedloom client`` runs (the demo's clients, and any deployment whose
clients can load their data through :func:`fedloom.data.load_federated`)."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

from fedloom.algorithms import AlgorithmContext, build_algorithm
from fedloom.algorithms.client_store import make_store
from fedloom.algorithms.registry import AlgorithmConfig
from fedloom.app.config import RunConfig, load_config
from fedloom.compression.config import DownlinkCoding
from fedloom.compression.uplink import CLIENT_LOCAL, compressed_local
from fedloom.core.allocator import keep_freed_memory
from fedloom.core.errors import ClientError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.data import load_federated
from fedloom.models import model_factory
from fedloom.privacy.private import private_local
from fedloom.runtime.clients import Client, TrainerClient
from fedloom.runtime.downlink_client import ReceivingClient
from fedloom.runtime.local_state import StatefulClient
from fedloom.topology.config import TopologyKind
from fedloom.training.trainer import LocalTrainer


def client_algorithm(cfg: RunConfig) -> AlgorithmConfig:
    """The algorithm whose client half the run's clients run: the run's, or in a hierarchy the
    leaf aggregators' (one for all of them)."""
    topo = cfg.topology
    if topo is None or topo.kind != TopologyKind.HIERARCHY:
        return cfg.algorithm
    aggregators = {a for _, a in topo.edges}  # a leaf aggregates no aggregator
    leaf = next((n for n in topo.nodes if n.name not in aggregators), None)
    return leaf.algorithm if leaf is not None and leaf.algorithm is not None else cfg.algorithm


def trainer_client(cfg: RunConfig) -> TrainerClient:
    """A :class:`TrainerClient` holding every partition the config's data split makes (a
    process serves the ids it connects as), under the run's client-side privacy (local DP,
    DP-SGD: the update is noised before it leaves) and then its uplink codec (the update leaves
    encoded), training with ``fleet.threads`` torch threads (default: all cores) as the
    simulation does."""
    keep_freed_memory()  # a client process trains from here on
    data = load_federated(cfg.data, seed=cfg.seed)
    model_fn = model_factory(cfg.model, data.input_shape, data.num_classes)
    num_examples = tuple(data.num_examples(c) for c in range(data.num_clients))
    chosen = client_algorithm(cfg)
    layout = ParamLayout.from_module(model_fn())
    algorithm = build_algorithm(chosen.name, chosen.options, AlgorithmContext(
        num_examples=num_examples, layout=layout))
    return TrainerClient(LocalTrainer(model_fn=model_fn, train=data.train,
                                      client_indices=data.client_train, seed=cfg.seed,
                                      local=compressed_local(
                                          cfg.compression,
                                          private_local(cfg.privacy, algorithm.local, cfg.seed),
                                          seed=cfg.seed, layout=layout,
                                          algorithm=chosen.name)),
                         threads=cfg.fleet.threads)


def config_client(cfg: RunConfig) -> Client:
    """:func:`trainer_client`, keeping what the run's client half remembers between rounds
    (uplink compression's error-feedback residual, a warm-started codec's state) in this
    process, per client id, on disk under ``state_dir`` when the config sets one; with
    ``compression.downlink`` it rebuilds the model it is sent (and keeps the last one)."""
    trainer = trainer_client(cfg)
    downlink = cfg.compression.downlink is not DownlinkCoding.NONE  # the model arrives encoded
    if not (downlink or cfg.compression.enabled):
        return trainer
    inner: Client = trainer
    store = make_store(cfg.state_dir, len(trainer.trainer.client_indices))
    if downlink:
        inner = ReceivingClient(inner, block=cfg.compression.block, store=store)
    if not cfg.compression.enabled:
        return inner
    return StatefulClient(inner, keys=CLIENT_LOCAL, store=store)


def config_from_text(text: str, overrides: Sequence[str] = ()) -> RunConfig:
    """A run config from YAML text (the server's welcome), checked like a config file."""
    with tempfile.TemporaryDirectory(prefix="fedloom-") as tmp:
        path = Path(tmp) / "server.yaml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, overrides)


class ConfigClient(Client):
    """A :func:`trainer_client` from this client's own config, or else from the config the
    server sends when it welcomes the client (built once, shared by every connection)."""

    def __init__(self, cfg: RunConfig | None = None, overrides: Sequence[str] = ()) -> None:
        self.cfg = cfg
        self.overrides = list(overrides)
        self._inner: Client | None = None
        self._lock = threading.Lock()

    def on_welcome(self, layout: ParamLayout, run_config: str) -> None:
        with self._lock:
            if self._inner is None:
                if self.cfg is None and not run_config:
                    raise ClientError("the server sent no run config: start the client with "
                                      "--config CONFIG.yaml")
                self._inner = config_client(self.cfg or config_from_text(run_config,
                                                                         self.overrides))
        self._inner.on_welcome(layout, run_config)

    def _trainer(self) -> Client:
        if self._inner is None:
            raise ClientError("no welcome from the server yet")
        return self._inner

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        return self._trainer().run_fit(downlink, layout)

    def run_evaluate(self, params: torch.Tensor, config: ClientConfig, layout: ParamLayout,
                     *, round: int, client_id: int) -> tuple[dict[str, Mean], int]:
        return self._trainer().run_evaluate(params, config, layout, round=round,
                                            client_id=client_id)
