"""Where a rank of the distributed fleet stands: rank, world, device, backend, process group.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``; the process group is initialised from them (``env://``) with a finite timeout:
``FEDLOOM_DIST_TIMEOUT`` seconds, 600 by default. A process group the caller initialised already
is used as it is and left open at the end. There is no implicit world of one: without torchrun's
variables ``fleet.kind=distributed`` is a :class:`ConfigError` saying how to launch it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from fedloom.core.errors import ConfigError
from fedloom.fleets.config import FleetConfig

DEFAULT_TIMEOUT_S = 600.0
LAUNCH = ("launch it with torchrun, e.g. `torchrun --nproc_per_node=2 -m fedloom run CONFIG "
          "fleet.kind=distributed` (--nproc_per_node=1 for a single process), or choose "
          "another fleet.kind")


@dataclass(frozen=True, slots=True, kw_only=True)
class DistEnv:
    """One rank's place in the world and the device its clients and collectives use."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def _int_env(name: str) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"fleet.kind = 'distributed': environment variable {name} = "
                          f"{value!r} is not an integer; {LAUNCH}") from None


def choose_device(devices: str | None, local_rank: int) -> torch.device:
    """``fleet.devices`` round-robin by local rank; default one GPU per rank, else the CPU."""
    if devices:
        names = [d.strip() for d in devices.split(",") if d.strip()]
        kinds = {n.split(":")[0] for n in names}
        if not names or len(kinds) > 1:
            raise ConfigError(f"fleet.devices = {devices!r}: give one kind of device for "
                              "every rank (all cpu or all cuda:N)")
        name = names[local_rank % len(names)]
    elif torch.cuda.is_available():
        name = f"cuda:{local_rank % torch.cuda.device_count()}"
    else:
        name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"fleet.devices = {devices!r}: {name!r} is not a device") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"fleet.devices = {devices!r}: {name!r}: the distributed fleet runs "
                          "on cpu (gloo) or cuda (NCCL)")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"fleet.devices = {devices!r}: CUDA is not available here")
        device = torch.device("cuda", device.index if device.index is not None
                              else local_rank % torch.cuda.device_count())
    return device


def read_env(cfg: FleetConfig) -> DistEnv:
    """This rank's environment, from an initialised process group or from torchrun's variables."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
                   if v not in os.environ]
        if missing:
            raise ConfigError(f"fleet.kind = 'distributed': no torch.distributed environment "
                              f"({', '.join(missing)} unset); {LAUNCH}")
        if not dist.is_available():
            raise ConfigError("fleet.kind = 'distributed': this torch build has no "
                              "torch.distributed")
        rank, world = _int_env("RANK"), _int_env("WORLD_SIZE")
    local_rank = _int_env("LOCAL_RANK") if "LOCAL_RANK" in os.environ else rank
    local_world = _int_env("LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in os.environ else world
    return DistEnv(rank=rank, world_size=world, local_rank=local_rank,
                   local_world_size=local_world, device=choose_device(cfg.devices, local_rank))


def timeout() -> timedelta:
    """The collectives' timeout: ``FEDLOOM_DIST_TIMEOUT`` seconds (default 600)."""
    raw = os.environ.get("FEDLOOM_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"FEDLOOM_DIST_TIMEOUT = {raw!r}: must be a number of seconds > 0")
    return timedelta(seconds=seconds)


def init_group(env: DistEnv) -> bool:
    """Join the process group (unless one exists); True when this call created it."""
    if dist.is_initialized():
        return False
    # torch._dynamo (imported by the first torch.optim optimiser) keeps ~10 references to a
    # default group that exists when it is imported (seen with torch 2.13): the group then
    # survives destroy_process_group, gloo's threads outlive the interpreter and, under load,
    # abort it at exit ("terminate called without an active exception"). Importing it before
    # the group exists avoids that; the import is paid once either way.
    import torch._dynamo
    if env.device.type == "cuda":
        torch.cuda.set_device(env.device)
    dist.init_process_group(env.backend, timeout=timeout(), rank=env.rank,
                            world_size=env.world_size,
                            device_id=env.device if env.device.type == "cuda" else None)
    return True
