"""The loss a wrapped optimizer reports for a round (see :mod:`hypergpu.node.optimizer`)."""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch

__all__ = ["loss_value", "mean_loss"]


def loss_value(reported: object) -> torch.Tensor | float | None:
    """A reported loss as a detached scalar tensor or a float; None when it is neither.

    A tensor is kept as it is and read at the round boundary: reading a CUDA
    value every step would make the loop wait for the device each time.
    Detached, so the round's losses do not keep their autograd graphs alive.
    """
    if isinstance(reported, torch.Tensor):
        return reported.detach().float().mean()  # a per-sample loss counts as its mean
    if isinstance(reported, np.ndarray):
        return float(reported.mean())
    if isinstance(reported, numbers.Real):  # Python and numpy numbers
        return float(reported)
    return None


def mean_loss(losses: list[tuple[torch.Tensor | float, int]]) -> float | None:
    """The sample-weighted mean of ``(loss, samples)`` pairs over the finite losses (None without any)."""
    total = weight = 0.0
    for value, samples in losses:
        v = float(value)  # the first CUDA value read waits for the device; the rest are done
        if math.isfinite(v):
            total += v * samples
            weight += samples
    return total / weight if weight else None
