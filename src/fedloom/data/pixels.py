"""Scalar statistics of uint8 data, for :class:`fedloom.data.dataset.ArrayData`'s normalisation."""

from __future__ import annotations

import numpy as np
import torch


def uint8_mean_std(x: torch.Tensor) -> tuple[float, float]:
    """The mean and standard deviation of ``x``'s values scaled to [0, 1].

    Exact and cheap for any size: computed from the 256-bin histogram of the values, never from
    a float copy of the data (CIFAR-10's 154M training pixels: 0.2 s). A constant (or empty)
    ``x`` gets std 1.0, so normalising by it is defined.

    Example:
        >>> uint8_mean_std(torch.tensor([0, 255], dtype=torch.uint8))
        (0.5, 0.5)
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"uint8_mean_std: expected uint8 values, got {x.dtype}")
    counts = torch.bincount(x.reshape(-1), minlength=256).numpy().astype(np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0, 1.0
    values = np.arange(256, dtype=np.float64) / 255.0
    mean = float((counts * values).sum() / total)
    std = float(np.sqrt((counts * (values - mean) ** 2).sum() / total))
    return mean, std if std > 1e-9 else 1.0  # (rounding leaves ~1e-17 for constant data)
