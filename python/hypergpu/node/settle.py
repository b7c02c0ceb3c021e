"""A node's updates between "received" and "applied" (sans-IO).

The coordinator acks an update twice: on receipt (taken into the open
round) and, once the round's outcome is durable (in a checkpoint), whether
it went into the model (:mod:`hypergpu.coordinator.settle`). Until then the
node keeps, per round, what it would need to take the update back:

- the change the update's encoding made to each error-feedback residual
  (a lossy codec's payload carries the residual, so an update that is never
  applied would lose it): folded back in when the round was not applied;
- the inner optimizer's state before the round trained: put back when the
  coordinator died and its successor resumed from a checkpoint before that
  round, so the node trains the round again from the same state (with
  ``coordinator.deterministic``, to the same parameters).

A welcome settles what acks a lost link or a dead coordinator never
delivered (:class:`Settlement`): its rounds applied or not, and — from
another life of the coordinator — every round after the checkpoint it
resumed from is lost. At most ``keep`` rounds are held; an older one is
taken as applied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hypergpu.protocol import Ack, WelcomeMeta


@dataclass(frozen=True)
class Settlement:
    """What a welcome says about the node's earlier updates (see :class:`~hypergpu.protocol.WelcomeMeta`)."""

    life: str = ""
    closed: int = 0
    applied: frozenset[int] = frozenset()
    not_applied: frozenset[int] = frozenset()
    held: frozenset[int] = frozenset()

    @classmethod
    def of(cls, meta: WelcomeMeta) -> Settlement:
        return cls(meta.life, meta.closed, frozenset(meta.applied), frozenset(meta.not_applied), frozenset(meta.held))


@dataclass
class Undo:
    """What to take back: residual changes by encoder, and an optimizer state to restore."""

    residuals: dict[int, np.ndarray] = field(default_factory=dict)
    optimizer: Any = None
    rounds: list[int] = field(default_factory=list)

    def add(self, round_id: int, residuals: dict[int, np.ndarray]) -> None:
        self.rounds.append(round_id)
        self._sum(residuals)

    def _sum(self, residuals: dict[int, np.ndarray]) -> None:
        for key, delta in residuals.items():
            held = self.residuals.get(key)
            self.residuals[key] = delta.copy() if held is None else held + delta

    def merge(self, other: Undo) -> None:
        """Add ``other`` (heard later): its residuals too; the optimizer state from before the earliest."""
        self.rounds += other.rounds
        self._sum(other.residuals)
        if self.optimizer is None:
            self.optimizer = other.optimizer

    def take_back(self, encoder: Callable[[int], Unsends], optimizer: HasState | None) -> None:
        """Fold each residual change back into ``encoder(key)`` and, when this holds a state and
        ``optimizer`` is given, put the optimizer back to it (both node drivers call this)."""
        for key, delta in self.residuals.items():
            encoder(key).unsend(delta)
        if optimizer is not None and self.optimizer is not None:
            optimizer.load_state_dict(self.optimizer)

    def __bool__(self) -> bool:
        return bool(self.rounds)


class Unsends(Protocol):
    """An update encoder (:class:`~hypergpu.node.update_encoder.UpdateEncoder`) as an undo sees it."""

    def unsend(self, delta: np.ndarray) -> None: ...


class HasState(Protocol):
    """An inner optimizer as an undo sees it (a torch optimizer)."""

    def load_state_dict(self, state: Any) -> None: ...


@dataclass
class _Round:
    residuals: dict[int, np.ndarray] = field(default_factory=dict)
    optimizer: Any = None


class Unsettled:
    """The node's rounds whose updates are not known applied yet."""

    def __init__(self, keep: int = 16):
        self.keep = keep
        self.life: str | None = None  # the coordinator life that last welcomed this node
        self._rounds: dict[int, _Round] = {}

    @property
    def rounds(self) -> list[int]:
        return sorted(self._rounds)

    def pending(self, round_id: int) -> bool:
        return round_id in self._rounds

    def began(self, round_id: int, optimizer_state: Any) -> None:
        """The node starts training ``round_id`` from ``optimizer_state`` (a copy it may keep)."""
        entry = self._rounds.setdefault(round_id, _Round())
        if entry.optimizer is None:
            entry.optimizer = optimizer_state
        while len(self._rounds) > self.keep:
            del self._rounds[min(self._rounds)]  # unheard of for too long: taken as applied

    def encoded(self, round_id: int, key: int, delta: np.ndarray | None) -> None:
        """Encoding ``round_id``'s update changed encoder ``key``'s residual by ``delta``."""
        if delta is None:
            return
        entry = self._rounds.setdefault(round_id, _Round())
        held = entry.residuals.get(key)
        entry.residuals[key] = delta if held is None else held + delta

    def acked(self, ack: Ack) -> Undo:
        """An outcome ack: an applied round is done with; one not applied gives its residual back."""
        undo = Undo()
        if ack.applied is None:
            return undo  # received only: keep holding
        entry = self._rounds.pop(ack.round, None)
        if entry is not None and not ack.applied:
            undo.add(ack.round, entry.residuals)
        return undo

    def welcomed(self, s: Settlement) -> Undo:
        """Settle by a welcome. From a new life of the coordinator, rounds after ``s.closed``
        are lost: their residuals come back and the optimizer goes back to before the first."""
        new_life = self.life is not None and s.life != self.life
        self.life = s.life
        undo = Undo()
        for round_id in sorted(self._rounds):
            if round_id in s.applied:
                del self._rounds[round_id]
            elif round_id in s.not_applied:
                undo.add(round_id, self._rounds.pop(round_id).residuals)
            elif new_life and round_id > s.closed and round_id not in s.held:
                entry = self._rounds.pop(round_id)
                if undo.optimizer is None:
                    undo.optimizer = entry.optimizer
                undo.add(round_id, entry.residuals)
            elif new_life and round_id <= s.closed:
                del self._rounds[round_id]  # decided, and no longer remembered: taken as applied
        return undo
