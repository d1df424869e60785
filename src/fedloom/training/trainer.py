"""The local SGD loop every fleet runs: one client, one round.

Batches are ``index_select``s into tensors the client's data already lives in: no per-sample
Python and no ``DataLoader``. The shuffle of each local epoch comes from the generator of
``(seed, round, client_id, "batches")``, so a client computes the same thing whatever fleet runs it.
Convolution weights train in the format ``client.memory_format`` picks (channels-last on CPU by
default: :mod:`fedloom.training.memory_format`); what a client receives and returns is in layout
order either way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from fedloom.algorithms.base import PLAIN, ExtraPass, GradHook, LocalSpec, PerExampleClip
from fedloom.core.layout import BoundModule, ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientResult, Downlink, MemoryFormat
from fedloom.core.rng import Purpose, torch_generator
from fedloom.data.dataset import Examples
from fedloom.models import ModelFn
from fedloom.privacy.ghost import choose, ghost_fn
from fedloom.privacy.sample import ClientFn, add_noise, client_fn
from fedloom.training.memory_format import WorkingModel, wants_channels_last

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def batch_order(indices: torch.Tensor, batch_size: int, *, epochs: int, steps: int | None,
                generator: torch.Generator) -> Iterator[torch.Tensor]:
    """The client's batches: a fresh shuffle per pass, ``epochs`` passes or ``steps`` batches.

    ``batch_size`` 0 means one batch of all the client's examples per pass.
    """
    n = int(indices.shape[0])
    size = n if batch_size == 0 else batch_size
    done = 0
    epoch = 0
    while (steps is None and epoch < epochs) or (steps is not None and done < steps):
        order = indices.index_select(0, torch.randperm(n, generator=generator))
        for start in range(0, n, size):
            if steps is not None and done >= steps:
                return
            yield order[start:start + size]
            done += 1
        epoch += 1


class LocalTrainer:
    """Trains clients one at a time on a single reusable model whose tensors view a flat buffer.

    Args:
        model_fn: builds the model (its initial weights are overwritten by each downlink).
        train: all training examples; ``client_indices[k]`` selects client k's.
        seed: the run's seed; batch shuffles derive from it.
        local: the algorithm's client half.
        loss_fn: task loss on (logits, labels); cross-entropy by default.
    """

    def __init__(self, *, model_fn: ModelFn, train: Examples,
                 client_indices: Sequence[torch.Tensor], seed: int,
                 local: LocalSpec = PLAIN, loss_fn: LossFn = F.cross_entropy,
                 device: str | torch.device = "cpu") -> None:
        model = model_fn().to(device)
        self.layout = ParamLayout.from_module(model)
        self.bound = BoundModule(model, self.layout)
        self.model: nn.Module = model
        self.params = [p for p in model.parameters()]
        self.names = [n for n, _ in model.named_parameters()]
        self.working = WorkingModel(self.bound, self.params)  # the format it trains in
        self._channels_last_ok: bool | None = None  # whether the forward takes it (None: untried)
        self._wants: dict[MemoryFormat, bool] = {}  # channels-last for each setting
        # the data lives where the model does: one copy per device, batches never cross
        self.train = train.to(device)
        on_cpu = torch.device(device).type == "cpu"
        self.client_indices = client_indices if on_cpu or not isinstance(client_indices, tuple) \
            else tuple(i.to(device) for i in client_indices)  # (lazy indices are made on cpu)
        self.seed = seed
        self.local = local
        self.loss_fn = loss_fn
        self.device = torch.device(device)
        # gradients as views into one flat buffer, for hooks that correct them in place
        self.grads = torch.zeros(self.layout.num_trainable, device=self.device)
        self._private: ClientFn | None = None  # DP-SGD's clipped sums, built on first use
        self._scratch: torch.Tensor | None = None  # DP-SGD's noise, drawn in place each step

    def fit(self, downlink: Downlink) -> ClientResult:
        """Run the client's local SGD from the downlink's parameters; return its new params."""
        local, received = self.local, downlink
        if self.device.type != "cpu":  # hooks read the global params and extras on the device
            downlink = dataclasses.replace(downlink, params=downlink.params.to(self.device),
                                           extras={k: v.to(self.device)
                                                   for k, v in downlink.extras.items()})
        indices = self.client_indices[downlink.client_id]
        self._choose_format(downlink.config.memory_format, indices)
        self.working.load(downlink.params)
        metrics, extras = self.before(downlink, indices)
        gen = torch_generator(self.seed, downlink.round, downlink.client_id, Purpose.BATCHES)
        metrics["train_loss"], steps = self._sgd(downlink, indices, gen, local.correct_grads,
                                                 noise=self._noise(downlink, ""))
        params = self._host(self.working.read())
        for extra in local.passes:
            extras[extra.name], metrics[f"{extra.name}_train_loss"] = self._pass(
                extra, downlink, indices)
        result = ClientResult(
            round=downlink.round, client_id=downlink.client_id, params=params,
            num_examples=int(indices.shape[0]), num_steps=steps, metrics=metrics, extras=extras,
        )
        return local.finish(result, received) if local.finish is not None else result

    def _choose_format(self, setting: MemoryFormat, indices: torch.Tensor) -> None:
        """Bind the convolution weights in the format ``setting`` asks for; the first time
        channels-last is chosen, check that the model's forward takes it."""
        w = self.working
        explicit = setting == MemoryFormat.CHANNELS_LAST
        if setting not in self._wants:  # (a refused setting raises each time it is asked)
            self._wants[setting] = wants_channels_last(setting, module=self.model,
                                                       device=self.device, local=self.local)
        wanted = self._wants[setting]
        if wanted and self._channels_last_ok is False and not explicit:
            wanted = False
        w.use(wanted)
        if wanted and not self._channels_last_ok and int(indices.shape[0]) > 0:
            w.check_forward(self.model, self.train.batch(indices[:1])[0], explicit=explicit)
            self._channels_last_ok = w.channels_last

    def before(self, downlink: Downlink, indices: torch.Tensor) -> tuple[dict[str, Mean],
                                                                         dict[str, torch.Tensor]]:
        """The algorithm's pass before training, at the loaded model: its metrics and extras."""
        if self.local.before is None:
            return {}, {}
        metrics, extras = self.local.before(_View(self, indices), downlink)
        return dict(metrics), dict(extras)

    def _noise(self, downlink: Downlink, pass_name: str) -> torch.Generator | None:
        """DP-SGD's noise stream for one pass of this client (None without DP-SGD)."""
        dp = self.local.per_example
        return None if dp is None else torch_generator(
            dp.seed, downlink.round, downlink.client_id, dp.purpose + pass_name)

    def _sgd(self, downlink: Downlink, indices: torch.Tensor, gen: torch.Generator,
             correct: GradHook | None, noise: torch.Generator | None = None) -> tuple[Mean, int]:
        """The local SGD loop from the bound model's current parameters (DP-SGD when the
        spec asks for it: then ``noise`` is its noise stream)."""
        cfg = downlink.config
        model, loss_fn, extra_loss = self.model, self.loss_fn, self.local.extra_loss
        dp = self.local.per_example
        model.train()
        opt = torch.optim.SGD(self.params, lr=cfg.lr, momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
        if correct is not None or dp is not None:
            self._bind_grads()
        trainable = self.bound.flat[: self.layout.num_trainable]
        losses: list[torch.Tensor] = []  # summed once at the end: no extra op per step
        sizes: list[int] = []
        for batch in batch_order(indices, cfg.batch_size, epochs=cfg.epochs, steps=cfg.steps,
                                 generator=gen):
            x, y = self.train.batch(batch)
            x = self.working.input(x)
            sizes.append(int(y.shape[0]))
            if dp is not None and noise is not None:
                losses.append(self._private_grads(dp, x, y, noise))
                if extra_loss is not None:
                    torch.autograd.backward(extra_loss(self.params, downlink))
                if correct is not None:
                    self._correct(correct, trainable, downlink)
                opt.step()
                continue
            loss = loss_fn(model(x), y)
            losses.append(loss.detach())
            if extra_loss is not None:
                loss = loss + extra_loss(self.params, downlink)
            opt.zero_grad(set_to_none=correct is None)
            torch.autograd.backward(loss)  # = loss.backward(), but typed
            if correct is not None:
                self._correct(correct, trainable, downlink)
            opt.step()
        loss_sum = float(torch.stack(losses).double() @ torch.tensor(sizes, dtype=torch.float64)) \
            if losses else 0.0
        return Mean(loss_sum, float(sum(sizes))), len(sizes)

    def _correct(self, correct: GradHook, trainable: torch.Tensor, downlink: Downlink) -> None:
        """The algorithm's gradient correction, on the flat gradient and parameters in layout
        order (the 4-d slices permuted there and back when training in channels-last)."""
        w = self.working
        w.to_layout_order(self.grads)
        w.to_layout_order(trainable)
        correct(self.grads, trainable, downlink)
        w.to_working_order(trainable)
        w.to_working_order(self.grads)

    def _private_grads(self, dp: PerExampleClip, x: torch.Tensor, y: torch.Tensor,
                       noise: torch.Generator) -> torch.Tensor:
        """Write DP-SGD's gradient (:mod:`fedloom.privacy.sample`, ghost-clipped where the
        model allows: :mod:`fedloom.privacy.ghost`) into the bound gradient buffer; returns the
        batch's mean loss."""
        params = tuple(p.detach() for p in self.params)
        args = (params, (), x, y, torch.ones(x.shape[0], device=x.device))
        if self._private is None:
            self._private = choose(ghost_fn(self.model, self.names, (), self.loss_fn, dp.clip),
                                   client_fn(self.model, self.names, (), self.loss_fn, dp.clip),
                                   args, dp.clip)
            self._scratch = torch.empty(self.layout.num_trainable, dtype=self.grads.dtype)
        *sums, loss = self._private(*args)
        torch.cat([g.reshape(-1) for g in sums], out=self.grads)
        add_noise(self.grads, count=int(x.shape[0]), clip=dp.clip,
                  noise_multiplier=dp.noise_multiplier, generator=noise, scratch=self._scratch)
        return loss.detach()

    def _pass(self, extra: ExtraPass, downlink: Downlink,
              indices: torch.Tensor) -> tuple[torch.Tensor, Mean]:
        """One more SGD pass (Ditto's personal model) from ``extra.start``."""
        self.working.load(extra.start(downlink))
        gen = torch_generator(self.seed, downlink.round, downlink.client_id, extra.purpose)
        loss, _ = self._sgd(downlink, indices, gen, extra.correct_grads,
                            noise=self._noise(downlink, "/" + extra.name))
        return self._host(self.working.read()), loss

    def _host(self, t: torch.Tensor) -> torch.Tensor:
        """A copy on the CPU, where the server aggregates."""
        return t.clone() if self.device.type == "cpu" else t.to("cpu", copy=True)

    def _bind_grads(self) -> None:
        trainable = [e for e in self.layout.entries if e.trainable]
        for e, p in zip(trainable, self.params, strict=True):
            p.grad = self.working.grad_view(self.grads, e)

    def local_gradient(self, indices: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """The gradient of the mean task loss over the given examples at the current model."""
        self._bind_grads()
        self.grads.zero_()
        n = int(indices.shape[0])
        for start in range(0, n, batch_size):
            x, y = self.train.batch(indices[start:start + batch_size])
            torch.autograd.backward(self.loss_fn(self.model(self.working.input(x)), y)
                                    * (y.shape[0] / n))
        grad = self._host(self.grads)
        self.working.to_layout_order(grad)
        self.grads.zero_()
        return grad

    def local_loss(self, indices: torch.Tensor, batch_size: int = 1000) -> Mean:
        """The current model's mean task loss over the given training examples (no grad)."""
        total = torch.zeros((), dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, int(indices.shape[0]), batch_size):
                x, y = self.train.batch(indices[start:start + batch_size])
                total += self.loss_fn(self.model(self.working.input(x)), y).double() * y.shape[0]
        return Mean(float(total), float(indices.shape[0]))


class _View:
    """The :class:`~fedloom.algorithms.base.LocalView` a trainer offers its ``before`` hook."""

    def __init__(self, trainer: LocalTrainer, indices: torch.Tensor) -> None:
        self.trainer, self.indices = trainer, indices

    def loss(self) -> Mean:
        return self.trainer.local_loss(self.indices)

    def gradient(self) -> torch.Tensor:
        return self.trainer.local_gradient(self.indices)
