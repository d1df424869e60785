"""``fedloom edge``: one aggregator of a deployed hierarchy, a client upstream and a server
downstream.

The edge program builds its node of the config's topology exactly as the simulation does (its
algorithm, sampler and client-state store), serves its collaborators (clients, or the edges
below it) with a :class:`~fedloom.transport.service.FederationServer` of its own (tokens, TLS,
bulk connection, deadlines), and connects to its parent as an authenticated client
(:class:`~fedloom.runtime.client_loop.ClientLoop`). Each fit its parent sends runs the node's
``rounds`` rounds over its collaborators (:meth:`HierarchicalLoop.collaborate`) and answers with
the node's model, so a deployed hierarchy computes the simulated one's model bit for bit.

After every parent round it writes its checkpoint (its algorithm's tensors, its store, its
rows); ``--resume RUN_DIR`` restarts it from there, and its collaborators reconnect on their
own. A parent round the edge did not finish is a failure at its parent, which goes on without
it when its ``min_success`` allows.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fedloom.app.config import RunConfig, config_to_yaml
from fedloom.app.rundir import default_out, prepare_out
from fedloom.app.server import ServerOptions, reply_schema
from fedloom.core.errors import CheckpointError, ClientError, ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.core.packages import ClientResult, Downlink, ServerState
from fedloom.data import load_federated
from fedloom.fleets.grpc import GrpcFleet
from fedloom.models import init_module, model_factory
from fedloom.runtime.checkpoint import (
    Checkpoint,
    load_checkpoint,
    restore_store,
    rows_up_to,
    save_checkpoint,
    store_contents,
)
from fedloom.runtime.client_loop import Backoff, ClientLoop
from fedloom.runtime.clients import Client
from fedloom.runtime.sampling import ConnectedSampler
from fedloom.runtime.sinks import ConsoleSink, JsonlSink, Sink, file_sinks, row_step
from fedloom.topology.build import build_hierarchy
from fedloom.topology.hierarchy import Aggregator, HierarchicalLoop
from fedloom.topology.tree import Tree, build_tree
from fedloom.transport.security import TlsFiles, TokenBook
from fedloom.transport.service import FederationServer

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeOptions:
    """How an edge serves below and connects above.

    Attributes:
        node: the topology node this program is.
        upstream: its parent's ``HOST:PORT``.
        downstream: its own server's options (``address`` to listen on, TLS, tokens, policy,
            limits, ``resume`` a run directory to continue from).
        token, tls, insecure, bulk, backoff: how it connects to its parent.
        out: its run directory (default: the config's ``out``, else
            ``runs/<name>-<node>-<time>``).
    """

    node: str
    upstream: str
    downstream: ServerOptions = field(default_factory=ServerOptions)
    token: str | None = None
    tls: TlsFiles | None = None
    insecure: bool = False
    bulk: bool = True
    backoff: Backoff = field(default_factory=Backoff)
    out: str | None = None


def find(root: Aggregator, name: str) -> Aggregator:
    if root.node.name == name:
        return root
    for child in root.children:
        try:
            return find(child, name)
        except KeyError:
            pass
    raise KeyError(name)


def parent_position(tree: Tree, name: str) -> int:
    """The edge's client id at its parent: its position among the parent's collaborators."""
    for node in tree.nodes.values():
        if name in node.children:
            return node.children.index(name)
    raise ConfigError(f"topology: node {name!r} is the root; start it with `fedloom server`")


class EdgeClient(Client):
    """The edge as its parent's client: a fit runs the edge's rounds with its collaborators."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self._lock = threading.Lock()

    def on_welcome(self, layout: ParamLayout, run_config: str) -> None:
        mine = self.edge.loop.layout
        if [(e.name, e.shape) for e in mine.entries] != [(e.name, e.shape)
                                                         for e in layout.entries]:
            raise ClientError(f"the parent's model ({layout.size} values) is not this edge's "
                              f"({mine.size}); check the config on both sides")

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        with self._lock:
            return self.edge.parent_round(downlink)


class Edge:
    """A built edge: its loop over its own fleet, its server, its run directory."""

    def __init__(self, cfg: RunConfig, options: EdgeOptions) -> None:
        if cfg.topology is None:
            raise ConfigError("fedloom edge needs a config with a topology section")
        options.downstream.check()
        self.cfg, self.options = cfg, options
        data = load_federated(cfg.data, seed=cfg.seed)
        model_fn = model_factory(cfg.model, data.input_shape, data.num_classes)
        model = init_module(model_fn, cfg.seed)
        layout = ParamLayout.from_module(model)
        tree = build_tree(cfg.topology, num_clients=data.num_clients, seed=cfg.seed)
        if options.node not in tree.nodes:
            raise ConfigError(f"--node {options.node!r}: not a node of the topology "
                              f"({', '.join(tree.nodes)})")
        self.position = parent_position(tree, options.node)
        root = build_hierarchy(tree, algorithm=cfg.algorithm,
                               num_examples=data.example_counts(), layout=layout, seed=cfg.seed,
                               root_cohort=cfg.cohort.size, state_dir=cfg.state_dir)
        built = find(root, options.node)
        ids = tuple(built.ids)  # its collaborators are remote: a leaf of its own fleet
        self.agg = dataclasses.replace(built, children=[], node=dataclasses.replace(
            built.node, children=(), clients=ids))
        down = options.downstream
        tokens = TokenBook.from_file(down.tokens) if down.tokens else None
        self.server = FederationServer(
            down.address, layout=layout, tls=down.tls, insecure=down.insecure, tokens=tokens,
            client_ids=ids, schema=reply_schema(self.agg.algorithm, layout),
            run_config=config_to_yaml(cfg), mode="sync", limits=down.limits,
            handlers=down.handlers, bulk_port=down.bulk_port)
        self.fleet = GrpcFleet(self.server, down.policy)
        if down.sample_connected:
            self.agg.sampler = ConnectedSampler(self.agg.sampler,
                                                available=self.server.connected, seed=cfg.seed)
        self.loop = HierarchicalLoop(root=self.agg, fleet=self.fleet, evaluate=lambda p: {},
                                     client=cfg.client, rounds=1, layout=layout,
                                     initial_params=layout.module_to_flat(model),
                                     threads=cfg.fleet.threads)
        self.out = self._open_out(down.resume)
        done = max((row_step(r) or 0 for r in self.loop.rows), default=0)
        self.sinks: list[Sink] = file_sinks(self.out, cfg.sinks, resumed_after=done)
        if down.console:
            self.sinks.append(ConsoleSink(cfg.rounds, title=f"{cfg.name} {options.node}"))
        self.loop.sinks.extend(self.sinks)

    def _open_out(self, resume: str | None) -> Path:
        if resume is None:
            given = self.options.out or self.cfg.out
            out = prepare_out(Path(given) if given
                              else default_out(f"{self.cfg.name}-{self.options.node}"))
            (out / "config.yaml").write_text(config_to_yaml(self.cfg), encoding="utf-8")
            return out
        out = Path(resume)
        ckpt = load_checkpoint(out)
        if ckpt.state.params.shape != self.loop.state.params.shape:
            raise CheckpointError(f"{out}: tensor 'params' has {ckpt.state.params.numel()} "
                                  f"values, this edge's model {self.loop.state.params.numel()}")
        self.agg.state = ckpt.state
        restore_store(self.agg.store, ckpt.store)
        self.loop.rows = rows_up_to(ckpt.rows, ckpt.state.round)
        sink = JsonlSink(out / "metrics.jsonl.tmp")
        for row in self.loop.rows:
            sink.log(row)
        sink.close()
        (out / "metrics.jsonl.tmp").replace(out / "metrics.jsonl")
        log.info("edge %s resuming after parent round %d", self.options.node, ckpt.state.round)
        return out

    def parent_round(self, downlink: Downlink) -> ClientResult:
        """One fit from the parent: the node's rounds; checkpointed; its model."""
        outcome = self.loop.collaborate(downlink)
        if not isinstance(outcome, ClientResult):
            raise ClientError(f"edge {self.options.node}: {outcome.message}",
                              round=downlink.round, stage="fit")
        state = self.agg.state
        assert state is not None
        save_checkpoint(self.out, Checkpoint(
            state=ServerState(round=downlink.round, params=state.params, extras=state.extras),
            store=store_contents(self.agg.store), rows=tuple(self.loop.rows)))
        return outcome

    def serve(self) -> str:
        """Serve below, connect above, until the parent says exit; its reason."""
        options = self.options
        self.server.start()
        down = options.downstream
        wanted = down.min_clients or len(self.agg.ids)
        log.info("edge %s waiting for %d collaborators on port %d, parent %s", options.node,
                 wanted, self.server.port, options.upstream)
        try:
            self.fleet.wait_for_clients(wanted, down.start_timeout)
            return ClientLoop(options.upstream, client_id=self.position,
                              client=EdgeClient(self), token=options.token, tls=options.tls,
                              insecure=options.insecure, backoff=options.backoff,
                              bulk=options.bulk).run()
        finally:
            self.fleet.close()
            for sink in self.sinks:
                sink.close()
            self.server.stop()


def run_edge(cfg: RunConfig, options: EdgeOptions) -> str:
    """Build and serve an edge (see the module docstring); the parent's exit reason."""
    return Edge(cfg, options).serve()

