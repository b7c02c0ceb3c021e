"""Telling nodes what became of their updates: received, then applied or not.

An update's first ack says only that it was *received* (taken into the
open round). When the round closes, every node whose update it took hears
again — ``Ack(applied=True|False)`` — so a node can hold the error-feedback
residual an update carried until the update is in the model, and fold it
back when the round missed its quorum. An ack lost with a dropped link, or
with a coordinator that died, is made up for by the node's next welcome:
it names this coordinator's life, the last round closed and the node's
remembered outcomes (:func:`settlement`, from the round book).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hypergpu.protocol import Ack, Message
from hypergpu.round import RoundRecord

if TYPE_CHECKING:
    from hypergpu.coordinator.coordinator import Coordinator


def settlement(coord: Coordinator, node_id: int) -> dict[str, Any]:
    """The welcome's fields that settle ``node_id``'s earlier updates (outcomes only once durable)."""
    applied, not_applied = coord.book.outcomes(node_id)
    durable = coord.outcomes.durable
    return {"life": coord.life, "closed": coord.closed, "held": coord.book.held(node_id),
            "applied": [r for r in applied if r <= durable], "not_applied": [r for r in not_applied if r <= durable]}


class Outcomes:
    """Rounds whose outcome the nodes have not heard yet, sent once a checkpoint holds them
    (at once when the run keeps no checkpoints): an update acked as applied is never lost."""

    def __init__(self, coord: Coordinator):
        self.coord = coord
        self.durable = 0  # the newest round a written checkpoint holds
        self._waiting: list[RoundRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the writer's thread hands :meth:`written` to."""
        self._loop = loop

    def closed(self, record: RoundRecord) -> None:
        self._waiting.append(record)
        if not self.coord.checkpoints.every:
            self.durable = record.round
        self.coord._spawn(self.pump())

    def written(self, round_id: int) -> None:
        """The writer's thread: a checkpoint of ``round_id`` is in place."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._written, round_id)

    def _written(self, round_id: int) -> None:
        self.durable = max(self.durable, round_id)
        self.coord._spawn(self.pump())

    async def pump(self) -> None:
        """Tell the nodes the outcomes that are durable now."""
        ready = [r for r in self._waiting if r.round <= self.durable]
        self._waiting = [r for r in self._waiting if r.round > self.durable]
        for record in ready:
            await tell_outcomes(self.coord, record)


async def tell_outcomes(coord: Coordinator, record: RoundRecord) -> None:
    """Each node whose update the round took hears whether it went into the model
    (an update the aggregation rule dropped did not)."""
    sends = []
    for answer in [*record.answers.values(), *record.late.values()]:
        ack = Ack(round=answer.round, accepted=True, applied=record.applied and not answer.dropped)
        sends.append(coord.members.send(answer.node_id, Message("ack", ack.as_meta(), round=answer.round)))
    await asyncio.gather(*sends)
