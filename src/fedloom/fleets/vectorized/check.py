"""What the vectorized fleet can train: layers are checked once, when the fleet is built.

Stacking K clients' parameters and running one batched computation is only right when a client's
forward depends on nothing but its own parameters and its own examples. So a model is refused,
with a :class:`ConfigError` naming the layer, when a layer

- updates buffers in its forward (batch norm's running statistics, any hand-written state),
- normalises with statistics of the whole batch (batch norm in training mode: the zero-weight
  padding of a client's last partial batch would change them), or
- draws random numbers (dropout: there is one global generator, not one per client).

Known layers are refused by type; anything else is caught by a probe that runs one training
forward on a copy of the model and watches every module's buffers and the global generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.modules.instancenorm import _InstanceNorm

from fedloom.core.errors import ConfigError

_ADVICE = "use fleet.kind = 'serial' or 'process'"

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _prefix(name: str, module: nn.Module) -> str:
    where = f"layer {name!r}" if name else "the model's own forward"
    return f"fleet.kind = 'vectorized': {where} ({type(module).__name__})"


def static_problem(name: str, module: nn.Module) -> str | None:
    """Why a layer of a known type cannot be vectorized, or None."""
    if isinstance(module, _BatchNorm):
        what = ("updates running statistics in training mode" if module.track_running_stats
                else "normalises with statistics of the whole batch, which masked examples "
                     "would change")
        return f"{_prefix(name, module)} {what}; {_ADVICE}"
    if isinstance(module, _InstanceNorm) and module.track_running_stats:
        return f"{_prefix(name, module)} updates running statistics in training mode; {_ADVICE}"
    p = getattr(module, "p", None) if isinstance(module, _DropoutNd) else \
        getattr(module, "dropout", None)
    if isinstance(p, float) and p > 0:
        return (f"{_prefix(name, module)} draws random masks (p = {p}) from one global "
                f"generator, not one per client; {_ADVICE}")
    return None


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one probing forward and backward found.

    Attributes:
        frozen: parameters with ``requires_grad`` False.
        unused: trainable parameters the task loss gives no gradient. The serial loop leaves
            both alone (no weight decay, no momentum), so the vectorized loop must too.
    """

    frozen: frozenset[str]
    unused: frozenset[str]


def check_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                loss_fn: LossFn) -> ProbeResult:
    """Refuse what cannot be vectorized correctly (see the module docstring).

    ``model`` is changed (a training step's forward and backward are run on it): pass a copy.

    Raises:
        ConfigError: naming the first offending layer and what it does.
    """
    for name, module in model.named_modules():
        problem = static_problem(name, module)
        if problem is not None:
            raise ConfigError(problem)
    found: list[str] = []
    model.train()
    with torch.random.fork_rng(devices=[]):
        handles = [_watch(name, module, found) for name, module in model.named_modules()]
        try:
            loss = loss_fn(model(x), y)
        finally:
            for pre, post in handles:
                pre.remove()
                post.remove()
    if found:
        raise ConfigError(found[0])
    params = dict(model.named_parameters())
    trainable = [n for n, p in params.items() if p.requires_grad]
    grads = torch.autograd.grad(loss, [params[n] for n in trainable], allow_unused=True)
    return ProbeResult(frozen=frozenset(params.keys() - set(trainable)),
                       unused=frozenset(n for n, g in zip(trainable, grads) if g is None))


def _watch(name: str, module: nn.Module,
           found: list[str]) -> tuple[torch.utils.hooks.RemovableHandle,
                                      torch.utils.hooks.RemovableHandle]:
    """Hooks recording, for one module, buffer changes and random draws during its forward.

    Children finish before their parent, so the innermost offender is reported first.
    """
    before: dict[str, object] = {}

    def pre(_m: nn.Module, _args: object) -> None:
        before["rng"] = torch.get_rng_state()
        before["buffers"] = {n: b.clone() for n, b in module.named_buffers(recurse=False)}

    def post(_m: nn.Module, _args: object, _out: object) -> None:
        bufs = before["buffers"]
        assert isinstance(bufs, dict)
        for n, b in module.named_buffers(recurse=False):
            old = bufs.get(n)
            if old is None or old.shape != b.shape or not torch.equal(old, b):
                found.append(f"{_prefix(name, module)} changes its buffer {n!r} in its "
                             f"forward; {_ADVICE}")
                return
        rng = before["rng"]
        assert isinstance(rng, torch.Tensor)
        if not torch.equal(rng, torch.get_rng_state()):
            found.append(f"{_prefix(name, module)} draws random numbers in its forward (there "
                         f"is one global generator, not one per client); {_ADVICE}")

    return module.register_forward_pre_hook(pre), module.register_forward_hook(post)

