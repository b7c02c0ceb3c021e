"""The configured network script: link changes at given rounds or times.

``network.events`` in the config name a node and a built-in link profile,
with either ``at_round`` or ``at_s`` (seconds after training starts). The
node shapes its own end of the link, so an event is a ``shape`` control
message to it; an event for a node that is not connected waits until it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypergpu.config.network import NetworkEvent
from hypergpu.protocol import Control, Message

log = logging.getLogger("hypergpu.coordinator")


class NetworkScript:
    """Runs the scheduled link changes of a run."""

    def __init__(self, events: list[NetworkEvent], send: Callable[[int, Message], Awaitable[bool]],
                 publish: Callable[..., Any]):
        self.pending = list(events)
        self._send = send
        self._publish = publish

    async def at_round(self, round_id: int) -> None:
        """Apply every round-scheduled event due by ``round_id`` (a disconnected node's waits)."""
        for event in [e for e in self.pending if e.at_round is not None and e.at_round <= round_id]:
            if await self._reshape(event.node, event.profile, round_id):
                self.pending.remove(event)

    async def run_timed(self, current_round: Callable[[], int]) -> None:
        """Apply the time-scheduled events as their time comes (runs until done or cancelled)."""
        started = time.perf_counter()
        for event in sorted((e for e in self.pending if e.at_s is not None), key=lambda e: e.at_s or 0.0):
            await asyncio.sleep(max(0.0, (event.at_s or 0.0) - (time.perf_counter() - started)))
            while event in self.pending:
                if await self._reshape(event.node, event.profile, current_round()):
                    self.pending.remove(event)
                else:
                    await asyncio.sleep(0.5)

    async def _reshape(self, node_id: int, profile: str, round_id: int) -> bool:
        """Tell a node to switch its link to ``profile``; False if it is not connected."""
        shape = Control(type="shape", profile=profile)
        if not await self._send(node_id, Message("control", shape.as_meta())):
            log.info("network event for node %d waits: not connected", node_id)
            return False
        self._publish("network", type="shape", node=node_id, profile=profile, round=round_id)
        return True
