"""Secure aggregation: the server learns the sum of the cohort's updates and nothing else.

The protocol of Bonawitz et al. (CCS 2017) with the sparse neighbour graph of SecAgg+ (Bell et
al., CCS 2020), for an honest-but-curious server. Each client's input is its update, clipped,
quantised into the ring ``Z_{2^r}`` and pre-scaled by its example count, with the count
appended (:mod:`~fedloom.secagg.ring`). The round has four stages (:class:`Stage`):

1. ``advertise_keys``: each client sends two X25519 public keys.
2. ``share_keys``: each client Shamir-shares its self-mask seed and its mask secret key among
   its neighbours (threshold ``t``), each share encrypted for its holder and routed by the
   server.
3. ``masked_input``: each client sends ``input + PRG(b) + sum_v +-PRG(agree(s_u, s_v))``.
4. ``unmask``: survivors reveal shares of the seeds of the clients that sent an input and of
   the mask keys of those that did not; the server rebuilds them and removes every mask.

:class:`ClientSession` and :class:`ServerSession` speak in flat messages (numbers and tensors)
and know nothing of where they run: :func:`run_in_memory` passes the messages in one process
(simulation, with dropouts at any stage and the cost of each stage), and the gRPC fleet
(:mod:`fedloom.fleets.secagg`) sends them to real clients.

Example:
    >>> setup = RoundSetup.make(SecAggConfig(enabled=True), cohort=[0, 1, 2], round=1,
    ...                         seed=0, update_size=2)
    >>> inputs = {c: encode(torch.tensor([0.25, -0.5]), 2, setup.quantizer) for c in (0, 1, 2)}
    >>> out = run_in_memory(setup, inputs).sum
    >>> out.total.round(decimals=4), out.count
    (tensor([ 1.5000, -3.0000], dtype=torch.float64), 6)
"""

from fedloom.secagg.client import ClientSession
from fedloom.secagg.config import Quantizer, SecAggConfig
from fedloom.secagg.graph import RoundSetup, neighbour_graph
from fedloom.secagg.messages import PROTOCOL_STAGES, Stage
from fedloom.secagg.ring import decode_sum, encode
from fedloom.secagg.server import SecureSum, ServerSession
from fedloom.secagg.simulate import InMemoryRound, StageCost, run_in_memory

__all__ = ["PROTOCOL_STAGES", "ClientSession", "InMemoryRound", "Quantizer", "RoundSetup",
           "SecAggConfig", "SecureSum", "ServerSession", "Stage", "StageCost", "decode_sum",
           "encode", "neighbour_graph", "run_in_memory"]
