"""Per-node batch size with gradient accumulation.

The global batch per optimizer step (the configured batch size times the
number of configured nodes) is shared among the round's participants;
nodes on slow links get a larger share, since each of their exchanges is
expensive and should carry more work. A node's share is split into a
micro-batch no larger than its memory bound and an accumulation count,
and it moves at most one step (a factor of ``step``) per round, and not
at all while the target stays within ``deadband`` of what it has (round
to round link noise would otherwise change it every round).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchBounds:
    minimum: int = 8
    maximum: int = 256  # what one micro-batch may hold (memory)
    powers_of_two: bool = True
    step: float = 2.0  # largest change factor per round
    deadband: float = 0.0  # relative change of the target too small to act on

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"batch bounds need 1 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if self.step <= 1:
            raise ValueError(f"batch step must be > 1, got {self.step}")


@dataclass(frozen=True)
class BatchChoice:
    batch_size: int
    accumulation: int

    @property
    def effective(self) -> int:
        return self.batch_size * self.accumulation


class BatchSizer:
    def __init__(self, bounds: BatchBounds, global_batch: int, max_accumulation: int = 16):
        self.bounds = bounds
        self.global_batch = global_batch
        self.max_accumulation = max_accumulation
        self.current: dict[int, int] = {}  # node -> effective batch it had last round

    def targets(self, latency_s: dict[int, float]) -> dict[int, int]:
        """Effective batch per node: the global batch shared by weight
        ``1 + latency / median latency`` (slower links carry more per exchange)."""
        if not latency_s:
            return {}
        median = sorted(latency_s.values())[len(latency_s) // 2] or 1e-3
        weights = {n: 1.0 + max(v, 0.0) / max(median, 1e-3) for n, v in latency_s.items()}
        total = sum(weights.values())
        return {n: max(1, round(self.global_batch * w / total)) for n, w in weights.items()}

    def choose(self, node_id: int, target: int, shard_size: int | None = None) -> BatchChoice:
        """Move the node's effective batch one step toward ``target`` and split it."""
        b = self.bounds
        prev = self.current.get(node_id)
        if prev is not None and abs(target - prev) <= b.deadband * prev:
            target = prev
        effective = target if prev is None else min(max(target, math.floor(prev / b.step)), math.ceil(prev * b.step))
        cap = b.maximum if shard_size is None else max(b.minimum, min(b.maximum, shard_size))
        effective = min(max(effective, b.minimum), cap * self.max_accumulation)
        micro = min(effective, cap)
        if b.powers_of_two:
            micro = max(b.minimum, _pow2_floor(micro))
        accumulation = max(1, min(self.max_accumulation, round(effective / micro)))
        self.current[node_id] = micro * accumulation
        return BatchChoice(micro, accumulation)

    def restore(self, node_id: int, effective: int) -> None:
        self.current[node_id] = effective


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)
