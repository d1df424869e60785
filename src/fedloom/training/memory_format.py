"""Channels-last training: the trainer's working order for 4-d weights, layout order outside.

A :class:`~fedloom.core.layout.BoundModule` makes a model's tensors views into one flat buffer
in layout order, where a convolution weight of shape ``(O, I, H, W)`` is contiguous. oneDNN
trains convolutions faster on CPU in the channels-last format, whose memory order is
``(O, H, W, I)``. :class:`WorkingModel` rebinds each trainable 4-d weight to the same slice of
the flat buffer viewed in that order (``view(O, H, W, I).permute(0, 3, 1, 2)``: the logical shape
is unchanged, only strides differ), so the optimiser still steps one flat buffer in place. Only
the trainer's working buffers are in this *working order*; everything it receives or returns
(the downlink's parameters, its result, a gradient handed to an algorithm, the flat views a
gradient hook reads) is in layout order, converted at the boundary by a permuted copy of the
4-d slices alone (52,000 of the W2 CNN's 1.66 million values). Aggregation, the wire format,
checkpoints, SecAgg and compression never see the working order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from fedloom.algorithms.base import LocalSpec
from fedloom.core.errors import ConfigError
from fedloom.core.layout import BoundModule, LayoutEntry, ParamLayout
from fedloom.core.packages import MemoryFormat

log = logging.getLogger(__name__)


#: layers ``auto`` trains in channels-last: those of the W2 CNN, measured faster so and checked
#: against float64 gradients, and layout-agnostic ones. Others stay contiguous under ``auto``:
#: normalisation layers especially (torch 2.13's CPU GroupNorm backward on a channels-last input
#: that needs no gradient writes out of bounds: wrong gradients, then a crash).
AUTO_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
    nn.ReLU, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Dropout, nn.Identity)

#: layers channels-last is refused for on CPU, even when asked for (see above)
BROKEN_LAYERS: tuple[type[nn.Module], ...] = (nn.GroupNorm,)


def wants_channels_last(setting: MemoryFormat, *, module: nn.Module, device: torch.device,
                        local: LocalSpec) -> bool:
    """Whether a trainer trains in channels-last for ``client.memory_format = setting``.

    ``auto`` picks it on CPU for models with 4-d weights built only of :data:`AUTO_LAYERS` (the
    W2 CNN trains faster so: benchmarks/bench_process.py) unless the algorithm runs DP-SGD,
    whose per-example gradients and noise stay in layout order. ``channels_last`` is refused by
    name with DP-SGD, and on CPU for models with :data:`BROKEN_LAYERS`.
    """
    has_convs = any(p.dim() == 4 for p in module.parameters())
    if setting == MemoryFormat.CONTIGUOUS or not has_convs:
        return False
    leaves = [m for m in module.modules() if not list(m.children())]
    if setting == MemoryFormat.CHANNELS_LAST:
        problems = []
        if local.per_example is not None:
            problems.append("DP-SGD (per-example clipping) trains in the contiguous format")
        broken = sorted({type(m).__name__ for m in leaves if isinstance(m, BROKEN_LAYERS)})
        if broken and device.type == "cpu":
            problems.append(f"{', '.join(broken)} computes wrong gradients in channels-last on "
                            f"CPU (torch {torch.__version__})")
        if problems:
            raise ConfigError([f"client.memory_format = 'channels_last': {p}; use auto or "
                               f"contiguous" for p in problems])
        return True
    return (device.type == "cpu" and local.per_example is None
            and all(isinstance(m, AUTO_LAYERS) for m in leaves))


def _working_view(segment: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A 4-d weight of logical ``shape`` over ``segment`` stored in channels-last order."""
    out_c, in_c, height, width = shape
    return segment.view(out_c, height, width, in_c).permute(0, 3, 1, 2)


class WorkingModel:
    """A bound module whose trainable 4-d weights can live in channels-last order.

    Args:
        bound: the module bound to its flat buffer (layout order to start with).
        params: the module's trainable parameters, in layout order.
    """

    def __init__(self, bound: BoundModule, params: Sequence[nn.Parameter]) -> None:
        self.bound = bound
        self.layout: ParamLayout = bound.layout
        trainable = [e for e in self.layout.entries if e.trainable]
        self.params = list(params)
        self.convs: list[tuple[LayoutEntry, nn.Parameter]] = [
            (e, p) for e, p in zip(trainable, self.params, strict=True) if len(e.shape) == 4]
        self.channels_last = False
        self._out: torch.Tensor | None = None  # read()'s layout-order buffer (channels-last)

    def use(self, channels_last: bool) -> None:
        """Rebind the 4-d weights in the chosen order, keeping their values."""
        if channels_last == self.channels_last:
            return
        flat = self.bound.flat
        with torch.no_grad():
            for e, p in self.convs:
                values = p.detach().clone()
                segment = flat[e.offset:e.stop]
                view = _working_view(segment, e.shape) if channels_last else segment.view(e.shape)
                view.copy_(values)
                p.data = view
        self.channels_last = channels_last

    def grad_view(self, grads: torch.Tensor, e: LayoutEntry) -> torch.Tensor:
        """Entry ``e``'s gradient as a view of the flat gradient buffer, ordered as its
        parameter is."""
        segment = grads[e.offset:e.stop]
        if self.channels_last and len(e.shape) == 4:
            return _working_view(segment, e.shape)
        return segment.view(e.shape)

    def load(self, flat: torch.Tensor) -> None:
        """Set the module from flat parameters in layout order."""
        self.bound.load(flat)
        if self.channels_last:
            with torch.no_grad():
                for e, p in self.convs:
                    p.copy_(flat[e.offset:e.stop].view(e.shape))

    def read(self) -> torch.Tensor:
        """The module's tensors as a flat tensor in layout order (a live buffer: clone it)."""
        flat = self.bound.read()
        if not self.channels_last:
            return flat
        if self._out is None:
            self._out = torch.empty_like(flat)
        self._out.copy_(flat)
        with torch.no_grad():
            for e, p in self.convs:
                self._out[e.offset:e.stop].view(e.shape).copy_(p)
        return self._out

    def to_layout_order(self, flat: torch.Tensor) -> None:
        """Permute the 4-d slices of a working-order flat buffer into layout order, in place."""
        if self.channels_last:
            for e, _ in self.convs:
                segment = flat[e.offset:e.stop]
                segment.copy_(_working_view(segment, e.shape).contiguous().view(-1))

    def to_working_order(self, flat: torch.Tensor) -> None:
        """The inverse of :meth:`to_layout_order`, in place."""
        if self.channels_last:
            for e, _ in self.convs:
                segment = flat[e.offset:e.stop]
                segment.copy_(segment.view(e.shape).permute(0, 2, 3, 1).contiguous().view(-1))

    def layout_copy(self, flat: torch.Tensor) -> torch.Tensor:
        """A copy of a working-order flat buffer, in layout order."""
        out = flat.clone()
        self.to_layout_order(out)
        return out

    def input(self, x: torch.Tensor) -> torch.Tensor:
        """A batch in the format the module trains in."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def check_forward(self, module: nn.Module, x: torch.Tensor, *, explicit: bool) -> None:
        """Try one forward in channels-last (inference mode, the module's state untouched).
        A forward that cannot take channels-last activations (``.view`` on one) switches the
        trainer back to layout order under ``auto`` and is a :class:`ConfigError` when
        channels-last was asked for."""
        if not self.channels_last or x.dim() != 4:
            return
        training = module.training
        module.eval()
        try:
            with torch.no_grad():
                module(self.input(x))
        except RuntimeError as exc:
            if explicit:
                raise ConfigError([f"client.memory_format = 'channels_last': the model's "
                                   f"forward fails on channels-last input ({exc}); use auto "
                                   f"or contiguous"]) from None
            log.debug("training in the default layout: channels_last failed (%s)", exc)
            self.use(False)
        finally:
            module.train(training)
