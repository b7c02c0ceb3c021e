"""Local steps between syncs, per node.

A node on a slow link should compute longer between exchanges so its
link's cost is amortised: H is chosen so that compute time is about
``ratio`` times the exchange's communication time, within bounds, moving
by at most a factor ``step`` per round, and only when the ideal H is more
than ``deadband`` away from the current one. With overlap a node's
exchange travels while it computes, and what it must not do is sit idle
until the round after next is dealt: there H also fills the round's
period (``period_s``, set by the slowest link of the round), so every node
computes for about as long as the round lasts, and H never falls below the
configured one (``least``): a shorter work would hide nothing more, it would
only sync more often, each sync costing an aggregation, an evaluation and a
broadcast, and make the round follow the slowest link's noise. (The outer
optimizer that applies the averaged update lives in :mod:`hypergpu.model.outer`.)
"""

from __future__ import annotations

import math


class LocalStepChooser:
    def __init__(
        self, minimum: int, maximum: int, initial: int, ratio: float = 1.0, step: float = 2.0, deadband: float = 0.0
    ):
        if not 1 <= minimum <= maximum:
            raise ValueError(f"local step bounds need 1 <= minimum <= maximum, got {minimum}, {maximum}")
        self.minimum, self.maximum = minimum, maximum
        self.initial = min(max(initial, minimum), maximum)
        self.ratio, self.step, self.deadband = ratio, step, deadband
        self.current: dict[int, int] = {}

    def ideal(self, comm_s: float, step_s: float | None, period_s: float = 0.0) -> int:
        if step_s is None or step_s <= 0:
            return self.initial
        wanted = max(self.ratio * comm_s, period_s) / step_s
        return min(self.maximum, max(self.minimum, math.ceil(wanted)))

    def choose(self, node_id: int, comm_s: float, step_s: float | None, limit: int | None = None,
               period_s: float = 0.0, least: int | None = None) -> int:
        """H for this round; ``limit`` (at least the minimum) caps it, e.g. by how much data the node holds;
        ``period_s``: compute at least this long (overlap: the round's expected period); ``least``:
        no fewer steps than this (overlap: the configured H), the limit still capping it."""
        top = self.maximum if limit is None else max(self.minimum, min(self.maximum, limit))
        floor = min(max(least or self.minimum, self.minimum), top)
        want = min(max(self.ideal(comm_s, step_s, period_s), floor), top)
        prev = self.current.get(node_id, self.initial)
        if abs(want - prev) <= self.deadband * prev and prev <= top:
            want = prev
        steps = min(max(want, math.floor(prev / self.step)), math.ceil(prev * self.step))
        steps = min(max(steps, floor), top)
        self.current[node_id] = steps
        return steps

    def restore(self, node_id: int, steps: int) -> None:
        self.current[node_id] = steps
