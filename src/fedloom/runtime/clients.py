"""What a deployed client computes: subclass :class:`Client`, pass a function, or reuse fedloom's
own local trainer.

Two styles are built in, for people coming from Flower and from FedLab:

* Flower: override ``fit(parameters, config) -> (parameters, num_examples, metrics)`` and
  ``evaluate(parameters, config) -> (loss, num_examples, metrics)``; ``parameters`` is the model
  as a list of tensors in ``state_dict`` order (numpy arrays are accepted back), ``config`` the
  round's training settings. ``get_properties(config)`` answers property requests.
* FedLab: override ``local_process(payload, config)`` (``payload[0]`` is the flat model) and
  ``uplink_package() -> [flat params]`` or ``[flat params, num_examples]``.

Plain functions work too: ``FunctionClient(fit=my_fit)``. :class:`TrainerClient` runs
:class:`~fedloom.training.trainer.LocalTrainer`, the loop every simulation fleet runs, so a deployed
run computes what the simulation computes, bit for bit. The runner calls the template methods
:meth:`Client.run_fit` and :meth:`Client.run_evaluate`; override those to see the whole
:class:`Downlink` (round, client id, algorithm extras).

Example:
    >>> class Zero(Client):
    ...     def fit(self, parameters, config):
    ...         return [torch.zeros_like(p) for p in parameters], 1, {"train_loss": 0.0}
    >>> layout = ParamLayout.from_module(torch.nn.Linear(2, 1))
    >>> down = Downlink(round=1, client_id=0, params=torch.ones(3), config=ClientConfig())
    >>> Zero().run_fit(down, layout).params
    tensor([0., 0., 0.])
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from fedloom.core.errors import ClientError
from fedloom.core.layout import ParamLayout
from fedloom.core.metrics import Mean
from fedloom.core.packages import ClientConfig, ClientResult, Downlink
from fedloom.core.threads import torch_threads
from fedloom.training.trainer import LocalTrainer
from fedloom.transport.messages import Scalar

Params = Sequence[torch.Tensor | np.ndarray[Any, Any]] | torch.Tensor
FitReturn = tuple[Params, int, Mapping[str, float]]
EvaluateReturn = tuple[float, int, Mapping[str, float]]
FitFn = Callable[[list[torch.Tensor], dict[str, Scalar]], FitReturn]
EvaluateFn = Callable[[list[torch.Tensor], dict[str, Scalar]], EvaluateReturn]


def task_config(round: int, client_id: int, config: ClientConfig) -> dict[str, Scalar]:
    """The ``config`` dict a Flower-style method receives."""
    out: dict[str, Scalar] = {"round": round, "client_id": client_id}
    out.update({k: v for k, v in asdict(config).items() if v is not None})
    return out


def flat_params(params: Params, layout: ParamLayout) -> torch.Tensor:
    """A model as the layout's flat vector, from a flat tensor or per-tensor arrays."""
    if isinstance(params, torch.Tensor):
        flat = params.detach().reshape(-1).to(layout.dtype)
    else:
        parts = [torch.as_tensor(p) for p in params]
        if len(parts) != len(layout.entries):
            raise ClientError(f"fit returned {len(parts)} tensors, the model has "
                              f"{len(layout.entries)}")
        flat = layout.flatten({e.name: p for e, p in zip(layout.entries, parts, strict=True)})
    if flat.shape != (layout.size,):
        raise ClientError(f"fit returned {flat.numel()} values, the model has {layout.size}")
    return flat


class Client:
    """A deployed client. Override the Flower-style or the FedLab-style methods."""

    _layout: ParamLayout

    def on_welcome(self, layout: ParamLayout, run_config: str) -> None:
        """Called when the server accepts the connection (its layout and run config)."""

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        return {}

    def get_parameters(self, config: dict[str, Scalar]) -> Params:
        """Flower style: this client's model (``state_dict`` order, or flat), asked for when
        the server starts with ``initial_parameters="client"``."""
        raise NotImplementedError("this client has no initial model (override "
                                  "get_parameters)")

    def run_get_parameters(self, layout: ParamLayout,
                           config: dict[str, Scalar]) -> torch.Tensor:
        self._layout = layout
        return flat_params(self.get_parameters(config), layout)

    def fit(self, parameters: list[torch.Tensor], config: dict[str, Scalar]) -> FitReturn:
        """Flower style: train from ``parameters``; return (parameters, num_examples, metrics).
        The default runs the FedLab-style ``local_process`` / ``uplink_package`` pair."""
        if type(self).local_process is Client.local_process:
            raise NotImplementedError("override fit (Flower style) or local_process and "
                                      "uplink_package (FedLab style)")
        layout = self._layout
        self.local_process([layout.flatten(dict(zip(layout.names, parameters, strict=True)))],
                           config)
        package = self.uplink_package()
        if not package:
            raise ClientError("uplink_package returned nothing")
        num = int(package[1].item()) if len(package) > 1 else int(config.get("num_examples", 1))
        return package[0], num, {}

    def evaluate(self, parameters: list[torch.Tensor],
                 config: dict[str, Scalar]) -> EvaluateReturn:
        """Flower style: (loss, num_examples, metrics) of ``parameters`` on local data."""
        raise NotImplementedError("this client does not evaluate (override evaluate)")

    def local_process(self, payload: list[torch.Tensor], config: dict[str, Scalar]) -> None:
        """FedLab style: train from ``payload[0]``, the flat global model."""
        raise NotImplementedError

    def uplink_package(self) -> list[torch.Tensor]:
        """FedLab style: ``[flat params]`` or ``[flat params, num_examples]``."""
        raise NotImplementedError("override uplink_package with local_process")

    # -- template methods the runner calls ---------------------------------------------------

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        self._layout = layout
        params = list(layout.unflatten(downlink.params).values())
        new, num_examples, metrics = self.fit(
            params, task_config(downlink.round, downlink.client_id, downlink.config))
        return ClientResult(round=downlink.round, client_id=downlink.client_id,
                            params=flat_params(new, layout), num_examples=int(num_examples),
                            num_steps=0, metrics={k: Mean.of(float(v), num_examples)
                                                  for k, v in metrics.items()})

    def run_evaluate(self, params: torch.Tensor, config: ClientConfig, layout: ParamLayout,
                     *, round: int, client_id: int) -> tuple[dict[str, Mean], int]:
        self._layout = layout
        loss, n, metrics = self.evaluate(list(layout.unflatten(params).values()),
                                         task_config(round, client_id, config))
        out = {"test_loss": Mean.of(float(loss), n)}
        out.update({k: Mean.of(float(v), n) for k, v in metrics.items()})
        return out, int(n)


class WrappedClient(Client):
    """A client that changes how ``inner`` fits and leaves the rest (welcome, properties,
    parameters, evaluation) to it: subclasses implement ``run_fit``."""

    def __init__(self, inner: Client) -> None:
        self.inner = inner

    def on_welcome(self, layout: ParamLayout, run_config: str) -> None:
        self.inner.on_welcome(layout, run_config)

    def get_properties(self, config: dict[str, Scalar]) -> dict[str, Scalar]:
        return self.inner.get_properties(config)

    def run_get_parameters(self, layout: ParamLayout,
                           config: dict[str, Scalar]) -> torch.Tensor:
        return self.inner.run_get_parameters(layout, config)

    def run_evaluate(self, params: torch.Tensor, config: ClientConfig, layout: ParamLayout,
                     *, round: int, client_id: int) -> tuple[dict[str, Mean], int]:
        return self.inner.run_evaluate(params, config, layout, round=round, client_id=client_id)


class FunctionClient(Client):
    """A client from plain functions with the Flower-style signatures."""

    def __init__(self, fit: FitFn, evaluate: EvaluateFn | None = None) -> None:
        self._fit = fit
        self._evaluate = evaluate

    def fit(self, parameters: list[torch.Tensor], config: dict[str, Scalar]) -> FitReturn:
        return self._fit(parameters, config)

    def evaluate(self, parameters: list[torch.Tensor],
                 config: dict[str, Scalar]) -> EvaluateReturn:
        if self._evaluate is None:
            return super().evaluate(parameters, config)
        return self._evaluate(parameters, config)


class TrainerClient(Client):
    """fedloom's own local SGD (:class:`LocalTrainer`) for one or more client ids.

    Several connections (one per client id) may share it: training is serialised by a lock.
    Torch runs with ``threads`` threads while training (None: all cores), as the simulation's
    loop does, so the arithmetic and its bits are the same. Evaluation reports loss and
    accuracy on the client's own examples.
    """

    def __init__(self, trainer: LocalTrainer, *, threads: int | None = None) -> None:
        self.trainer = trainer
        self.threads = threads
        self._lock = threading.Lock()

    def on_welcome(self, layout: ParamLayout, run_config: str) -> None:
        mine = self.trainer.layout
        if [(e.name, e.shape) for e in mine.entries] != [(e.name, e.shape)
                                                         for e in layout.entries]:
            raise ClientError("the server's model does not match this client's model "
                              f"({layout.size} values vs {mine.size}); check model.name and "
                              "the data settings on both sides")

    def get_parameters(self, config: dict[str, Scalar]) -> Params:
        """The trainer's model as it is (its seeded initial model before any fit)."""
        with self._lock:
            return self.trainer.layout.flatten(dict(self.trainer.model.state_dict()))

    def run_fit(self, downlink: Downlink, layout: ParamLayout) -> ClientResult:
        if not 0 <= downlink.client_id < len(self.trainer.client_indices):
            raise ClientError(f"this client holds no data for client id {downlink.client_id}")
        with self._lock, torch_threads(self.threads):
            return self.trainer.fit(downlink)

    def run_evaluate(self, params: torch.Tensor, config: ClientConfig, layout: ParamLayout,
                     *, round: int, client_id: int) -> tuple[dict[str, Mean], int]:
        """Loss and accuracy of ``params`` on this client's examples (its only data)."""
        trainer = self.trainer
        indices = trainer.client_indices[client_id]
        loss = torch.zeros((), dtype=torch.float64)
        correct = 0
        with self._lock, torch_threads(self.threads), torch.inference_mode():
            trainer.bound.load(params)
            trainer.model.eval()
            for start in range(0, int(indices.shape[0]), 1000):
                x, y = trainer.train.batch(indices[start:start + 1000])
                logits = trainer.model(x)
                loss += trainer.loss_fn(logits, y).double() * y.shape[0]
                correct += int((logits.argmax(1) == y).sum())
        n = float(indices.shape[0])
        return {"test_loss": Mean(float(loss), n), "test_accuracy": Mean(float(correct), n)}, int(n)
