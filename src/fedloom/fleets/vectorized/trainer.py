"""K clients' local SGD as one batched computation (``torch.func``), one chunk at a time.

For a chunk of K clients the trainer stacks their parameters (K x ...) once, precomputes the
round's batches of every client as one (steps x K x B) index tensor (:mod:`.schedule`), then runs
the steps: one ``index_select`` gathers every client's batch, one batched call gives every
client's gradient (:mod:`.kernel`), one fused update steps every client (:mod:`.sgd`). Clients
run out of batches at different steps; they are masked from then on, never fed fake examples.

The client half of the algorithm runs as in :class:`LocalTrainer`: ``extra_loss`` and
``correct_grads`` per client and step (:mod:`.hooks`), ``finish`` per result, ``before`` per
client on the serial trainer (one pass over the client's data at the received model), and every
:class:`~fedloom.algorithms.base.ExtraPass` (Ditto's personal model) as another batched pass.

Results agree with the serial trainer within float tolerance (the batched kernels sum in another
order): tests/fleets/test_vectorized.py states and checks the tolerance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from fedloom.algorithms.base import GradHook
from fedloom.core.layout import LayoutEntry, ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientFailure, ClientResult, Downlink, Outcome
from fedloom.fleets.config import CompileMode
from fedloom.fleets.vectorized.check import check_model
from fedloom.fleets.vectorized.compiled import Backend, Buckets, StepCompiler, compiles
from fedloom.fleets.vectorized.conv import ConvMode, use_loop_convolutions
from fedloom.fleets.vectorized.hooks import add_extra_loss, correct_grads
from fedloom.fleets.vectorized.kernel import GradKernel, Tensors
from fedloom.fleets.vectorized.private import PrivateKernel, finish_private, noise_streams
from fedloom.fleets.vectorized.schedule import Schedule, build_schedule, client_batches, pad_clients
from fedloom.fleets.vectorized.sgd import StackedSGD
from fedloom.training.spec import ClientSpec
from fedloom.training.trainer import LocalTrainer

log = logging.getLogger(__name__)


#: most bytes of a pass's gathered batches held at once (above it: one gather per step)
GATHER_BYTES = 256 * 2 ** 20
#: CPU default chunk: stacked parameters per part. A part steps all its clients' weights every
#: step, so past the caches a bigger part is slower per client: 1,000 W1 clients of 6 steps,
#: 1 thread, cost 1.34 ms per client at 8-10 clients (0.8 MB each) a part, 1.64 ms at 25 and
#: 1.79 ms at 50 (benchmarks/bench_scaling.py's workload, AMD EPYC, 1 MB L2 per core)
PART_BYTES = 8 * 2 ** 20
_Batches = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True, slots=True)
class _Pass:
    """One batched SGD pass over a chunk: new flat params (K x P) and per-client loss sums."""

    params: torch.Tensor
    losses: list[Mean]
    steps: tuple[int, ...]


class VectorizedTrainer:
    """Trains many clients at once; the process and distributed fleets use it for their share.

    Args:
        spec: what clients compute.
        device: where the stacked parameters and the data live.
        chunk: most clients stacked at once. Does not change results. None: on CPU, enough for
            each part (see ``parallel``) to stack :data:`PART_BYTES` of parameters; elsewhere
            all of a group.
        trace_after: record the batched step as a graph after this many calls of one shape
            (0: always run ``torch.func`` eagerly).
        conv: how convolutions are batched (:class:`ConvMode`); ``auto`` runs layers with few
            input channels as a loop over clients on CPU, where that is faster.
        compile: whether recorded steps go through ``torch.compile`` (:mod:`.compiled`; only
            with the default loss, whose masking lets a chunk be padded to a bucket size).
        backend: ``torch.compile``'s backend.
        parallel: train a chunk as this many parts at once, each on its own thread with one
            torch thread (CPU: two 1-thread batched matmuls keep two cores busier than one
            2-thread matmul of a small model). Only for plain local SGD (no per-step hooks,
            ``before`` pass) and uncompiled steps; results do not depend on it. DP-SGD runs in
            parts too: each part's clients draw their noise on its thread.

    Raises:
        ConfigError: the model has a layer that cannot be vectorized (named in the message).
    """

    def __init__(self, spec: ClientSpec, device: str | torch.device = "cpu",
                 chunk: int | None = None, *, trace_after: int = 3,
                 conv: ConvMode | str = ConvMode.AUTO,
                 compile: CompileMode | str = CompileMode.AUTO,
                 backend: Backend = "inductor", parallel: int = 1) -> None:
        self.spec = spec
        self.device = torch.device(device)
        self.chunk = chunk
        probe_x, probe_y = spec.train.batch(torch.arange(min(2, len(spec.train))))
        self._example_bytes = probe_x[0].numel() * probe_x.element_size() + \
            probe_y[0].numel() * probe_y.element_size()
        probe = check_model(spec.model_fn(), probe_x.cpu(), probe_y.cpu(), spec.loss_fn)
        model = spec.model_fn().to(self.device)
        looped = use_loop_convolutions(model, ConvMode(conv), self.device)
        if looped:
            _warn_once(f"vectorized fleet: convolution layers {looped} run one client after "
                       f"another (a grouped convolution is slower for them on "
                       f"{self.device.type}); the rest of the model is batched")
        self.layout = ParamLayout.from_module(model)
        self.params = tuple(e for e in self.layout.entries if e.trainable)
        self.differentiable = tuple(e.name not in probe.frozen for e in self.params)
        self.unused = probe.unused
        self.fixed = tuple(e for e in self.layout.entries
                           if not e.trainable or e.name in probe.frozen)
        # the default loss is masked per example; any other is called on real examples only
        self.weighted = spec.loss_fn is F.cross_entropy and not probe_y.is_floating_point()
        dp = spec.local.per_example
        self.compiler = StepCompiler(backend) if (
            compiles(compile, self.device) and self.weighted and dp is None and trace_after) \
            else None
        self.buckets = Buckets()
        self.kernel = GradKernel(
            model=model, trained=[e.name for e, d in zip(self.params, self.differentiable) if d],
            fixed=[e.name for e in self.fixed], loss_fn=None if self.weighted else spec.loss_fn,
            trace_after=trace_after, compiler=self.compiler)
        self.private = None if dp is None else PrivateKernel(
            model=model, trained=[e.name for e, d in zip(self.params, self.differentiable) if d],
            fixed=[e.name for e in self.fixed], loss_fn=spec.loss_fn, dp=dp,
            trace_after=trace_after)
        self.train = spec.train.to(self.device)
        self._reference: LocalTrainer | None = None
        local = spec.local
        plain = local.before is None and local.extra_loss is None and \
            local.correct_grads is None and all(e.correct_grads is None for e in local.passes)
        self.parallel = parallel if plain and self.compiler is None else 1
        if chunk is None and self.device.type == "cpu":
            per_client = self.layout.num_trainable * self.layout.dtype.itemsize
            self.chunk = self.parallel * max(1, PART_BYTES // max(1, per_client))
        self._pool: ThreadPoolExecutor | None = None

    def fit_many(self, tasks: Sequence[Downlink]) -> list[Outcome]:
        """Train every task's client; outcomes sorted by client id.

        Tasks are grouped by batch size (so no client computes on more padding than its last
        short batch) and each group is trained in chunks of at most ``chunk`` clients.
        """
        return sorted((o for chunk in self.fit_chunks(tasks) for o in chunk),
                      key=lambda o: o.client_id)

    def fit_chunks(self, tasks: Sequence[Downlink]) -> Iterator[list[Outcome]]:
        """The outcomes of :meth:`fit_many`, a chunk at a time as each is trained (so a caller
        that keeps only what it needs of each holds one chunk's updates at most)."""
        groups: dict[int, list[Downlink]] = {}
        for task in sorted(tasks, key=lambda t: t.client_id):
            groups.setdefault(task.config.batch_size, []).append(task)
        for group in groups.values():
            size = self.chunk or len(group)
            for start in range(0, len(group), size):
                yield self._fit_parts(group[start:start + size])

    def close(self) -> None:
        """Stop the threads of ``parallel`` parts (a later fit starts them again)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _fit_parts(self, tasks: Sequence[Downlink]) -> list[Outcome]:
        """One chunk as ``parallel`` parts of about equal work (examples x epochs), at once."""
        n = min(self.parallel, len(tasks))
        if n <= 1:
            return self._fit_chunk(tasks)
        parts: list[list[Downlink]] = [[] for _ in range(n)]
        load = [0] * n
        work = {t.client_id: int(self.spec.client_indices[t.client_id].shape[0]) *
                (t.config.epochs if t.config.steps is None else 1) for t in tasks}
        for task in sorted(tasks, key=lambda t: -work[t.client_id]):  # largest first
            least = load.index(min(load))
            parts[least].append(task)
            load[least] += work[task.client_id]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="vectorized",
                                            initializer=torch.set_num_threads, initargs=(1,))
        threads = torch.get_num_threads()
        futures = [self._pool.submit(self._fit_chunk, sorted(p, key=lambda t: t.client_id))
                   for p in parts]
        outcomes = [o for f in futures for o in f.result()]
        if torch.get_num_threads() != threads:  # a new pool thread's setting reaches this one
            torch.set_num_threads(threads)
        return outcomes

    def _fit_chunk(self, tasks: Sequence[Downlink]) -> list[Outcome]:
        failures: list[Outcome] = []
        ready: list[tuple[Downlink, list[torch.Tensor]]] = []
        for task in tasks:
            try:
                batches = client_batches(task, self.spec.client_indices[task.client_id],
                                         self.spec.seed)
            except Exception as exc:  # a failed client is a value, not an escape from the round
                failures.append(_failure(task, exc))
                continue
            ready.append((task, batches))
        if not ready:
            return failures
        try:
            results = self._train([t for t, _ in ready], [b for _, b in ready])
        except Exception as exc:  # the chunk is one computation: all its clients failed
            log.warning("vectorized chunk of clients %s failed in round %d: %s",
                        [t.client_id for t, _ in ready], ready[0][0].round, exc)
            return failures + [_failure(t, exc) for t, _ in ready]
        return failures + results

    def _train(self, tasks: Sequence[Downlink],
               batches: Sequence[Sequence[torch.Tensor]]) -> list[Outcome]:
        local = self.spec.local
        before = [self._before(t) for t in tasks]
        main = self._sgd(tasks, self._stack_flat([t.params for t in tasks]),
                         build_schedule(batches), local.correct_grads)
        passes = [(extra, self._sgd(
            tasks, self._stack_flat([extra.start(t) for t in tasks]),
            build_schedule([client_batches(t, self.spec.client_indices[t.client_id],
                                           self.spec.seed, extra.purpose) for t in tasks]),
            extra.correct_grads, "/" + extra.name)) for extra in local.passes]
        out: list[Outcome] = []
        for j, task in enumerate(tasks):
            metrics, extras = before[j]
            metrics["train_loss"] = main.losses[j]
            for extra, done in passes:
                extras[extra.name] = done.params[j]
                metrics[f"{extra.name}_train_loss"] = done.losses[j]
            result = ClientResult(
                round=task.round, client_id=task.client_id, params=main.params[j],
                num_examples=int(self.spec.client_indices[task.client_id].shape[0]),
                num_steps=main.steps[j], metrics=metrics, extras=extras)
            out.append(result if local.finish is None else local.finish(result, task))
        return out

    def _before(self, task: Downlink) -> tuple[dict[str, Mean], dict[str, torch.Tensor]]:
        """The algorithm's pass before training, per client on the serial trainer."""
        if self.spec.local.before is None:
            return {}, {}
        if self._reference is None:
            self._reference = self.spec.trainer(self.device)
        ref = self._reference
        ref.bound.load(task.params)
        return ref.before(task, self.spec.client_indices[task.client_id])

    def _stack_flat(self, flats: Sequence[torch.Tensor]) -> torch.Tensor:
        """(K, P) starting parameters; a view (not a copy) when all clients share one."""
        if all(f is flats[0] for f in flats):  # the usual downlink: one tensor for the cohort
            return flats[0].to(self.device, self.layout.dtype).expand(len(flats), -1)
        return torch.stack(list(flats)).to(self.device, self.layout.dtype)

    def _sgd(self, tasks: Sequence[Downlink], start: torch.Tensor, sched: Schedule,
             correct: GradHook | None, pass_name: str = "") -> _Pass:
        """One SGD pass of every client from ``start`` (K x P), as the serial ``_sgd``
        (DP-SGD's gradients when the spec asks for them)."""
        real = len(tasks)  # compiled steps: the chunk is padded with clients that never step
        k = real if self.compiler is None else self.buckets(real)
        start, sched = _pad_rows(start, k), pad_clients(sched, k)
        dev = self.device
        params = _stack(start, self.params)
        by_name = {e.name: p for e, p in zip(self.params, params)}
        fixed = tuple(by_name.get(e.name, t)
                      for e, t in zip(self.fixed, _stack(start, self.fixed)))
        diff = [p for p, d in zip(params, self.differentiable) if d]
        extra_loss = self.spec.local.extra_loss
        hooked = extra_loss is not None or correct is not None
        dp = self.spec.local.per_example
        streams = [] if dp is None else noise_streams(dp, tasks, pass_name)
        scratch = torch.empty((k, self.layout.num_trainable) if dp else (0,),
                              dtype=self.layout.dtype)  # DP-SGD's noise, drawn in place
        # what the serial optimiser steps: every tensor given a .grad
        stepped = [i for i, (e, d) in enumerate(zip(self.params, self.differentiable))
                   if correct is not None or dp is not None or (d and (extra_loss is not None
                                                     or e.name not in self.unused))]
        idx, weights = sched.idx.to(dev), sched.weights.to(dev)
        batches = self._batches(idx)
        active = sched.counts > 0
        configs = [t.config for t in tasks] + [tasks[0].config] * (k - real)
        sgd = StackedSGD([params[i] for i in stepped], configs, active)
        losses = torch.zeros((sched.num_steps, k), dtype=torch.float32, device=dev)
        for t in range(sched.num_steps):
            x, y = batches(t)
            exact = self.weighted or sched.full[t]
            if self.private is not None:  # masks its padding itself: always exact
                grads, loss = self.private(diff, fixed, x, y, weights[t])
            elif exact and not hooked and sgd.plain(t, idle_grads_zero=self.weighted):
                losses[t] = self.kernel.sgd_step(diff, fixed, x, y, weights[t], sgd.lr)
                continue
            elif exact:
                grads, loss = self.kernel(diff, fixed, x, y, weights[t])
            else:
                grads, loss = self._exact_grads(diff, fixed, x, y, weights[t],
                                                sched.counts[t])
            losses[t] = loss
            it = iter(grads)
            every = [next(it) if d else torch.zeros_like(p)
                     for p, d in zip(params, self.differentiable)]
            if dp is not None:
                every = finish_private(dp, every, sched.counts[t], streams,
                                       active[t].tolist(), scratch)
            if hooked:
                act = active[t].tolist()
                if extra_loss is not None:
                    add_extra_loss(extra_loss, params, self.differentiable, every, tasks, act)
                if correct is not None:
                    every = list(correct_grads(correct, params, every, tasks, act))
            sgd.step(t, [every[i] for i in stepped])
        out = torch.empty((real, start.shape[1]), dtype=start.dtype, device=start.device)
        for e in self.fixed:  # not trained: as they came (start may view a downlink)
            out[:, e.offset:e.stop] = start[:real, e.offset:e.stop]
        for e, p in zip(self.params, params):
            out[:, e.offset:e.stop] = p[:real].reshape(real, -1)
        losses, seen = losses[:, :real], sched.counts[:, :real].to(torch.float64)
        sums = (losses.to(device="cpu", dtype=torch.float64) * seen).sum(0).tolist()
        weights_seen = seen.sum(0).tolist()
        return _Pass(params=out, losses=[Mean(s, w) for s, w in zip(sums, weights_seen)],
                     steps=sched.steps)

    def _batches(self, idx: torch.Tensor) -> _Batches:
        """Step t's (K, B, ...) inputs and labels: all of the pass's gathered at once (one
        gather, no allocation per step) when that takes at most ``GATHER_BYTES``."""
        steps, k, size = idx.shape

        def shaped(x: torch.Tensor, y: torch.Tensor, lead: tuple[int, ...]) -> tuple[
                torch.Tensor, torch.Tensor]:
            return x.view(*lead, *x.shape[1:]), y.view(*lead, *y.shape[1:])

        if idx.numel() * self._example_bytes <= GATHER_BYTES:
            xs, ys = shaped(*self.train.batch(idx.view(-1)), (steps, k, size))
            return lambda t: (xs[t], ys[t])
        return lambda t: shaped(*self.train.batch(idx[t].view(-1)), (k, size))

    def _exact_grads(self, params: Sequence[torch.Tensor], fixed: Sequence[torch.Tensor],
                     x: torch.Tensor, y: torch.Tensor, w: torch.Tensor,
                     counts: torch.Tensor) -> tuple[Tensors, torch.Tensor]:
        """Gradients for a custom loss when some batches are short: each distinct batch size is
        its own call on exactly the real examples of the clients that have it."""
        size = x.shape[1]
        grads, loss = self.kernel(params, fixed, x, y, w)  # right for the full batches
        for c in sorted(set(counts.tolist()) - {0, size}):
            ids = torch.nonzero(counts == c).view(-1).to(self.device)
            sub = tuple(p.index_select(0, ids) for p in params)
            sub_fixed = tuple(q.index_select(0, ids) for q in fixed)
            g, v = self.kernel(sub, sub_fixed, x.index_select(0, ids)[:, :c],
                               y.index_select(0, ids)[:, :c], w.index_select(0, ids)[:, :c])
            for full, part in zip(grads, g):
                full.index_copy_(0, ids, part)
            loss = loss.index_copy(0, ids, v)
        return grads, loss


def _pad_rows(flat: torch.Tensor, k: int) -> torch.Tensor:
    """(K, P) ``flat`` with rows repeating its first up to ``k`` rows."""
    extra = k - flat.shape[0]
    if extra <= 0:
        return flat
    if flat.stride(0) == 0:  # one downlink shared by the chunk: still a view
        return flat[:1].expand(k, -1)
    return torch.cat([flat, flat[:1].expand(extra, -1)])


def _stack(flat: torch.Tensor, entries: Sequence[LayoutEntry]) -> Tensors:
    """Each entry as its own contiguous (K, *shape) tensor, copied out of (K, P) ``flat``."""
    k = flat.shape[0]
    return tuple(flat[:, e.offset:e.stop].reshape(k, *e.shape).to(
        e.dtype, memory_format=torch.contiguous_format, copy=True) for e in entries)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _failure(task: Downlink, exc: Exception) -> ClientFailure:
    return ClientFailure(round=task.round, client_id=task.client_id, stage="fit",
                         message=f"{type(exc).__name__}: {exc}")
