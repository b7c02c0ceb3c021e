"""What one node's messages, or one round observer, may do to the run: no more than their share.

A node's ``metrics`` reach the event stream only as the figures
:class:`~hypergpu.protocol.NodeMetrics` allows (so no key of theirs can land on
an event's own fields, and nothing unbounded is kept in the event window); a
meta over :data:`~hypergpu.protocol.MAX_META` is refused by its size before it
is parsed. Both are counted as refusals with their own reason, and the node's
reader goes on. A round observer that raises is logged, counted in
``Coordinator.faults`` and published as an alert; the other observers and the
run go on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hypergpu.errors import FrameError, HyperGPUError, MessageTooLargeError
from hypergpu.protocol import Message, NodeMetrics, parse_meta

if TYPE_CHECKING:
    from hypergpu.coordinator.coordinator import Coordinator
    from hypergpu.coordinator.registry import NodeInfo
    from hypergpu.round import RoundRecord

log = logging.getLogger("hypergpu.coordinator")

#: Refusal reason: a message whose meta is larger than protocol.MAX_META.
META_TOO_LARGE = "meta-too-large"
#: Refusal reason: a metrics message with a key outside the allow-list or a value that is no finite number.
BAD_METRICS = "bad-metrics"
#: Refusal reason: a frame that is no message.
MALFORMED = "malformed"


def undecodable(exc: HyperGPUError) -> str:
    """The refusal reason for a frame ``protocol.decode`` refused."""
    return META_TOO_LARGE if isinstance(exc, MessageTooLargeError) else MALFORMED


def publish_metrics(coord: Coordinator, node: NodeInfo, msg: Message) -> None:
    """Publish a node's figures as a ``node`` event, or refuse the message and count it."""
    try:
        figures = parse_meta(NodeMetrics, msg).figures()
    except FrameError as exc:
        node.refusals[BAD_METRICS] += 1
        coord.refusals[BAD_METRICS] += 1
        log.warning("node %d: metrics refused: %s", node.node_id, exc)
        return
    coord.events.publish("node", type="metrics", node=node.node_id, **figures)


async def tell_observers(coord: Coordinator, record: RoundRecord) -> None:
    """Hand ``record`` to every round observer (plain functions or coroutine functions)."""
    for observer in coord.observers:
        try:
            result = observer(coord, record)
            if result is not None:
                await result
        except Exception as exc:  # an observer is not the run: whatever it raises stays its own
            name = getattr(observer, "__qualname__", type(observer).__name__)
            coord.faults[name] += 1
            log.exception("round observer %s failed on round %d", name, record.round)
            coord.events.publish("alert", level="error", round=record.round, observer=name,
                                 message=f"round observer {name} failed: {type(exc).__name__}: {exc}")
