"""Finiteness checks of flat parameter vectors that stay cheap on a busy machine.

Each torch operation over more values than torch's parallel grain (32768) wakes the thread
pool; with other load on the machine a woken pool costs milliseconds per call, so checking a
cohort's updates one whole tensor at a time cost more than training them (1,000 updates of the
2NN: 8.8 s). These checks work block by block under the grain, in one thread.
"""

from __future__ import annotations

import math

import torch

#: values checked per operation on CPU (under torch's parallel grain)
CHECK_BLOCK = 1 << 15


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite. On CPU, block by block: a block whose sum is finite has
    only finite values (a NaN or infinity makes any sum non-finite); a sum that overflowed is
    checked value by value."""
    if values.device.type != "cpu":
        return bool(torch.isfinite(values).all())
    flat = values.reshape(-1)
    for lo in range(0, flat.shape[0], CHECK_BLOCK):
        block = flat[lo:lo + CHECK_BLOCK]
        if not math.isfinite(float(block.sum())) and not bool(torch.isfinite(block).all()):
            return False
    return True


def finite_squared_norm(values: torch.Tensor) -> bool:
    """Whether ``values`` and their squared L2 norm, accumulated in their dtype, are finite (a
    NaN or infinity anywhere makes the norm so too). No BLAS call: its threads wake per call."""
    flat = values.reshape(-1)
    if flat.device.type != "cpu":
        return bool(torch.isfinite(torch.dot(flat, flat)))
    total = torch.zeros((), dtype=flat.dtype)
    for lo in range(0, flat.shape[0], CHECK_BLOCK):
        total += flat[lo:lo + CHECK_BLOCK].square().sum()
    return bool(torch.isfinite(total))
