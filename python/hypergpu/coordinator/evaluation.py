"""Evaluating each round's model on the held-out data, and telling the round.

Without overlap the coordinator evaluates a closed round's model before it
opens the next round: the nodes wait for the new parameters either way.
With ``training.overlap`` the nodes never wait, but the next round would: a
language model's held-out evaluation takes seconds of the CPU the nodes
share (15-20 s on the issue 14 benchmark's 2 cores), so the round opened
that much later and every update began from an older model. Under overlap
the evaluation therefore runs beside the next round, on a copy of the
model taken at the round boundary, and the round is told (history,
observers, events) once its figures are in. Rounds are told in order: a
round's evaluation is awaited before the next round is told.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from torch import nn

from hypergpu.round import RoundRecord

if TYPE_CHECKING:
    from hypergpu.coordinator.coordinator import Coordinator


class Evaluations:
    """When a round's model is evaluated, and the order rounds are told in."""

    def __init__(self, coord: Coordinator):
        self.coord = coord
        self.last: RoundRecord | None = None  # the last evaluated round
        self._beside: asyncio.Task[bool] | None = None  # under overlap: one round's, running beside the next

    def due(self, round_id: int) -> bool:
        t = self.coord.config.training
        return round_id % t.eval_interval == 0 or round_id == t.rounds

    async def after(self, record: RoundRecord) -> bool:
        """Evaluate (when due) and tell ``record``, a round just closed; whether the target
        was reached (by it or by the round evaluated beside it). Under overlap its
        evaluation starts beside the next round and its verdict comes with the next call
        or :meth:`settle`."""
        reached = await self.settle()
        t = self.coord.config.training
        if t.overlap and self.due(record.round) and record.round < t.rounds and not reached:
            module = self.coord.model.copy_module()  # now, on the loop: no outer step runs
            self._beside = self.coord._spawn(self._tell(record, module))  # cancelled with the coordinator
            return False
        return await self._tell(record, None) or reached

    async def settle(self) -> bool:
        """Wait for the evaluation running beside a round, if any; whether it reached the target."""
        beside, self._beside = self._beside, None
        return await beside if beside is not None else False

    async def _tell(self, record: RoundRecord, module: nn.Module | None) -> bool:
        coord, reached = self.coord, False
        if self.due(record.round):
            started = time.perf_counter()
            result = await asyncio.to_thread(coord.model.evaluate, coord.data.test, task=coord.task,
                                             indices=coord.data.eval_indices, module=module)
            record = self.last = replace(record.evaluated(result), eval_s=time.perf_counter() - started)
            reached = coord.task.reached(result, coord.config.training)
        await coord.tell_round(record)
        return reached
