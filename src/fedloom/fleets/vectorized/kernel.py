"""Every client's gradient at once: ``vmap(grad_and_value(loss))`` over stacked parameters.

The per-client loss is the model applied with :func:`torch.func.functional_call` to one client's
parameters and batch. With the default task loss (``F.cross_entropy`` on class indices) it is a
per-example weighted mean, ``sum(w * l) / sum(w)``, so the zero-weight padding of a short batch
contributes nothing and the gradient is the mean over the client's real examples only. Any
other loss is called as it is, on exactly the client's real examples (see :mod:`.trainer`).

torch.func pays a fixed Python cost per call (about 1 ms for a small model here, as much as the
2NN's whole batched step), so once a shape has been seen a few times the batched gradient is
recorded as a graph of plain aten ops with ``make_fx``, traced into TorchScript and replayed by
its interpreter (no Python between ops). The graph is the same computation (tests compare
both), without the transforms' bookkeeping.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import cast

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap
from torch.fx import GraphModule

from fedloom.fleets.vectorized.check import LossFn
from fedloom.fleets.vectorized.compiled import StepCompiler

log = logging.getLogger(__name__)

Tensors = tuple[torch.Tensor, ...]
#: (trained params, fixed tensors, x, y, w) -> (gradients of the trained params, loss per client)
GradFn = Callable[..., Tensors]

aten = torch.ops.aten


def weighted_cross_entropy(logits: torch.Tensor, y: torch.Tensor,
                           w: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy`` (class indices, mean) where example i counts w_i times.

    Equal to ``F.cross_entropy(logits[w > 0], y[w > 0])`` for 0/1 weights, and 0 when all
    weights are 0. Works on (B, C, d1, ...) logits like ``F.cross_entropy``.
    """
    loss = -torch.log_softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    count = w.sum()
    if loss.dim() > 1:  # (B, d1, ...) targets: every position of an example counts
        count = count * loss[0].numel()
        loss = loss.flatten(1).sum(1)
    return (loss * w).sum() / count.clamp(min=1.0)


class GradKernel:
    """Gradients and losses of K clients in one batched call, or a whole plain SGD step.

    Args:
        model: the module whose forward is applied (its own tensors are not used).
        trained: names of the tensors that get gradients, in the order they are passed.
        fixed: names of the other tensors the forward needs (frozen parameters, buffers).
        loss_fn: the task loss, or None for the weighted cross-entropy.
        trace_after: record a graph for a shape on its this-many-th call (0: never).
        compiler: compiles each recorded graph (None: replay it eagerly).
    """

    def __init__(self, *, model: nn.Module, trained: Sequence[str], fixed: Sequence[str],
                 loss_fn: LossFn | None, trace_after: int = 3,
                 compiler: StepCompiler | None = None) -> None:
        self.trained = tuple(trained)
        self.fixed = tuple(fixed)
        n_trained, n_fixed = len(self.trained), len(self.fixed)

        def client_loss(p: Tensors, q: Tensors, x: torch.Tensor, y: torch.Tensor,
                        w: torch.Tensor) -> torch.Tensor:
            tensors = dict(zip(self.trained, p)) | dict(zip(self.fixed, q))
            logits = functional_call(model, tensors, (x,))
            return weighted_cross_entropy(logits, y, w) if loss_fn is None else \
                loss_fn(logits, y)

        batched = vmap(grad_and_value(client_loss))

        def grads(*args: torch.Tensor) -> Tensors:
            p, q = args[:n_trained], args[n_trained:n_trained + n_fixed]
            g, loss = batched(p, q, *args[n_trained + n_fixed:])
            return (*g, loss)

        self.n_trained = n_trained
        self.eager: GradFn = grads
        self.trace_after = trace_after
        self.compiler = compiler
        self.lock = threading.Lock()  # parts of a chunk may step on threads (see .trainer)
        self.graphs: dict[tuple[object, ...], GradFn] = {}
        self.recorded: dict[tuple[object, ...], GraphModule] = {}  # what graphs replay
        self.calls: dict[tuple[object, ...], int] = {}

    def __call__(self, params: Sequence[torch.Tensor], fixed: Sequence[torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor,
                 w: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        """Every client's gradient (stacked like ``params``) and loss."""
        args = (*params, *fixed, x, y, w)
        with self._guarded(args, None) as fn:
            out = fn(*args)
        return out[:-1], out[-1]

    def sgd_step(self, params: Sequence[torch.Tensor], fixed: Sequence[torch.Tensor],
                 x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, lr: float) -> torch.Tensor:
        """``p -= lr * grad`` for every client, in place; returns the losses.

        The recorded graph fuses the update of a weight whose gradient is one batched matmul
        into that matmul (``baddbmm_``): the K x P gradient is never written and read back,
        which is most of a small model's step on CPU.
        """
        args = (*params, *fixed, x, y, w)
        with self._guarded(args, lr) as fn:
            if fn is self.eager:
                out = fn(*args)
                torch._foreach_add_(list(params), list(out[:-1]), alpha=-lr)
                return out[-1]
            return fn(*args)[0]

    def _guarded(self, args: Tensors, lr: float | None) -> AbstractContextManager[GradFn]:
        return guarded(self.lock, lambda: self._fn(args, lr))

    def _fn(self, args: Tensors, lr: float | None) -> GradFn:
        if not self.trace_after:
            return self.eager
        key = (lr, *((a.shape, a.dtype, a.device) for a in args))
        fn = self.graphs.get(key)
        if fn is not None:
            return fn
        self.calls[key] = n = self.calls.get(key, 0) + 1
        if n < self.trace_after:
            return self.eager
        graph = record(self.eager, args)
        if graph is not None and lr is not None:
            fuse_sgd(graph, self.n_trained, lr)
        if graph is None:
            fn = self.eager
        else:
            self.recorded[key] = graph
            fn = self.compiler.wrap(graph) if self.compiler is not None else \
                interpreted(graph, args, self.n_trained if lr is not None else 0)
        self.graphs[key] = fn
        return fn


@contextmanager
def guarded(lock: threading.Lock, pick: Callable[[], GradFn]) -> Iterator[GradFn]:
    """The step ``pick`` chooses, held under ``lock`` unless it is a recorded graph: the
    transforms, recording and compiling are not safe to run on two threads at once (parts of a
    chunk on threads share a kernel), replaying a graph of aten ops is."""
    with lock:
        fn = pick()
        if not isinstance(fn, GraphModule | torch.jit.ScriptModule):
            yield fn
            return
    yield fn


def record(fn: GradFn, args: Tensors) -> GraphModule | None:
    """``fn`` as a replayable graph of aten ops, or None when it cannot be recorded."""
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        graph = make_fx(fn)(*args)
    except Exception as exc:  # a model make_fx cannot follow still runs, only slower
        log.info("vectorized fleet: cannot record the batched step as a graph (%s: %s); "
                 "running it eagerly", type(exc).__name__, exc)
        return None
    simplify(graph)
    return graph


_jit_trace: Callable[..., object] = torch.jit.trace  # untyped in torch's stubs


def interpreted(graph: GraphModule, args: Tensors, mutated: int) -> GradFn:
    """``graph`` traced into TorchScript, whose interpreter replays the ops without Python (about
    50 us of overhead per W1-sized step instead of 150-400 us for the graph's Python code, and
    without the GIL, so parts of a chunk on threads do not queue for it); ``graph`` itself where
    tracing fails. The trace runs the graph once, on copies of the ``mutated`` leading args."""
    example = tuple(a.clone() if i < mutated else a for i, a in enumerate(args))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on constants and deprecation
            return cast(GradFn, _jit_trace(graph, example, check_trace=False))
    except Exception as exc:  # the graph still runs, with Python between the ops
        log.info("vectorized fleet: cannot trace the recorded step into TorchScript (%s: %s); "
                 "replaying it from Python", type(exc).__name__, exc)
        return graph


def fuse_sgd(graph: GraphModule, n_trained: int, lr: float) -> None:
    """Turn a recorded ``(grads..., loss)`` graph into an in-place SGD step returning (loss,).

    Each update is placed after every other op, so all reads of the old parameters come first.
    A gradient that is the output of one ``bmm`` used by nothing else is fused:
    ``p.baddbmm_(a, b, alpha=-lr)``; any other is ``p.add_(g, alpha=-lr)``.
    """
    g = graph.graph
    out = next(n for n in g.nodes if n.op == "output")
    params = [n for n in g.nodes if n.op == "placeholder"][:n_trained]
    *grads, loss = out.args[0]
    updates = []
    with g.inserting_before(out):
        for p, grad in zip(params, grads):
            if (grad.target is aten.bmm.default and len(grad.users) == 1
                    and _same_layout(grad, p)):
                a, b = grad.args
                updates.append(g.call_function(aten.baddbmm_.default, (p, a, b),
                                               {"alpha": -lr}))
            else:
                updates.append(g.call_function(aten.add_.Tensor, (p, grad), {"alpha": -lr}))
    out.args = ((loss, *updates),)
    g.eliminate_dead_code()
    graph.recompile()


_SAME_SHAPE_VIEWS = {aten.view.default, aten._unsafe_view.default, aten.expand.default,
                     aten.reshape.default, aten.alias.default}


def simplify(graph: GraphModule) -> None:
    """Drop ops that return their input unchanged (same-shape views, x * 1, double transposes).

    make_fx records every view the transforms make; each costs a dispatch when replayed. Skipped
    when the graph mutates anything, since then aliasing could matter.
    """
    nodes = list(graph.graph.nodes)
    if any(isinstance(n.target, torch._ops.OpOverload) and n.target._schema.is_mutable
           for n in nodes):
        return
    for node in nodes:
        if node.op != "call_function" or not node.args:
            continue
        src = node.args[0]
        if not isinstance(src, torch.fx.Node):
            continue
        identity = node.target in _SAME_SHAPE_VIEWS or (node.target is aten.mul.Scalar
                                                         and node.args[1] == 1)
        if identity and _same_layout(node, src):
            node.replace_all_uses_with(src)
        elif (node.target is aten.transpose.int and src.target is aten.transpose.int
              and {*node.args[1:]} == {*src.args[1:]}):
            inner = src.args[0]
            if isinstance(inner, torch.fx.Node) and _same_layout(node, inner):
                node.replace_all_uses_with(inner)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def _same_layout(a: torch.fx.Node, b: torch.fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
            and va.shape == vb.shape and va.stride() == vb.stride() and va.dtype == vb.dtype)
