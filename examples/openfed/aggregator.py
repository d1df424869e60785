"""OpenFed's aggregator example (OpenFed docs, "Core: Maintainer"), on fedloom.

Ported with its imports changed (``openfed.topo`` -> ``fedloom.topology``, ``openfed.core`` and
``openfed.functional`` -> ``fedloom.topology``); the address may be given as ``PORT`` (OpenFed's
default is tcp://localhost:1994). It prints the model it aggregated, as JSON.
"""

import json
import sys

import torch.nn as nn

import fedloom.topology as topo
from fedloom.topology import Maintainer, count_step, device_alignment

address = (topo.Address(init_method=f"tcp://localhost:{sys.argv[1]}") if len(sys.argv) > 1
           else topo.default_tcp_address)

aggregator = topo.Node('aggregator', address)
alpha = topo.Node('alpha', topo.empty_address)
beta = topo.Node('beta', topo.empty_address)

topology = topo.Topology()
topology.add_node_list([aggregator, alpha, beta])
topology.add_edge(alpha, aggregator)
topology.add_edge(beta, aggregator)

# analysis topology to get federated group props
federated_group_props = topo.analysis(topology, aggregator)
assert len(federated_group_props) == 1
federated_group_prop = federated_group_props[0]

# build network
network = nn.Linear(10, 1)

# build maintainer
maintainer = Maintainer(federated_group_prop, network.state_dict(keep_vars=True))

with maintainer:
    device_alignment()
    count_step(2)

maintainer.step()

print(json.dumps({"aggregated": {k: v.tolist() for k, v in network.state_dict().items()},
                  "uploads": maintainer.meta_list}), flush=True)
