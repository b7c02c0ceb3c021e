"""Updates as they arrive: judged by the open round and acked, or held while a round closes.

Between a round's seal and the next round's opening (the aggregate, the outer
step, the next plan: seconds with a large model and ten updates) an update
has no round to go to. It used to be refused as ``closed`` and its work was
lost: in a WAN bench run a 2 Mbit/s host's round-3 update landed in that
window, and the planner then also left the host out of a later round as
still owing it. It is now held and handed to the next round as that opens,
where it counts like any update that missed its round (late, stale-weighted,
or refused as late where the policy drops them).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from hypergpu.coordinator.registry import NodeInfo
from hypergpu.protocol import Ack, Message

if TYPE_CHECKING:
    from hypergpu.coordinator.coordinator import Coordinator

log = logging.getLogger("hypergpu.coordinator")

#: Updates held while a round closes; beyond this they are refused as ``closed`` (a flood).
MAX_HELD = 1024


class UpdateIntake:
    """Judges each ``update`` message by the open round and acks it."""

    def __init__(self, coord: Coordinator):
        self.coord = coord
        self._held: list[tuple[NodeInfo, Message, int]] = []

    async def arrived(self, node: NodeInfo, msg: Message, size: int) -> None:
        node.bytes_received += size
        rnd = self.coord._open
        if rnd is not None and rnd.sealed and len(self._held) < MAX_HELD:
            self._held.append((node, msg, size))  # the next round takes it as it opens
            return
        await self._judge(node, msg, size)

    async def round_opened(self) -> None:
        """Hand the updates held while the last round closed to the round just opened."""
        held, self._held = self._held, []
        for node, msg, size in held:
            await self._judge(node, msg, size)

    async def _judge(self, node: NodeInfo, msg: Message, size: int) -> None:
        coord = self.coord
        rnd = coord._open
        if rnd is None:  # before the first round
            verdict = coord.book.check(node.node_id, msg.round).verdict.value
            ack = Ack(round=msg.round, accepted=False, reason=verdict)
        else:
            ack = rnd.accept(node.node_id, msg, size, time.perf_counter())
        if ack.accepted:
            coord._progress.set()
        elif ack.reason is not None:
            node.refusals[ack.reason] += 1
            coord.refusals[ack.reason] += 1
            if ack.detail:
                coord.events.publish("alert", level="warning", node=node.node_id, message=f"update refused: {ack.detail}")
                log.warning("node %d: update for round %d refused: %s", node.node_id, msg.round, ack.detail)
        await coord.members.send(node.node_id, Message("ack", ack.as_meta(), round=msg.round))
