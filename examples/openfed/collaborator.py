"""What OpenFed's two collaborator programs share (alpha.py, beta.py import it)."""

import json
import sys

import torch
import torch.nn as nn

import fedloom.topology as topo
from fedloom.topology import Maintainer, device_alignment


def collaborate(name: str, instances: int) -> None:
    address = (topo.Address(init_method=f"tcp://localhost:{sys.argv[1]}")
               if len(sys.argv) > 1 else topo.default_tcp_address)
    aggregator = topo.Node('aggregator', address)
    alpha = topo.Node('alpha', topo.empty_address)
    beta = topo.Node('beta', topo.empty_address)

    topology = topo.Topology()
    topology.add_node_list([aggregator, alpha, beta])
    topology.add_edge(alpha, aggregator)
    topology.add_edge(beta, aggregator)

    # analysis topology to get federated group props
    federated_group_props = topo.analysis(topology, name)
    assert len(federated_group_props) == 1
    federated_group_prop = federated_group_props[0]

    # build network
    network = nn.Linear(10, 1)

    # build maintainer
    maintainer = Maintainer(federated_group_prop, network.state_dict(keep_vars=True))

    with maintainer:
        device_alignment()

    maintainer.step(upload=False)
    # train (not in OpenFed's example, which uploads what it downloaded): one SGD step on
    # this collaborator's own data, and say how many examples it holds
    gen = torch.Generator().manual_seed(instances)
    x, y = torch.randn(instances, 10, generator=gen), torch.randn(instances, 1, generator=gen)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    torch.nn.functional.mse_loss(network(x), y).backward()
    optimizer.step()
    maintainer.meta["instances"] = instances
    maintainer.package()
    maintainer.step(download=False)
    print(json.dumps({"name": name, "instances": instances,
                      "uploaded": {k: v.tolist() for k, v in network.state_dict().items()}}),
          flush=True)
