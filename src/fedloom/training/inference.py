"""A model for evaluation, loaded from flat parameters by copying, in the form that runs fastest.

Evaluation owns its tensors (training's are views into the flat vector), so it can keep them in
the layout inference runs fastest in. On CPU, models with 4-d weights (convolutions) are kept
``channels_last``, which oneDNN runs about 1.5x faster than the default layout (W2's CNN on
10,000 MNIST images, 1 thread: 1.7 s vs 2.6 s); a forward that cannot take channels-last tensors
(``.view`` on a non-contiguous activation) falls back to the default layout on its first batch.

Where every layer of such a model has a oneDNN form (``torch.utils.mkldnn.to_mkldnn``:
convolutions, linear and batch-norm layers; ReLU, pooling and ``nn.Flatten`` take oneDNN
tensors), a parameter load that is evaluated in more than one batch also gets a oneDNN copy of
the model, whose activations stay in oneDNN's blocked layout from layer to layer: W2's CNN, 5,000
images, 1 thread: 0.57 s against 0.74 s channels-last (2 threads: 0.28-0.33 against 0.39-0.46).
The copy is made from the loaded model (about 10 ms for that CNN), and its first batch is checked
against the channels-last forward; a model with a layer oneDNN tensors do not support
(``view``, local response norm, group norm) or a result that differs falls back for good. Only
rounding differs between the three forms.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from fedloom.core.layout import ParamLayout
from fedloom.models import ModelFn

log = logging.getLogger(__name__)

_onednn_available: Callable[[], bool] = torch.backends.mkldnn.is_available  # untyped in stubs


def _to_onednn(module: nn.Module) -> nn.Module:
    with warnings.catch_warnings():  # its modules are TorchScript's, which warns it is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch.utils import mkldnn

    convert: Callable[[nn.Module], nn.Module] = mkldnn.to_mkldnn  # untyped in torch's stubs
    return convert(module)


class InferenceModel:
    """A model for evaluation, loaded from flat parameters by copying (see the module)."""

    def __init__(self, model_fn: ModelFn, device: str | torch.device = "cpu") -> None:
        module = model_fn().to(device)
        self.layout = ParamLayout.from_module(module)
        self.channels_last = (torch.device(device).type == "cpu"
                              and any(p.dim() == 4 for p in module.parameters()))
        self._tried = not self.channels_last
        #: whether the oneDNN copy is used: None until its first batch was checked
        self.onednn: bool | None = None if (self.channels_last
                                            and _onednn_available()) else False
        self._fast: nn.Module | None = None
        self._batches = 0  # since the last load
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.module = module.eval()
        named = dict(module.named_parameters()) | dict(module.named_buffers())
        self._targets = [named[e.name] for e in self.layout.entries]

    def load(self, flat: torch.Tensor) -> None:
        """Copy flat parameters (in :attr:`layout` order) into the model."""
        with torch.no_grad():
            for e, target in zip(self.layout.entries, self._targets, strict=True):
                target.copy_(flat[e.offset:e.stop].view(e.shape))
        self._fast, self._batches = None, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn is not False and x.dim() == 4 and x.dtype == torch.float32:
            self._batches += 1
            if self._batches >= 2:  # a load evaluated in one batch is not worth a copy
                out = self._onednn(x)
                if out is not None:
                    return out
        return self._dense(x)

    def _onednn(self, x: torch.Tensor) -> torch.Tensor | None:
        """``x``'s output from the oneDNN copy (made on first use after a load), or None where
        the model has no working oneDNN form (then never again)."""
        try:
            if self._fast is None:
                self._fast = _to_onednn(copy.deepcopy(self.module))
            out = self._fast(x.contiguous().to_mkldnn())
            out = out.to_dense() if isinstance(out, torch.Tensor) and out.is_mkldnn else out
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the forward returned {type(out).__name__}, not a tensor")
        except (RuntimeError, TypeError, NotImplementedError, ImportError,
                AttributeError) as exc:  # no oneDNN form (or none in this torch)
            log.debug("evaluating without oneDNN modules: %s", exc)
            self.onednn, self._fast = False, None
            return None
        if self.onednn is None:  # once: the same numbers as the dense forward
            want = self._dense(x)
            if out.shape != want.shape or not torch.allclose(out, want, rtol=1e-3, atol=1e-4):
                log.debug("evaluating without oneDNN modules: their output differs")
                self.onednn, self._fast = False, None
                return want
            self.onednn = True
        return out

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last or x.dim() != 4:
            return cast(torch.Tensor, self.module(x))
        last = x.contiguous(memory_format=torch.channels_last)
        if self._tried:
            return cast(torch.Tensor, self.module(last))
        try:
            out = self.module(last)
        except RuntimeError as exc:
            log.debug("evaluating in the default layout: channels_last failed (%s)", exc)
            self.channels_last = False
            self._to_contiguous()
            return cast(torch.Tensor, self.module(x))
        self._tried = True
        return cast(torch.Tensor, out)

    def _to_contiguous(self) -> None:
        with torch.no_grad():
            for target in self._targets:
                if target.dim() == 4:  # fresh strides: size-1 dims make contiguous() a no-op
                    target.data = torch.empty(target.shape, dtype=target.dtype,
                                              device=target.device).copy_(target.data)
