"""Flat parameters: a model as one contiguous 1-D tensor plus a layout describing it.

Between components a model is a :class:`ParamLayout` (names, shapes, dtypes, offsets; trainable
parameters and buffers marked) and one flat tensor. Aggregation is then one operation over a
K x P matrix, shared memory is one segment, and the wire format is one buffer. Only the edges
(the user's ``nn.Module``, ``state_dict``) see per-tensor dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutEntry:
    """One tensor of the model inside the flat vector."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int
    trainable: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        return self.offset + self.numel


@dataclass(frozen=True, slots=True, kw_only=True)
class ParamLayout:
    """Where each named tensor of a model lives in its flat vector.

    Trainable parameters come first (in ``named_parameters`` order), then floating-point buffers.
    Non-floating buffers (such as batch norm's ``num_batches_tracked``) are stored in the flat
    vector too, as floats; they are exact up to 2**24.

    Example:
        >>> model = nn.Linear(3, 2)
        >>> layout = ParamLayout.from_module(model)
        >>> layout.size, layout.num_trainable
        (8, 8)
    """

    entries: tuple[LayoutEntry, ...]
    dtype: torch.dtype = torch.float32

    @classmethod
    def from_module(cls, module: nn.Module, dtype: torch.dtype = torch.float32) -> ParamLayout:
        entries: list[LayoutEntry] = []
        offset = 0
        named: list[tuple[str, torch.Tensor, bool]] = [
            (n, t, True) for n, t in module.named_parameters()
        ]
        named += [(n, t, False) for n, t in module.named_buffers()]
        for name, tensor, trainable in named:
            entry = LayoutEntry(name=name, shape=tuple(tensor.shape), dtype=tensor.dtype,
                                offset=offset, trainable=trainable)
            entries.append(entry)
            offset = entry.stop
        return cls(entries=tuple(entries), dtype=dtype)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor],
                     dtype: torch.dtype = torch.float32) -> ParamLayout:
        """The layout of named tensors in their order (a ``state_dict(keep_vars=True)``:
        tensors that require grad are the trainable ones)."""
        entries: list[LayoutEntry] = []
        offset = 0
        for name, tensor in tensors.items():
            entry = LayoutEntry(name=name, shape=tuple(tensor.shape), dtype=tensor.dtype,
                                offset=offset, trainable=bool(tensor.requires_grad))
            entries.append(entry)
            offset = entry.stop
        return cls(entries=tuple(entries), dtype=dtype)

    @property
    def size(self) -> int:
        return self.entries[-1].stop if self.entries else 0

    @property
    def num_trainable(self) -> int:
        return sum(e.numel for e in self.entries if e.trainable)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    def empty(self, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.empty(self.size, dtype=self.dtype, device=device)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One flat tensor from named tensors (a ``state_dict``)."""
        missing = [e.name for e in self.entries if e.name not in tensors]
        if missing:
            raise KeyError(f"missing tensors for layout entries: {missing}")
        flat = self.empty()
        for e in self.entries:
            flat[e.offset:e.stop].copy_(tensors[e.name].detach().reshape(-1))
        return flat

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named tensors (copies, original dtypes) from a flat tensor."""
        self.check(flat)
        return {e.name: flat[e.offset:e.stop].view(e.shape).to(e.dtype, copy=True)
                for e in self.entries}

    def check(self, flat: torch.Tensor) -> None:
        if flat.dim() != 1 or flat.shape[0] != self.size:
            raise ValueError(
                f"flat tensor has shape {tuple(flat.shape)}, layout needs ({self.size},)"
            )

    def module_to_flat(self, module: nn.Module) -> torch.Tensor:
        return self.flatten(dict(module.state_dict(keep_vars=False)))


class BoundModule:
    """A module whose floating tensors are views into one flat tensor.

    Loading a model is ``bound.flat.copy_(params)`` and reading it back is ``bound.flat``: no
    per-tensor copies. Optimisers step the parameters in place, so they step ``flat`` too.
    """

    def __init__(self, module: nn.Module, layout: ParamLayout) -> None:
        self.module = module
        self.layout = layout
        device = next(iter(module.parameters())).device
        self.flat = layout.empty(device)
        self._copied: list[tuple[nn.Module, str, LayoutEntry]] = []
        modules = dict(module.named_modules())
        with torch.no_grad():
            for e in layout.entries:
                owner_name, _, attr = e.name.rpartition(".")
                owner = modules[owner_name]
                view = self.flat[e.offset:e.stop].view(e.shape)
                if e.trainable:
                    param = owner._parameters[attr]
                    assert param is not None
                    view.copy_(param)
                    param.data = view
                elif e.dtype == layout.dtype:
                    buf = owner._buffers[attr]
                    assert buf is not None
                    view.copy_(buf)
                    owner._buffers[attr] = view
                else:
                    buf = owner._buffers[attr]
                    assert buf is not None
                    view.copy_(buf)
                    self._copied.append((owner, attr, e))

    def load(self, flat: torch.Tensor) -> None:
        """Set the module's tensors from a flat tensor."""
        with torch.no_grad():
            self.flat.copy_(flat)
            for owner, attr, e in self._copied:
                buf = owner._buffers[attr]
                assert buf is not None
                buf.copy_(self.flat[e.offset:e.stop].view(e.shape))

    def read(self) -> torch.Tensor:
        """The module's tensors as the flat tensor (a live view; clone to keep it)."""
        with torch.no_grad():
            for owner, attr, e in self._copied:
                buf = owner._buffers[attr]
                assert buf is not None
                self.flat[e.offset:e.stop].copy_(buf.reshape(-1))
        return self.flat
