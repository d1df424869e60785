"""The aggregators of a hierarchy, built from its checked :class:`~fedloom.topology.tree.Tree`.

Every aggregator gets its own algorithm (its node's ``algorithm``, else the run's), its own
client-state store and sampler. The leaves' algorithms share one client half (the fleet trains
every client with it), so they must be configured alike; an aggregator above the leaves receives
its collaborators' models only, so its algorithm must not need anything else from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedloom.algorithms.client_store import make_store
from fedloom.algorithms.registry import AlgorithmConfig, AlgorithmContext
from fedloom.core.errors import ConfigError
from fedloom.core.layout import ParamLayout
from fedloom.topology.hierarchy import Aggregator, SubsetSampler
from fedloom.topology.tree import Tree


def build_hierarchy(tree: Tree, *, algorithm: AlgorithmConfig, num_examples: Sequence[int],
                    layout: ParamLayout, seed: int, root_cohort: int | None = None,
                    state_dir: str | None = None) -> Aggregator:
    """The root :class:`Aggregator` with every aggregator below it.

    Args:
        algorithm: the run's algorithm (the root's, and every node's without its own).
        num_examples: every client's example count.
        root_cohort: the root's cohort when its collaborators are the run's clients.
    """
    leaves = tree.leaves()
    configs = {n.name: n.config.algorithm or algorithm for n in leaves}
    first = configs[leaves[0].name]
    differ = [name for name, c in configs.items() if c != first]
    if differ:
        raise ConfigError(f"topology: the leaf aggregators' algorithms differ ({leaves[0].name!r}"
                          f" has {first.name}, {differ[0]!r} {configs[differ[0]].name} or other "
                          "options): their clients all train with one client half")

    def build(name: str) -> Aggregator:
        node = tree.nodes[name]
        cfg = node.config.algorithm or algorithm
        store = make_store(None if state_dir is None else str(Path(state_dir) / name),
                           len(num_examples))
        if node.is_leaf:
            ids = list(node.clients)
            own = set(ids)
            counts = [n if c in own else 0 for c, n in enumerate(num_examples)]
        else:
            ids = list(range(len(node.children)))
            counts = [sum(num_examples[c] for c in tree.clients_below(child))
                      for child in node.children]
        built = cfg.build(AlgorithmContext(num_examples=counts, layout=layout, store=store))
        if not node.is_leaf and (built.result_needs(layout).extras
                                 or built.result_needs(layout).metrics):
            raise ConfigError(f"topology: aggregator {name!r} runs {built.name}, which needs "
                              "more from each collaborator than its model; an aggregator "
                              "above others receives their models only")
        size = node.config.cohort or (root_cohort if name == tree.root and node.is_leaf
                                      else None) or len(ids)
        return Aggregator(node=node, algorithm=built, store=store, ids=ids,
                          sampler=SubsetSampler(ids, size=size, seed=seed, name=name),
                          children=[build(child) for child in node.children])

    return build(tree.root)
