"""Data attacks: the malicious clients train on poisoned copies of their examples.

:func:`poison` returns the federated data with poisoned copies of the malicious clients'
examples appended to the training arrays and those clients' indices pointing at the copies;
every other client and the test set are untouched. Every fleet (serial, thread, process,
vectorized, distributed) reads clients' batches from these arrays, so the attack runs the same
on each, and honest clients never see a poisoned example.

* label flipping: every label ``y`` becomes ``C - 1 - y``;
* backdoor: a seeded ``poison_fraction`` of each malicious client's examples get the trigger
  (:func:`add_trigger`) and the target label.

Example:
    >>> x = torch.zeros(1, 1, 6, 6, dtype=torch.uint8)
    >>> add_trigger(x, size=2)[0, 0, -2:, -2:]
    tensor([[255,   0],
            [  0, 255]], dtype=torch.uint8)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch

from fedloom.attacks.config import AttackConfig, AttackName, BackdoorOptions
from fedloom.core.errors import ConfigError
from fedloom.core.rng import torch_generator
from fedloom.data.dataset import ArrayData, FederatedData


def add_trigger(x: torch.Tensor, *, size: int) -> torch.Tensor:
    """Images ``N x C x H x W`` (uint8) with a ``size x size`` checkerboard of white pixels
    (the top-left one white) in the bottom-right corner of every channel."""
    if x.dim() != 4 or x.dtype != torch.uint8 or min(x.shape[-2:]) < size:
        raise ConfigError(f"attack.name = backdoor: the trigger needs uint8 images N x C x H x W "
                          f"of at least {size} x {size} pixels, got {tuple(x.shape)} {x.dtype}")
    out = x.clone()
    i = torch.arange(size)
    white = (i[:, None] + i[None, :]) % 2 == 0
    corner = out[..., -size:, -size:]
    corner[..., white] = 255
    return out


def flip_labels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return (num_classes - 1) - y


def poison(data: FederatedData, attack: AttackConfig, malicious: Iterable[int],
           seed: int) -> FederatedData:
    """``data`` with the malicious clients' examples poisoned (see the module); itself for
    an attack that does not touch data."""
    if attack.name not in (AttackName.LABEL_FLIP, AttackName.BACKDOOR):
        return data
    train = data.arrays()
    clients = list(data.client_train)
    xs, ys, start = [train.x], [train.y], len(train)
    for cid in sorted(malicious):
        idx = clients[cid]
        x, y = train.x.index_select(0, idx), train.y.index_select(0, idx)
        if attack.name == AttackName.LABEL_FLIP:
            y = flip_labels(y, data.num_classes)
        else:
            x, y = _backdoor(x, y, attack.options, torch_generator(seed, 0, cid, "poison"),
                             data.num_classes)
        xs.append(x)
        ys.append(y)
        clients[cid] = torch.arange(start, start + len(idx), dtype=idx.dtype)
        start += len(idx)
    poisoned = ArrayData(x=torch.cat(xs), y=torch.cat(ys), mean=train.mean, std=train.std)
    return dataclasses.replace(data, train=poisoned, client_train=tuple(clients))


def _backdoor(x: torch.Tensor, y: torch.Tensor, opts: BackdoorOptions, gen: torch.Generator,
              num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    if opts.target >= num_classes:
        raise ConfigError(f"attack.target = {opts.target}: must be a label below "
                          f"{num_classes}")
    count = int(opts.poison_fraction * len(y) + 0.5)
    chosen = torch.randperm(len(y), generator=gen)[:count]
    x, y = x.clone(), y.clone()
    x[chosen] = add_trigger(x[chosen], size=opts.size)
    y[chosen] = opts.target
    return x, y


def triggered_test(test: ArrayData, opts: BackdoorOptions) -> ArrayData:
    """The test examples not of the target class, with the trigger and the target label: a
    model's accuracy on them is the backdoor's success rate."""
    keep = (test.y != opts.target).nonzero().squeeze(1)
    x = add_trigger(test.x.index_select(0, keep), size=opts.size)
    return ArrayData(x=x, y=torch.full((len(keep),), opts.target, dtype=test.y.dtype),
                     mean=test.mean, std=test.std)


__all__ = ["add_trigger", "flip_labels", "poison", "triggered_test"]
