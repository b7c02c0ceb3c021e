"""Outer optimizers: how a round's averaged update moves the model.

The nodes' update is ``params_after - params_received``, the negative of a
pseudo-gradient. :class:`SGDOuter` with ``lr = 1`` is plain averaging;
:class:`NesterovOuter` is DiLoCo's outer step.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import ConfigError
from hypergpu.model.manager import ModelManager


class OuterOptimizer(Protocol):
    """Applies a round's averaged update to the model; returns the new model version."""

    def step(self, model: ModelManager, update: np.ndarray) -> int: ...


class SGDOuter:
    """``params += lr * update`` (``lr = 1``: the average itself)."""

    def __init__(self, lr: float = 1.0):
        if not lr > 0:
            raise ConfigError(f"outer lr must be > 0, got {lr}")
        self.lr = lr

    def step(self, model: ModelManager, update: np.ndarray) -> int:
        return model.apply_update(update, lr_scale=self.lr)


class NesterovOuter:
    """Nesterov momentum SGD on the averaged update.

    With velocity ``v = mu*v + u`` the step is ``params += lr * (u + mu*v)``.
    """

    def __init__(self, lr: float = 0.7, momentum: float = 0.9):
        if lr <= 0 or not 0 <= momentum < 1:
            raise ConfigError(f"outer lr must be > 0 and momentum in [0, 1), got {lr}, {momentum}")
        self.lr, self.momentum = lr, momentum
        self.velocity: np.ndarray | None = None

    def step(self, model: ModelManager, update: np.ndarray) -> int:
        if self.velocity is None or self.velocity.shape != update.shape:
            self.velocity = np.zeros_like(update)
        self.velocity *= np.float32(self.momentum)
        self.velocity += update
        return model.apply_update(update + np.float32(self.momentum) * self.velocity, lr_scale=self.lr)


def outer_optimizer_for(config: HyperGPUConfig) -> OuterOptimizer:
    """The configured outer optimizer: Nesterov when the adaptive planner asks for it, else SGD at ``server_lr``."""
    a = config.adapt
    if a.enabled and a.outer_optimizer == "nesterov":
        return NesterovOuter(a.outer_lr, a.outer_momentum)
    return SGDOuter(config.training.server_lr)
