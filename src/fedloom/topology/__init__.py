"""Topologies: OpenFed's nodes, edges and federated groups; hierarchical FL (clients ->
aggregators -> a root, any depth) and decentralized gossip, in simulation and over gRPC."""
