"""Ghost clipping gives the per-example (vmap) path's clipped sums on every kind of model, and
falls back where it cannot read the model."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fedloom.privacy.ghost import agrees, choose, ghost_fn
from fedloom.privacy.sample import client_fn


class Tokens(nn.Module):
    """Linear layers on (B, T, d) inputs: the sequence form of the ghost norm (T = 5: T^2 is
    below d_in d_out for the first layer and above it for the last)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x))).mean(1)


class Twice(nn.Module):
    """One linear layer applied twice: its gradient has two terms per example."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(torch.tanh(self.a(x.flatten(1)[:, :4])))


class BatchMix(nn.Module):
    """Examples that see each other (the batch mean is subtracted): not per-example at all."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)[:, :4]
        return self.a(h - h.mean(0, keepdim=True))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 3))


MODELS = {"mlp": (mlp, (1, 4, 4)), "tokens": (Tokens, (5, 6)), "cnn": (cnn, (1, 4, 4))}


def args(model: nn.Module, shape: tuple[int, ...], b: int = 6):
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(b, *shape, generator=gen)
    y = torch.randint(0, 2, (b,), generator=gen)
    w = torch.ones(b)
    w[-1] = 0.0  # padding: neither clipped into the sum nor counted
    return tuple(p.detach() for p in model.parameters()), (), x, y, w


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("clip", [0.05, 1e9])
def test_ghost_equals_per_example_gradients(name: str, clip: float) -> None:
    """Clipping active (0.05) and inactive (1e9), alone and vmapped over clients."""
    make, shape = MODELS[name]
    torch.manual_seed(1)
    model = make()
    names = [n for n, _ in model.named_parameters()]
    ghost = ghost_fn(model, names, (), F.cross_entropy, clip)
    ref = client_fn(model, names, (), F.cross_entropy, clip)
    assert ghost is not None
    a = args(model, shape)
    for got, want in zip(ghost(*a), ref(*a)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    k = 3
    stacked = (tuple(p + 0.1 * torch.randn(k, *p.shape) for p in a[0]), (),
               torch.randn(k, *a[2].shape), torch.randint(0, 2, (k, a[2].shape[0])),
               torch.ones(k, a[2].shape[0]))
    for got, want in zip(torch.vmap(ghost)(*stacked), torch.vmap(ref)(*stacked)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_other_layers_are_named_once(caplog: pytest.LogCaptureFixture) -> None:
    from collections import OrderedDict

    model = nn.Sequential(OrderedDict(conv_once=nn.Conv2d(1, 2, 3), flat=nn.Flatten(),
                                      fc=nn.Linear(8, 3)))
    names = [n for n, _ in model.named_parameters()]
    with caplog.at_level(logging.INFO, logger="fedloom.privacy.ghost"):
        ghost_fn(model, names, (), F.cross_entropy, 1.0)
        ghost_fn(model, names, (), F.cross_entropy, 1.0)
    said = [r.message for r in caplog.records if "Conv2d" in r.message]
    assert len(said) == 1 and "'conv_once'" in said[0]


@pytest.mark.parametrize("make", [Twice, BatchMix])
def test_falls_back_where_ghost_cannot_read_the_model(make: type[nn.Module]) -> None:
    """Twice: refused by its hooks; BatchMix: caught by the comparison on real data. Both then
    run the vmap path, and the chosen function gives its exact sums."""
    torch.manual_seed(2)
    model = make()
    names = [n for n, _ in model.named_parameters()]
    ghost = ghost_fn(model, names, (), F.cross_entropy, 0.1)
    ref = client_fn(model, names, (), F.cross_entropy, 0.1)
    assert ghost is not None
    a = args(model, (1, 4, 4))
    assert not agrees(ghost, ref, a, 0.1)
    assert choose(ghost, ref, a, 0.1) is ref


def test_no_linear_layer_means_no_ghost() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 4), nn.Flatten())
    assert ghost_fn(model, [n for n, _ in model.named_parameters()], (), F.cross_entropy,
                    1.0) is None
