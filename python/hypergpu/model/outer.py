"""Outer optimizers: how a round's averaged update moves the model.

The nodes' update is ``params_after - params_received``, the negative of a
pseudo-gradient. :class:`SGDOuter` with ``lr = 1`` is plain averaging;
:class:`NesterovOuter` is DiLoCo's outer step (lr 0.7, momentum 0.9), the
default whenever nodes take more than one local step. Its momentum may
warm up (``training.outer_momentum_warmup``): the k-th outer step then uses
``min(momentum, 1 - 1/k)`` (0, then 0.5, 0.67, ... up to 0.9 from the tenth
step). The first pseudo-gradients are large and change fast, and under
overlap (a one-round-delayed outer step) the second round's updates began
before the first outer step, so full momentum pushes them the same way
twice. On a small GPT in process this gained several rounds; on the issue
14 benchmark's 6.3M-parameter GPT it did not (the loss stalled in rounds
3-4 instead of 2), so it is off by default. An outer
optimizer's state (the Nesterov velocity and its step count) is part of
every coordinator checkpoint, so a resumed run steps exactly as an
uninterrupted one would.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from hypergpu.config.schema import HyperGPUConfig, TrainingConfig
from hypergpu.errors import CheckpointError, ConfigError
from hypergpu.model.manager import ModelManager

#: DiLoCo's outer learning rate for Nesterov momentum.
NESTEROV_LR = 0.7

#: The step count a checkpoint without one resumes at: past any warm-up.
WARMED_UP = 1_000_000

#: What an outer step covers: the whole model (None), a fragment (its slice) or parts of the whole.
Where = slice | tuple[slice, ...] | None


class OuterOptimizer(Protocol):
    """Applies a round's averaged update to the model; returns the new model version.

    ``where`` names what the update covers (Streaming DiLoCo): one slice, the
    fragment the update is (only it moves, and only its share of any optimizer
    state); or a tuple of slices of a whole-model update, the parts some node
    sent (``training.link_fragments``: only they move).
    """

    name: str

    def step(self, model: ModelManager, update: np.ndarray, where: Where = None) -> int: ...

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint (empty for a stateless optimizer)."""
        ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...


class SGDOuter:
    """``params += lr * update`` (``lr = 1``: the average itself)."""

    name = "sgd"

    def __init__(self, lr: float = 1.0):
        if not lr > 0:
            raise ConfigError(f"outer lr must be > 0, got {lr}")
        self.lr = lr

    def step(self, model: ModelManager, update: np.ndarray, where: Where = None) -> int:
        update = _whole(model, update, where)  # zero where nothing moves
        if self.lr == 1.0:
            return model.apply_update(update)
        return model.apply_update(_buffers_averaged(model, np.float32(self.lr) * update, update))

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if state:
            raise CheckpointError(f"the sgd outer optimizer keeps no state, got {sorted(state)}")


class NesterovOuter:
    """Nesterov momentum SGD on the averaged update.

    With velocity ``v = mu*v + u`` the step is ``params += lr * (u + mu*v)``
    (``torch.optim.SGD(nesterov=True)`` on the pseudo-gradient ``-u``).
    ``warmup``: ``mu`` at the k-th step is ``min(momentum, 1 - 1/k)``.
    """

    name = "nesterov"

    def __init__(self, lr: float = NESTEROV_LR, momentum: float = 0.9, *, warmup: bool = False):
        if lr <= 0 or not 0 <= momentum < 1:
            raise ConfigError(f"outer lr must be > 0 and momentum in [0, 1), got {lr}, {momentum}")
        self.lr, self.momentum, self.warmup = lr, momentum, warmup
        self.velocity: np.ndarray | None = None
        self.steps = 0  # outer steps taken (the model accepted)

    @property
    def current_momentum(self) -> float:
        """The momentum the next step uses."""
        return min(self.momentum, 1.0 - 1.0 / (self.steps + 1)) if self.warmup else self.momentum

    def step(self, model: ModelManager, update: np.ndarray, where: Where = None) -> int:
        update = _whole(model, update, where)
        # The new velocity is computed aside and kept only once the model has taken the step:
        # a step the model refuses (non-finite, parameters out of bounds) must not stay in the
        # momentum, or every later round would go on pushing the refused update.
        velocity = (np.zeros_like(update) if self.velocity is None or self.velocity.shape != update.shape
                    else self.velocity.copy())
        step = np.zeros_like(update)
        mu = np.float32(self.current_momentum)
        for part in _parts(update, where):
            moved = velocity[part]  # a fragment's momentum moves only when it is synced
            moved *= mu
            moved += update[part]
            step[part] = np.float32(self.lr) * (update[part] + mu * moved)
        for buffers in model.layout.buffer_slices:
            velocity[buffers] = 0.0
        version = model.apply_update(_buffers_averaged(model, step, update))
        self.velocity = velocity
        self.steps += 1
        return version

    def state_dict(self) -> dict[str, np.ndarray]:
        if self.velocity is None:
            return {}
        return {"velocity": self.velocity, "steps": np.array([self.steps], dtype=np.int64)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        unknown = set(state) - {"velocity", "steps"}
        if unknown:
            raise CheckpointError(f"unknown nesterov outer state {sorted(unknown)}")
        velocity = state.get("velocity")
        self.velocity = None if velocity is None else np.array(velocity, dtype=np.float32, copy=True)
        steps = state.get("steps")
        if steps is not None:
            self.steps = int(np.asarray(steps).reshape(-1)[0])
        else:  # none taken, or a checkpoint from before the count was kept (its warm-up is taken as done)
            self.steps = 0 if velocity is None else WARMED_UP


def _whole(model: ModelManager, update: np.ndarray, where: Where) -> np.ndarray:
    """A fragment's update laid into a zero vector of the whole model's size (parts are already whole)."""
    if where is None or isinstance(where, tuple):
        return update
    whole = np.zeros(model.layout.total, np.float32)
    whole[where] = update
    return whole


def _parts(update: np.ndarray, where: Where) -> tuple[slice, ...]:
    """The slices of the whole-model ``update`` that move."""
    if where is None:
        return (slice(0, update.size),)
    return where if isinstance(where, tuple) else (where,)


def _buffers_averaged(model: ModelManager, step: np.ndarray, update: np.ndarray) -> np.ndarray:
    """``step`` with every buffer's entries set to the plain average.

    Buffers such as batch-norm statistics are not descended on: momentum
    or a learning rate above 1 would extrapolate a running variance past
    zero and wreck the model (a CNN fell to chance accuracy for rounds).
    """
    for where in model.layout.buffer_slices:
        step[where] = update[where]
    return step


def outer_kind(training: TrainingConfig) -> str:
    """``sgd`` or ``nesterov``: ``auto`` is Nesterov whenever nodes take more than one local step."""
    if training.outer_optimizer != "auto":
        return training.outer_optimizer
    return "sgd" if training.local_steps == 1 else "nesterov"


def outer_optimizer_for(config: HyperGPUConfig) -> OuterOptimizer:
    """The configured outer optimizer (see ``training.outer_optimizer``)."""
    t = config.training
    if outer_kind(t) == "nesterov":
        return NesterovOuter(NESTEROV_LR if t.outer_lr is None else t.outer_lr, t.outer_momentum,
                             warmup=t.outer_momentum_warmup)
    return SGDOuter(1.0 if t.outer_lr is None else t.outer_lr)
