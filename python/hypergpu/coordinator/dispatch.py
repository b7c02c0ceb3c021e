"""What goes down to each node: a round's work and the parameters to start from.

The coordinator deals a round (:class:`Dealt`: the plan, the samples each
participant is assigned, the ``(shard, index)`` rows it trains on) and
:class:`Dispatch` sends every participant its ``params`` message, each on
its own task so a slow link holds up no other. With ``training.overlap``
a round is dealt and sent one round ahead, with the parameters of the
moment: the node then has its next work in hand when it sends an update,
and folds the newer parameters in when they arrive.

The ``params`` meta says which round the work is for (``round``), which
model version the parameters are (``version``) and the last round whose
outer step they include (``closed``): a node needs the last to fold them
into a model that kept training.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hypergpu.coordinator.crashpoints import crash_point
from hypergpu.coordinator.membership import Membership
from hypergpu.coordinator.registry import NodeInfo
from hypergpu.errors import FrameError, HyperGPUError
from hypergpu.events import EventBus
from hypergpu.protocol import Control, Message, parse_meta
from hypergpu.round import NodeView, PlanView, RoundPlan
from hypergpu.update.downlink import ParamsEncoder

if TYPE_CHECKING:
    from hypergpu.coordinator.coordinator import Coordinator

log = logging.getLogger("hypergpu.coordinator")


@dataclass
class Dealt:
    """One round's plan and its work, dealt when the round opens or one round ahead."""

    plan: RoundPlan
    assigned: dict[int, int]  # samples each participant was given: caps and weighs its update
    work: dict[int, np.ndarray]  # rows of (shard, index) per participant that follows work
    sent: dict[int, tuple[float, int]] = field(default_factory=dict)  # node -> (when, bytes) of its message

    def mark_sent(self, node_id: int, nbytes: int, now: float) -> None:
        self.sent[node_id] = (now, nbytes)


def deal(coord: Coordinator, round_id: int) -> Dealt:
    """Plan ``round_id`` and deal its work (when it opens, or one round ahead with overlap)."""
    members = coord.members
    view = PlanView([
        NodeView(n.node_id, n.name, n.speed_factor, n.updates_accepted,
                 members.shard_samples(n.node_id), members.link_stats(n.node_id))
        for n in members.connected()
    ], num_params=coord.model.layout.total)
    plan = coord.planner.plan(round_id, view)
    for node_id, reason in coord.excluded.items():
        plan.leave_out(node_id, reason)
    # A node still receiving an earlier message sits this round out
    # rather than queue a second copy behind the first on a slow link.
    for node_id in list(plan.assignments):
        if coord.dispatch.busy(node_id):
            plan.leave_out(node_id, "still receiving the previous parameters")
    assigned = coord.work.assigned(plan)  # caps and weighs updates: never what nodes claim
    takers = [n for n in plan.participants if n in members.follows_work]
    return Dealt(plan, assigned, coord.work.deal(round_id, assigned, takers))


class Dispatch:
    """Sends parameters and work down, remembering which sends are still in flight."""

    def __init__(self, members: Membership, downlink: ParamsEncoder, events: EventBus,
                 spawn: Callable[[Any], asyncio.Task[Any]]):
        self.members = members
        self.downlink = downlink
        self.events = events
        self._spawn = spawn
        self._sending: dict[int, asyncio.Task[Any]] = {}

    def busy(self, node_id: int) -> bool:
        """Whether an earlier message to ``node_id`` is still on its way."""
        pending = self._sending.get(node_id)
        return pending is not None and not pending.done()

    def send_all(self, round_id: int, dealt: Dealt, params: np.ndarray, version: int, closed: int, *,
                 nodes: Iterable[int] | None = None, with_work: bool = True, kept: Iterable[int] = ()) -> None:
        """Send each participant of ``dealt`` (or those of ``nodes``) its message, each on its own task.

        ``with_work=False`` sends only the parameters, for a round whose work
        the node already holds (overlap: it folds them in and may then send).
        ``kept``: nodes whose message just before this one carried ``params``
        already (this one carries none of them when that one was framed).
        """
        chosen = dealt.plan.participants if nodes is None else [n for n in nodes if n in dealt.plan.assignments]
        kept = set(kept)
        for node_id in chosen:
            self._sending[node_id] = self._spawn(self._send(
                round_id, dealt, node_id, params, version, closed, with_work, node_id in kept,
                self._sending.get(node_id)))

    def send_ahead(self, round_id: int, dealt: Dealt, ahead: Dealt | None, fresh: bool,
                   params: np.ndarray, version: int, closed: int) -> None:
        """Overlap: the next round's work (``ahead``) goes out as ``round_id`` opens, so a
        node has it in hand the moment it sends this round's update; this round's
        participants without next work get the parameters alone (they fold them in,
        and may then send). ``fresh``: this round's own messages just went out."""
        if ahead is not None:
            # Fresh, the next work goes with the parameters this round's messages carry: not again.
            self.send_all(round_id + 1, ahead, params, version, closed,
                          kept=dealt.plan.participants if fresh else ())
        if not fresh:
            rest = [n for n in dealt.plan.participants if ahead is None or n not in ahead.plan.assignments]
            self.send_all(round_id, dealt, params, version, closed, nodes=rest, with_work=False)

    async def _send(self, round_id: int, dealt: Dealt, node_id: int, params: np.ndarray,
                    version: int, closed: int, with_work: bool, kept: bool,
                    before: asyncio.Task[Any] | None) -> None:
        if before is not None and not before.done():
            # One node's messages go out in order (a round's work before the next round's),
            # and each parameter delta is framed against what the message before it left.
            await asyncio.wait([before])
        link = self.members.links.get(node_id)
        if link is None:
            return
        assignment = dealt.plan.assignments[node_id]
        meta = {"round": round_id, "version": version, "closed": closed, **assignment.as_meta()}
        sections: dict[str, np.ndarray] = {}
        lent: list[int] = []
        work = dealt.work.get(node_id) if with_work else None
        if work is not None:
            lent = [int(s) for s in np.unique(work[:, 0])]
            # Shipped data the work lends this node travels with the work itself.
            sections = {"work": work, **self.members.lend(node_id, lent)}
        frame = self.downlink.frame(node_id, params, assignment.down_codec, meta, sections, kept=kept)
        try:
            if with_work:
                dealt.mark_sent(node_id, len(frame), time.perf_counter())
            await link.send(frame)
            self.members.registry.get(node_id).bytes_sent += len(frame)
            crash_point("send", round_id)  # a test's: one node has its parameters, others may not
        except HyperGPUError as exc:
            self.downlink.forget(node_id)  # it may not hold what was sent
            self.members.forget_delivered(node_id, lent)
            log.warning("node %d: sending round %d failed: %s", node_id, round_id, exc)
            self.events.publish("alert", level="warning", node=node_id, message=f"send failed: {exc}")


async def resync(coord: Coordinator, node: NodeInfo, msg: Message) -> None:
    """A node's only control message is ``resync``: it could not apply a parameter
    delta, so it gets the whole vector, right away if it still owes the open round."""
    try:
        control = parse_meta(Control, msg)
    except FrameError:
        control = None
    if control is None or control.type != "resync":
        node.refusals["unexpected"] += 1
        coord.refusals["unexpected"] += 1
        return
    coord.downlink.forget(node.node_id, resync=True)
    reason = control.reason
    coord.events.publish("node", type="resync", node=node.node_id, round=msg.round, reason=reason)
    rnd, dealt = coord._open, coord._ahead.get(msg.round)
    if rnd is not None and msg.round == rnd.id and rnd.owes(node.node_id):
        dealt = coord._dealt
    if dealt is not None and node.node_id in dealt.plan.assignments:
        coord.dispatch.send_all(msg.round, dealt, coord.model.flat_parameters(), coord.model.version,
                                coord.closed, nodes=[node.node_id])
