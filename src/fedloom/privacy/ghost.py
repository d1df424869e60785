"""Ghost clipping for DP-SGD (Goodfellow 2015; Li et al. 2021): the same clipped sums as
:func:`fedloom.privacy.sample.client_fn`, without any per-example gradient of a ``nn.Linear``.

For a linear layer ``z = a W^T + b`` applied to example i's inputs ``a_i`` (``T x d_in``; T = 1
for a flat input) with output gradients ``g_i = dl_i/dz_i`` (``T x d_out``), the example's
gradient is ``g_i^T a_i`` (weight) and ``sum_t g_it`` (bias), so

- its squared norm is ``||g_i||^2 ||a_i||^2`` when T = 1, else ``sum (a_i a_i^T) * (g_i g_i^T)``
  (the "ghost norm", used when T^2 <= d_in d_out; otherwise ``g_i^T a_i`` is formed per example);
- the clipped sum ``sum_i f_i g_i^T a_i`` is one matmul of the scaled output gradients with the
  inputs (the "book-keeping" form: one forward, one backward, no second backward).

The output gradients come from one backward of ``sum_i l_i`` to zero "probes" added to every
handled layer's output (forward hooks during :func:`torch.func.functional_call`), so the function
is a pure ``torch.func`` computation: the vectorized fleet ``vmap``s it over clients and records
it with ``make_fx``; the serial trainer calls it as it is.

Trainable tensors of any other layer (convolutions, embeddings, norms...) still get per-example
gradients from ``vmap(grad)`` over the examples, added into the same per-example norm; a log
line names those layers once. A model whose structure ghost clipping cannot read (a linear layer
applied twice, a batch dimension that is not first) falls back to the whole ``vmap`` path:
:func:`agrees` checks the two against each other once on real data before a trainer commits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from fedloom.privacy.sample import ClientFn, LossFn, Tensors

log = logging.getLogger(__name__)
_said: set[str] = set()


def say_once(message: str) -> None:
    """Log ``message`` once per process."""
    if message not in _said:
        _said.add(message)
        log.info(message)


class Unsupported(Exception):
    """The model does something ghost clipping cannot account for."""


@dataclass(frozen=True, slots=True)
class _Layer:
    """A handled ``nn.Linear``: its module path and the trained names of its weight and bias."""

    path: str
    module: nn.Linear
    weight: str | None
    bias: str | None


def _plan(model: nn.Module, trained: Sequence[str]) -> tuple[list[_Layer], list[str]]:
    """The linear layers ghost clipping handles and the trained tensors it leaves to vmap."""
    owners: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        owners[id(p)] = owners.get(id(p), 0) + 1
    names = set(trained)
    layers: list[_Layer] = []
    for path, m in model.named_modules():
        if not isinstance(m, nn.Linear):
            continue
        own = {k: p for k, p in m.named_parameters(recurse=False)}
        if any(owners[id(p)] > 1 for p in own.values()):
            continue  # a tied weight: its gradient has terms from another layer
        full = {k: f"{path}.{k}" if path else k for k in own}
        w, b = full.get("weight"), full.get("bias")
        layer = _Layer(path, m, w if w in names else None, b if b in names else None)
        if layer.weight or layer.bias:
            layers.append(layer)
    handled = {n for la in layers for n in (la.weight, la.bias) if n}
    return layers, [n for n in trained if n not in handled]


class _Capture:
    """Forward hooks on the handled layers: keep each input, add a probe to each output."""

    def __init__(self, layers: Sequence[_Layer]) -> None:
        self.layers = layers
        self.inputs: list[torch.Tensor | None] = []
        self.shapes: list[torch.Size] = []
        self.probes: Sequence[torch.Tensor] = ()

    @contextmanager
    def __call__(self, probes: Sequence[torch.Tensor]) -> Iterator[_Capture]:
        self.inputs, self.shapes, self.probes = [None] * len(self.layers), [], probes
        handles = [la.module.register_forward_hook(self._hook(i))
                   for i, la in enumerate(self.layers)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()
        missing = [la.path for la, a in zip(self.layers, self.inputs) if a is None]
        if missing:
            raise Unsupported(f"layers {missing} are not applied in the forward")

    def _hook(self, i: int) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor],
                                        torch.Tensor]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...],
                 out: torch.Tensor) -> torch.Tensor:
            if self.inputs[i] is not None:
                raise Unsupported(f"layer {self.layers[i].path!r} is applied twice")
            self.inputs[i] = args[0]
            self.shapes.append(out.shape)
            return out + self.probes[i] if self.probes else out

        return hook


def _squares(a: torch.Tensor, g: torch.Tensor, layer: _Layer) -> torch.Tensor:
    """Each example's squared gradient norm over the layer's trained tensors, ``(B,)``."""
    b = a.shape[0]
    if a.dim() == 2:
        gg = g.square().sum(1)
        if layer.weight is None:
            return gg
        return gg * a.square().sum(1) + gg if layer.bias else gg * a.square().sum(1)
    a3, g3 = a.reshape(b, -1, a.shape[-1]), g.reshape(b, -1, g.shape[-1])
    gb = g3.sum(1).square().sum(1)
    if layer.weight is None:
        return gb
    t, d_in, d_out = a3.shape[1], a3.shape[2], g3.shape[2]
    sq = ((a3 @ a3.mT) * (g3 @ g3.mT)).sum((1, 2)) if t * t <= d_in * d_out else \
        (g3.mT @ a3).square().sum((1, 2))
    return sq + gb if layer.bias else sq


def _sums(a: torch.Tensor, g: torch.Tensor, factor: torch.Tensor,
          layer: _Layer) -> dict[str, torch.Tensor]:
    """``sum_i factor_i * grad_i`` of the layer's trained tensors: one matmul for the weight."""
    gs = g * factor.view(-1, *([1] * (g.dim() - 1)))
    gs2, a2 = gs.reshape(-1, gs.shape[-1]), a.reshape(-1, a.shape[-1])
    out: dict[str, torch.Tensor] = {}
    if layer.weight:
        out[layer.weight] = gs2.mT @ a2
    if layer.bias:
        out[layer.bias] = gs2.sum(0)
    return out


def ghost_fn(model: nn.Module, trained: Sequence[str], fixed: Sequence[str],
             loss_fn: LossFn, clip: float) -> ClientFn | None:
    """The ghost-clipped twin of :func:`fedloom.privacy.sample.client_fn` (same arguments and
    results), or None when the model has no trained linear layer to handle."""
    trained, fixed = tuple(trained), tuple(fixed)
    layers, others = _plan(model, trained)
    if not layers:
        return None
    if others:
        say_once(f"DP-SGD ghost clipping: {_describe(model, others)} get per-example "
                 "gradients from vmap (only nn.Linear layers are ghost-clipped)")
    capture = _Capture(layers)
    shapes: dict[tuple[object, ...], list[torch.Size]] = {}
    losses_of = _example_losses(loss_fn)
    rest = tuple(n for n in trained if n not in others)

    def total(probes: Tensors, tensors: dict[str, torch.Tensor], x: torch.Tensor,
              y: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, Tensors]]:
        with capture(probes) as c:
            logits = functional_call(model, tensors, (x,))
        inputs = tuple(a for a in c.inputs if a is not None)
        if any(a.dim() < 2 or a.shape[0] != x.shape[0] for a in inputs):
            raise Unsupported("a linear layer's input does not lead with the batch")
        losses = losses_of(logits, y)
        return losses.sum(), (losses, inputs)

    def example_loss(o: Tensors, q: dict[str, torch.Tensor], x: torch.Tensor,
                     y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, dict(zip(others, o)) | q, (x.unsqueeze(0),))
        return loss_fn(logits, y.unsqueeze(0))

    per_example = vmap(grad(example_loss), in_dims=(None, None, 0, 0))

    def client(p: Tensors, q: Tensors, x: torch.Tensor, y: torch.Tensor,
               w: torch.Tensor) -> Tensors:
        tensors = dict(zip(trained, p)) | dict(zip(fixed, q))
        key = (tuple(x.shape), x.dtype, p[0].dtype)
        if key not in shapes:
            with torch.no_grad(), capture(()) as c:
                functional_call(model, tensors, (x,))
            shapes[key] = list(c.shapes)
        probes = tuple(x.new_zeros(s, dtype=p[0].dtype) for s in shapes[key])
        g, (losses, inputs) = grad(total, has_aux=True)(probes, tensors, x, y)
        sq = sum((_squares(a, gi, la) for a, gi, la in zip(inputs, g, layers)),
                 start=x.new_zeros(x.shape[0], dtype=p[0].dtype))
        flat: list[torch.Tensor] = []
        if others:
            o = tuple(tensors[n] for n in others)
            grads = per_example(o, {n: tensors[n] for n in (*rest, *fixed)}, x, y)
            flat = [gr.reshape(x.shape[0], -1) for gr in grads]
            sq = sq + torch.stack([f.square().sum(1) for f in flat]).sum(0)
        factor = (clip / sq.sqrt().clamp(min=1e-12)).clamp(max=1.0) * w
        sums: dict[str, torch.Tensor] = {}
        for a, gi, la in zip(inputs, g, layers):
            sums |= _sums(a, gi, factor, la)
        for n, f in zip(others, flat):
            sums[n] = (factor @ f).view(tensors[n].shape)
        return (*(sums[n] for n in trained), (losses * w).sum() / w.sum().clamp(min=1.0))

    return client


def _example_losses(loss_fn: LossFn) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Each example's ``loss_fn`` on a batch of one, from a batched forward's outputs."""
    one = vmap(lambda o, t: loss_fn(o.unsqueeze(0), t.unsqueeze(0)))

    def losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if loss_fn is F.cross_entropy and logits.dim() == 2 and not y.is_floating_point():
            return F.cross_entropy(logits, y, reduction="none")  # the same, in fewer ops
        return one(logits, y)

    return losses


def _describe(model: nn.Module, names: Sequence[str]) -> str:
    mods = dict(model.named_modules())
    seen: dict[str, str] = {}
    for n in names:
        path = n.rpartition(".")[0]
        seen.setdefault(path, type(mods.get(path, model)).__name__)
    return ", ".join(f"layer {p!r} ({t})" for p, t in seen.items())


def agrees(ghost: ClientFn, reference: ClientFn, args: tuple[Tensors, Tensors, torch.Tensor,
                                                             torch.Tensor, torch.Tensor],
           clip: float) -> bool:
    """Whether ``ghost`` gives ``reference``'s clipped sums and loss on one client's batch
    (logs why not); a trainer checks once before it trusts ghost clipping with a model."""
    try:
        got = ghost(*args)
    except Unsupported as exc:
        say_once(f"DP-SGD: ghost clipping cannot handle this model ({exc}); per-example "
                 "gradients from vmap for every layer")
        return False
    want = reference(*args)
    scale = clip * max(1.0, float(args[4].sum()))
    if all(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * scale) for a, b in zip(got, want)):
        return True
    say_once("DP-SGD: ghost clipping disagrees with per-example gradients on this model (its "
             "examples are not independent?); per-example gradients from vmap for every layer")
    return False


def choose(ghost: ClientFn | None, reference: ClientFn,
           args: tuple[Tensors, Tensors, torch.Tensor, torch.Tensor, torch.Tensor],
           clip: float) -> ClientFn:
    """``ghost`` if it agrees with ``reference`` on ``args`` (one client's batch), else
    ``reference``."""
    return ghost if ghost is not None and agrees(ghost, reference, args, clip) else reference


__all__ = ["Unsupported", "agrees", "choose", "ghost_fn", "say_once"]
