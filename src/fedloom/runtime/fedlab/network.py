"""FedLab's ``DistNetwork``: point-to-point messages of tensors over ``torch.distributed``.

Example (one server process and two client processes, each its own program)::

    network = DistNetwork(address=("127.0.0.1", 3001), world_size=3, rank=0)
    network.init_network_connection()
    network.send(content=[params], message_code=MessageCode.ParameterUpdate, dst=1)
    sender, code, content = network.recv()          # from any rank
    network.close_network_connection()

Without ``address``, ``world_size`` and ``rank`` the values come from ``torchrun``'s environment
(``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``; the group then joins through
``env://``). ``dist_backend="gloo"`` keeps content on the CPU; ``"nccl"`` moves it to the
rank's GPU (``cuda:LOCAL_RANK`` unless ``device`` says otherwise) and sends the small headers
through a gloo group, since NCCL cannot receive from an unknown sender. Collectives and
receives time out after ``FEDLOOM_DIST_TIMEOUT`` seconds (600 by default).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist

from fedloom.core.errors import ConfigError, TransportError
from fedloom.fleets.dist_env import timeout
from fedloom.runtime.fedlab.codes import MessageCode
from fedloom.runtime.fedlab.wire import (
    BODY_TAG,
    HEADER_SIZE,
    HEADER_TAG,
    Content,
    as_code,
    as_tensor_list,
    decode_body,
    decode_header,
    encode,
)

log = logging.getLogger(__name__)

BACKENDS = ("gloo", "nccl")


def _env_int(name: str, given: int | None) -> int:
    if given is not None:
        return int(given)
    raw = os.environ.get(name)
    if raw is None:
        raise ConfigError(f"DistNetwork: {name.lower()} not given and ${name} unset; pass it "
                          "or launch with torchrun")
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"DistNetwork: ${name} = {raw!r} is not an integer") from None


class DistNetwork:
    """One rank's end of a FedLab-style network (see the module doc).

    Args:
        address: ``(ip, port)`` of rank 0; None: torchrun's ``MASTER_ADDR``/``MASTER_PORT``.
        world_size: the server and every client process; None: ``$WORLD_SIZE``.
        rank: this process (0 is the server); None: ``$RANK``.
        ethernet: network interface to use (``GLOO_SOCKET_IFNAME``/``NCCL_SOCKET_IFNAME``).
        dist_backend: ``"gloo"`` (content on the CPU) or ``"nccl"`` (content on a GPU).
        device: the GPU for ``"nccl"`` (default ``cuda:LOCAL_RANK``).

    Attributes:
        send_volume_intotal: bytes of content sent (FedLab's name).
        recv_volume_intotal: bytes of content received.
    """

    def __init__(self, address: tuple[str, int | str] | None = None,
                 world_size: int | None = None, rank: int | None = None,
                 ethernet: str | None = None, dist_backend: str = "gloo", *,
                 device: str | torch.device | None = None) -> None:
        self.address = address
        self.world_size = _env_int("WORLD_SIZE", world_size)
        self.rank = _env_int("RANK", rank)
        self.ethernet = ethernet
        self.dist_backend = str(dist_backend).lower()
        if self.world_size < 2 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"DistNetwork: rank {self.rank} in world_size {self.world_size}: "
                              "need world_size >= 2 (a server and a client process) and "
                              "0 <= rank < world_size")
        if self.dist_backend not in BACKENDS:
            raise ConfigError(f"DistNetwork: dist_backend = {dist_backend!r}: must be one of "
                              f"{', '.join(BACKENDS)}")
        self.device = self._device(device)
        self.send_volume_intotal = 0
        self.recv_volume_intotal = 0
        self._control: dist.ProcessGroup | None = None  # the headers' group under NCCL
        self._owns_group = False

    def _device(self, device: str | torch.device | None) -> torch.device:
        if self.dist_backend == "gloo":
            if device is not None and torch.device(device).type != "cpu":
                raise ConfigError(f"DistNetwork: device = {device!r} with gloo; gloo sends "
                                  "CPU tensors (use dist_backend='nccl' for a GPU)")
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ConfigError("DistNetwork: dist_backend = 'nccl' needs CUDA, which is not "
                              "available here; use 'gloo'")
        if device is not None:
            return torch.device(device)
        local = int(os.environ.get("LOCAL_RANK", self.rank))
        return torch.device("cuda", local % torch.cuda.device_count())

    def __str__(self) -> str:
        where = "env://" if self.address is None else f"{self.address[0]}:{self.address[1]}"
        return (f"DistNetwork(rank {self.rank} of {self.world_size}, {where}, "
                f"{self.dist_backend} on {self.device}, ethernet {self.ethernet})")

    # ---- connection ----------------------------------------------------------------------

    def init_network_connection(self) -> None:
        """Join the process group (every rank calls this; it returns when all have joined)."""
        if dist.is_initialized():  # a group the caller made (torchrun scripts often do)
            self._check_world()
        else:
            if self.ethernet is not None:
                os.environ["GLOO_SOCKET_IFNAME"] = os.environ["NCCL_SOCKET_IFNAME"] = \
                    self.ethernet
            # see fedloom.fleets.dist_env.init_group: torch._dynamo must be imported before
            # the group exists, or the group outlives destroy_process_group
            import torch._dynamo
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            init = "env://" if self.address is None else \
                f"tcp://{self.address[0]}:{self.address[1]}"
            with self._failures("joining the process group"):
                dist.init_process_group(self.dist_backend, init_method=init, rank=self.rank,
                                        world_size=self.world_size, timeout=timeout())
            self._owns_group = True
        if self.dist_backend == "nccl":
            with self._failures("making the gloo group for headers"):
                self._control = dist.new_group(backend="gloo")
        log.info("%s connected", self)

    def _check_world(self) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        if (rank, world) != (self.rank, self.world_size):
            raise ConfigError(f"DistNetwork: rank {self.rank} of {self.world_size}, but the "
                              f"existing process group has rank {rank} of {world}")

    def close_network_connection(self) -> None:
        """Leave the process group (destroyed only when this network made it)."""
        log.info("rank %d: sent %d bytes, received %d bytes", self.rank,
                 self.send_volume_intotal, self.recv_volume_intotal)
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False
        self._control = None

    @contextmanager
    def _failures(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, ValueError) as err:  # torch.distributed's errors and timeouts
            raise TransportError(f"DistNetwork rank {self.rank}: {what} failed; the peer "
                                 f"probably stopped or timed out: {err}") from err

    # ---- messages --------------------------------------------------------------------------

    def send(self, content: Content = None, message_code: MessageCode | int | None = None,
             dst: int = 0) -> None:
        """Send ``content`` (a tensor, a list of tensors or None) with ``message_code`` to
        rank ``dst``; returns when ``dst`` has it."""
        code = as_code(message_code)
        tensors = as_tensor_list(content)
        if not 0 <= dst < self.world_size or dst == self.rank:
            raise ValueError(f"DistNetwork.send: dst = {dst} from rank {self.rank}: must be "
                             f"another rank in [0, {self.world_size})")
        header, body = encode(code, tensors, self.device)
        with self._failures(f"sending {code.name} to rank {dst}"):
            dist.send(header, dst=dst, group=self._control, tag=HEADER_TAG)
            if body is not None:
                dist.send(body, dst=dst, tag=self._body_tag)
        if body is not None:
            self.send_volume_intotal += body.numel()
        log.debug("rank %d -> %d: %s, %d tensors", self.rank, dst, code.name, len(tensors))

    def recv(self, src: int | None = None
             ) -> tuple[int, MessageCode, list[torch.Tensor] | None]:
        """The next message from ``src`` (None: from any rank) as FedLab returns it:
        ``(sender_rank, message_code, content)``, content None when it has no tensors."""
        header = torch.empty(HEADER_SIZE, dtype=torch.int64)
        with self._failures("receiving a header" if src is None
                            else f"receiving a header from rank {src}"):
            sender = int(dist.recv(header, src=src, group=self._control, tag=HEADER_TAG))
        code, body_len, count = decode_header(header, sender=sender, receiver=self.rank)
        if body_len == 0:
            return sender, code, None
        body = torch.empty(body_len, dtype=torch.uint8, device=self.device)
        with self._failures(f"receiving {code.name} from rank {sender}"):
            dist.recv(body, src=sender, tag=self._body_tag)
        self.recv_volume_intotal += body_len
        tensors = decode_body(body, code=code, count=count, sender=sender, receiver=self.rank)
        log.debug("rank %d <- %d: %s, %d tensors", self.rank, sender, code.name, count)
        return sender, code, tensors

    @property
    def _body_tag(self) -> int:
        return BODY_TAG if self.dist_backend == "gloo" else 0  # NCCL has no tags

    def broadcast_send(self, content: Content = None,
                       message_code: MessageCode | int | None = None,
                       dst: Sequence[int] | None = None) -> None:
        """The same message to each rank of ``dst`` (default: every other rank)."""
        for rank in range(self.world_size) if dst is None else dst:
            if rank != self.rank:
                self.send(content, message_code, dst=rank)

    def broadcast_recv(self, src: Sequence[int] | None = None
                       ) -> tuple[list[int], list[MessageCode], list[list[torch.Tensor] | None]]:
        """One message from each rank of ``src`` (default: every other rank), in that order."""
        senders: list[int] = []
        codes: list[MessageCode] = []
        contents: list[list[torch.Tensor] | None] = []
        for rank in range(self.world_size) if src is None else src:
            if rank != self.rank:
                sender, code, content = self.recv(src=rank)
                senders.append(sender)
                codes.append(code)
                contents.append(content)
        return senders, codes, contents
