"""The build path's branch for runs with a ``topology``: a hierarchy of aggregators or gossip
between the clients, over the one fleet :func:`~fedloom.runtime.assemble.assemble` builds."""

from __future__ import annotations

import torch

from fedloom.algorithms.base import Algorithm, is_async
from fedloom.algorithms.registry import AlgorithmContext
from fedloom.app.config import RunConfig
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.data.dataset import FederatedData
from fedloom.models import ModelFn
from fedloom.runtime.assemble import FleetChoice, assemble
from fedloom.runtime.checkpoint import Checkpointer
from fedloom.runtime.loop import ServerLoop
from fedloom.topology.build import build_hierarchy
from fedloom.topology.config import TopologyKind
from fedloom.topology.gossip import GossipLoop, graph_links, mixing_matrix
from fedloom.topology.hierarchy import Aggregator, HierarchicalLoop
from fedloom.topology.tree import build_tree


def build_topology(cfg: RunConfig, *, data: FederatedData, model_fn: ModelFn,
                   layout: ParamLayout, fleet: FleetChoice | None, remote: bool = False,
                   checkpointer: Checkpointer | None
                   ) -> HierarchicalLoop | GossipLoop | ServerLoop:
    """The loop ``cfg.topology`` describes (see :func:`fedloom.app.build.build_run`): the
    whole hierarchy simulated over one fleet, or, with ``remote`` collaborators (a
    deployment), the root's own rounds over its aggregators on the remote fleet."""
    topo = cfg.topology
    assert topo is not None
    run_algorithm = cfg.algorithm.build(AlgorithmContext(
        num_examples=data.example_counts(), layout=layout))
    if is_async(run_algorithm):
        raise ConfigError(f"algorithm.name = {cfg.algorithm.name!r}: asynchronous algorithms "
                          "do not run in a topology (its aggregators work in rounds)")
    if topo.kind == TopologyKind.GOSSIP:
        return _gossip(cfg, data, model_fn, layout, run_algorithm, fleet, checkpointer)
    tree = build_tree(topo, num_clients=data.num_clients, seed=cfg.seed)
    root = build_hierarchy(tree, algorithm=cfg.algorithm, num_examples=data.example_counts(),
                           layout=layout, seed=cfg.seed, root_cohort=cfg.cohort.size,
                           state_dir=cfg.state_dir)
    if remote:
        return _remote_root(cfg, data, model_fn, root, fleet, checkpointer)
    leaves = _leaves(root)
    owner = {c: agg for agg in leaves for c in agg.node.clients}

    def personal(client_id: int, params: torch.Tensor) -> torch.Tensor:
        agg = owner.get(client_id)
        return params if agg is None else agg.algorithm.personal_params(client_id, params)

    clients_half = leaves[0].algorithm
    parts = assemble(data=data, model_fn=model_fn, algorithm=clients_half, seed=cfg.seed,
                     fleet=cfg.fleet if fleet is None else fleet, evaluation=cfg.eval,
                     reducible=False,
                     personal=personal if clients_half.personalized else None)
    return HierarchicalLoop(
        root=root, fleet=parts.fleet, evaluate=parts.evaluate, client=cfg.client,
        rounds=cfg.rounds, layout=parts.layout, initial_params=parts.initial_params,
        eval_every=cfg.eval.every, threads=cfg.fleet.threads, losses=parts.losses,
        checkpointer=checkpointer)


def _remote_root(cfg: RunConfig, data: FederatedData, model_fn: ModelFn, root: Aggregator,
                 fleet: FleetChoice | None, checkpointer: Checkpointer | None) -> ServerLoop:
    """The root of a deployed hierarchy: a server loop whose collaborators (its aggregators,
    each an edge program, or its clients) are the remote fleet's."""
    parts = assemble(data=data, model_fn=model_fn, algorithm=root.algorithm, seed=cfg.seed,
                     fleet=cfg.fleet if fleet is None else fleet, evaluation=cfg.eval,
                     reducible=False, client_ids=root.ids)
    return ServerLoop(
        algorithm=root.algorithm, fleet=parts.fleet, sampler=root.sampler,
        evaluate=parts.evaluate, client=cfg.client, rounds=cfg.rounds, layout=parts.layout,
        initial_params=parts.initial_params, seed=cfg.seed,
        min_success=root.node.config.min_success, eval_every=cfg.eval.every,
        threads=cfg.fleet.threads, losses=parts.losses if root.node.is_leaf else None,
        store=root.store, checkpointer=checkpointer)


def _leaves(root: Aggregator) -> list[Aggregator]:
    return [root] if root.node.is_leaf else [leaf for child in root.children
                                             for leaf in _leaves(child)]


def _gossip(cfg: RunConfig, data: FederatedData, model_fn: ModelFn, layout: ParamLayout,
            algorithm: Algorithm, fleet: FleetChoice | None,
            checkpointer: Checkpointer | None) -> GossipLoop:
    topo = cfg.topology
    assert topo is not None
    needs = algorithm.result_needs(layout)
    if needs.extras or needs.metrics or algorithm.personalized:
        raise ConfigError(f"algorithm.name = {cfg.algorithm.name!r}: gossip trains every node "
                          "with the plain exchange of models; this algorithm needs more from "
                          "its clients (choose fedavg or fedprox for the local objective)")
    links = graph_links(topo.graph, data.num_clients, degree=topo.degree, rows=topo.rows,
                        links=topo.links, seed=cfg.seed)
    parts = assemble(data=data, model_fn=model_fn, algorithm=algorithm, seed=cfg.seed,
                     fleet=cfg.fleet if fleet is None else fleet, evaluation=cfg.eval,
                     reducible=False)
    return GossipLoop(
        links=links, mixing=mixing_matrix(data.num_clients, links, topo.mixing),
        fleet=parts.fleet, evaluate=parts.evaluate, client=cfg.client, rounds=cfg.rounds,
        layout=parts.layout, initial_params=parts.initial_params, eval_every=cfg.eval.every,
        threads=cfg.fleet.threads, checkpointer=checkpointer)
