"""Which samples each participant trains on this round, and settling them after.

:class:`WorkDealer` turns a round's plan into ``(shard, index)`` rows per
node through the run's :class:`~hypergpu.data.sampler.WorkSampler` — the
planned work (steps × batch × accumulation) drawn first from the shards
the node holds, then from shards no participant holds — and, once the
round is recorded, counts the samples of applied updates as trained and
hands the rest out again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hypergpu.data.sampler import WorkSampler
from hypergpu.data.shards import ShardManager
from hypergpu.errors import UnknownNodeError
from hypergpu.round import RoundPlan, RoundRecord


class WorkDealer:
    """``mix``: nodes read any shard themselves, so each node's samples are drawn across all
    shards (see :class:`WorkSampler`); otherwise the shards a node holds come first."""

    def __init__(self, shards: ShardManager[Any], seed: int, epochs: int, *, mix: bool = False):
        self.shards = shards
        self.sampler = WorkSampler([len(s) for s in shards.shards], seed)
        self.epochs = epochs  # whole passes over its own shards, for a plan of 0 local steps
        self.mix = mix

    def assigned(self, plan: RoundPlan) -> dict[int, int]:
        """The samples each participant is to train on: steps x batch x accumulation (for a plan
        of 0 local steps, whole passes over the shards it holds)."""
        counts = {}
        for node_id, a in plan.assignments.items():
            steps = a.local_steps
            if steps == 0:
                own = sum(len(self.shards.shards[s]) for s in self._held(node_id)) or a.batch_size
                steps = -(-own // (a.batch_size * a.accumulation)) * self.epochs
            counts[node_id] = steps * a.batch_size * a.accumulation
        return counts

    def deal(self, round_id: int, assigned: dict[int, int], takers: list[int]) -> dict[int, np.ndarray]:
        """Each of ``takers`` (participants that train on named samples) gets its ``assigned`` rows."""
        held = {n: self._held(n) for n in takers}
        work: dict[int, np.ndarray] = {}
        for node_id in takers:
            others = [s for m in takers if m != node_id for s in held[m]]
            drawn = self.sampler.take((round_id, node_id), assigned[node_id],
                                      prefer=held[node_id], avoid=others, mix=self.mix)
            work[node_id] = drawn.pairs
        return work

    def settle(self, record: RoundRecord) -> None:
        """Samples of applied updates count as trained; the rest — those of a round not applied,
        and of an update the aggregation rule dropped (Krum) — are handed out again."""
        for answer in [*record.answers.values(), *record.late.values()]:
            key = (answer.round, answer.node_id)
            if record.applied and not answer.dropped:
                self.sampler.confirm(key)
            else:
                self.sampler.give_back(key)
        for node_id in record.participants:
            if node_id not in record.answers:
                # Never answered (or refused): another node trains these samples. A late
                # answer that is applied after all only trains them twice.
                self.sampler.give_back((record.round, node_id))

    def _held(self, node_id: int) -> list[int]:
        try:
            return self.shards.shard_ids_of(node_id)
        except UnknownNodeError:
            return []
