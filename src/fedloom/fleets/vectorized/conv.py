"""Convolutions of K clients: grouped (torch.func's own rule) or one client after another.

Under ``vmap``, a convolution whose weight differs per client becomes one grouped convolution
(the K clients' channels side by side, ``groups=K``). On CPU that is as fast as K separate
convolutions for wide layers but about twice as slow for a layer with one input channel (the
CNN's first layer), and the moves between the two layouts cost extra copies. Such layers can run
as a loop over the clients instead: the layer's ``_conv_forward`` is replaced by an autograd
function whose batching rule calls ``conv2d`` (and its backward) once per client. The rest of
the model stays batched. Both are the same arithmetic per client; tests compare them.

Measured on W2 (the FedAvg CNN on MNIST, 10 clients x 60 steps, 2 threads, a quiet run of
``benchmarks/bench_vectorized.py --workloads W2 --conv auto grouped --chunks 0 2``), as a ratio
to the serial fleet: all grouped 0.95x, ``auto`` (first layer looped) 1.00x, ``auto`` with
``fleet.chunk=2`` 1.10x (smaller stacks keep the activations in cache). The CNN is compute bound
on CPU, so batching it gains little; a GPU is where grouped convolutions pay.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

Conf = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int]  # stride, pad, dil, groups


class ConvMode(StrEnum):
    GROUPED = "grouped"  # torch.func's batching rule: one grouped convolution
    LOOP = "loop"  # one convolution per client
    AUTO = "auto"  # loop for layers with few input channels per group on CPU, else grouped


def _batched(t: torch.Tensor | None, dim: int | None, n: int) -> torch.Tensor | None:
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(n, *t.shape)


class _ConvBackward(torch.autograd.Function):
    """Input, weight and bias gradients of a convolution; batched as a loop over clients."""

    generate_vmap_rule = False

    @staticmethod
    def forward(gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, conf: Conf,
                mask: tuple[bool, bool, bool]) -> tuple[torch.Tensor, ...]:
        stride, padding, dilation, groups = conf
        out: tuple[torch.Tensor, ...] = torch.ops.aten.convolution_backward(
            gy, x, w, [w.shape[0]], stride, padding, dilation, False, [0] * len(stride),
            groups, list(mask))
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError("vectorized fleet: convolutions are differentiated once only")

    @staticmethod
    def vmap(info: Any, in_dims: Any, gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
             conf: Conf, mask: tuple[bool, bool, bool]) -> Any:
        n = info.batch_size
        gy_, x_, w_ = (_batched(t, d, n) for t, d in zip((gy, x, w), in_dims[:3]))
        assert gy_ is not None and x_ is not None and w_ is not None
        parts = [_ConvBackward.forward(gy_[k], x_[k], w_[k], conf, mask) for k in range(n)]
        stacked = tuple(torch.stack([p[i] for p in parts]) if mask[i] else None
                        for i in range(3))
        return stacked, tuple(0 if m else None for m in mask)


class _Conv(torch.autograd.Function):
    """``F.conv2d`` (any dimension) whose batching rule is a loop over the clients."""

    generate_vmap_rule = False

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                conf: Conf) -> torch.Tensor:
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[w.dim() - 2]
        out: torch.Tensor = fn(x, w, b, *conf)
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: Any, output: Any) -> None:
        x, w, b, conf = inputs
        ctx.save_for_backward(x, w)
        ctx.conf = conf
        ctx.mask = (x.requires_grad, True, b is not None)

    @staticmethod
    def backward(ctx: Any, gy: torch.Tensor) -> Any:
        x, w = ctx.saved_tensors
        gx, gw, gb = _ConvBackward.apply(  # type: ignore[no-untyped-call]
            gy, x, w, ctx.conf, ctx.mask)
        return gx, gw, gb, None

    @staticmethod
    def vmap(info: Any, in_dims: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
             conf: Conf) -> Any:
        n = info.batch_size
        x_, w_, b_ = (_batched(t, d, n) for t, d in zip((x, w, b), in_dims[:3]))
        assert x_ is not None and w_ is not None
        outs = [_Conv.forward(x_[k], w_[k], None if b_ is None else b_[k], conf)
                for k in range(n)]
        return torch.stack(outs), 0


def _loop_conv_forward(self: nn.Conv2d, input: torch.Tensor, weight: torch.Tensor,
                       bias: torch.Tensor | None) -> torch.Tensor:
    conf = (tuple(self.stride), tuple(self.padding), tuple(self.dilation), self.groups)
    out: torch.Tensor = _Conv.apply(input, weight, bias, conf)  # type: ignore[no-untyped-call]
    return out


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def loopable(module: nn.Module) -> bool:
    """A plain convolution with zero padding given as numbers (what the loop rule handles)."""
    return (type(module) in _CONVS and isinstance(module, nn.modules.conv._ConvNd)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str))


def wants_loop(module: nn.modules.conv._ConvNd, mode: ConvMode, device: torch.device) -> bool:
    """Whether ``mode`` runs this layer as a loop over clients.

    ``auto`` loops on CPU when a group has fewer than 4 input channels (measured on the CNN's
    first layer: grouped 2x slower than the loop; its second, 32 channels: the same speed).
    """
    if mode == ConvMode.LOOP:
        return True
    if mode == ConvMode.GROUPED:
        return False
    return device.type == "cpu" and module.in_channels // module.groups < 4


def use_loop_convolutions(model: nn.Module, mode: ConvMode, device: torch.device) -> list[str]:
    """Make the chosen convolutions of ``model`` (a private copy) loop over clients under vmap;
    returns their names."""
    chosen = []
    for name, module in model.named_modules():
        if loopable(module) and isinstance(module, nn.modules.conv._ConvNd) \
                and wants_loop(module, mode, device):
            module._conv_forward = _loop_conv_forward.__get__(module)  # type: ignore[method-assign]
            chosen.append(name)
    return chosen
