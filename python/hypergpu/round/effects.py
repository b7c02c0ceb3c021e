"""What each scored update did to a held-out loss, as a round's record carries it.

The coordinator measures a round's effects after the round has closed, off its
path (:mod:`hypergpu.coordinator.effects`), so a :class:`RoundRecord` is handed
on with a :class:`RoundEffects` that fills once, later: whoever needs the
figures (the chain tally, at an epoch's end) waits for them with
:meth:`RoundEffects.wait`; whoever only shows them (events, the API) shows
them once :attr:`RoundEffects.ready`. How an effect is judged is
:mod:`hypergpu.rewards.effect`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class NodeEffect:
    """One update applied alone to the round's base parameters, on the round's held-out batch."""

    # mean over the batch of (loss before - loss after): > 0 the update helped;
    # None when the loss after is not finite (the update broke the model)
    effect: float | None
    se: float | None  # standard error of that mean over the batch: the noise it is judged against
    loss_after: float | None
    harmful: bool  # worse beyond noise: the update earns nothing this round
    quality: float  # the round's quality multiplier: 0 when harmful, else 1.0 (noise) .. 1.5
    # what the effect was judged against: noise_z x se + margin x the loss before (None: not judged)
    noise: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RoundEffects:
    """The effects of one round's scored updates: filled once (from any thread), then read-only."""

    def __init__(self, round_id: int, nodes: Iterable[int], batch: int):
        self.round = round_id
        self.nodes = tuple(sorted(nodes))  # the updates drawn for scoring
        self.batch = batch  # held-out samples they are scored on
        self.loss_before: float | None = None
        self.error: str | None = None  # why the scoring failed (its updates then count as unscored)
        self._by_node: dict[int, NodeEffect] = {}
        self._done = threading.Event()

    def fill(self, effects: dict[int, NodeEffect], loss_before: float | None, error: str | None = None) -> None:
        """Set the results; only the first call counts."""
        if self._done.is_set():
            return
        self._by_node, self.loss_before, self.error = dict(effects), loss_before, error
        self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until filled (True) or ``timeout_s`` passes (False)."""
        return self._done.wait(timeout_s)

    def get(self, node_id: int) -> NodeEffect | None:
        """The node's effect (None: not scored, not ready yet, or the scoring failed)."""
        return self._by_node.get(node_id) if self._done.is_set() else None

    def items(self) -> list[tuple[int, NodeEffect]]:
        return sorted(self._by_node.items()) if self._done.is_set() else []

    def as_dict(self) -> dict[str, Any]:
        """The JSON form: what was scored and on how many samples, and, once ready, the loss before."""
        d: dict[str, Any] = {"scored": list(self.nodes), "batch": self.batch, "ready": self.ready}
        if self.ready:
            d["loss_before"] = self.loss_before
            d["harmful"] = [n for n, e in self.items() if e.harmful]
            if self.error is not None:
                d["error"] = self.error
        return d
