"""Topologies: OpenFed's nodes, edges and federated groups; hierarchical FL (clients ->
aggregators -> a root, any depth) and decentralized gossip, in simulation and over gRPC.

OpenFed's names are here, as in ``openfed.topo`` and ``openfed.core``: :class:`Node`,
:class:`Edge`, :class:`Topology`, :func:`analysis`, :class:`Address`, ``default_tcp_address``,
``empty_address``, and (imported on first use, they load gRPC) :class:`Maintainer`,
:func:`count_step`, :func:`period_step`, :func:`device_alignment`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedloom.topology.graph import (
    Address,
    Edge,
    FederatedGroup,
    Node,
    Role,
    Topology,
    analysis,
    default_tcp_address,
    empty_address,
)

if TYPE_CHECKING:
    from fedloom.topology.maintainer import (
        Maintainer,
        count_step,
        device_alignment,
        period_step,
    )

_LAZY = {"Maintainer", "count_step", "device_alignment", "period_step"}

__all__ = ["Address", "Edge", "FederatedGroup", "Maintainer", "Node", "Role", "Topology",
           "analysis", "count_step", "default_tcp_address", "device_alignment",
           "empty_address", "period_step"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'fedloom.topology' has no attribute {name!r}")
    return getattr(importlib.import_module("fedloom.topology.maintainer"), name)
