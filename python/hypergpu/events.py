"""A bounded, sequence-numbered stream of events for watchers.

The coordinator publishes what happens (rounds, nodes, network, alerts,
chain); the control plane relays it over WebSocket. Every event gets a
sequence number, so a client that reconnects can resume after the last one
it saw, as long as that event is still in the window.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

KINDS = ("training", "node", "network", "alert", "chain", "decision")


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    time: float
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "time": self.time, "data": self.data}


class EventBus:
    def __init__(self, window: int = 10_000):
        self._events: deque[Event] = deque(maxlen=window)
        self._seq = 0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def last_seq(self) -> int:
        return self._seq

    def publish(self, kind: str, **data: Any) -> Event:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {KINDS}")
        self._seq += 1
        event = Event(self._seq, kind, time.time(), data)
        self._events.append(event)
        for loop, flag in self._waiters:
            # Publishers may run on another thread than the subscriber's loop.
            loop.call_soon_threadsafe(flag.set)
        return event

    def since(self, seq: int) -> list[Event]:
        """Events after ``seq`` still held in the window, oldest first."""
        return [e for e in self._events if e.seq > seq]

    async def subscribe(self, after: int = 0) -> AsyncIterator[Event]:
        """Yield events after ``after`` as they are published, forever."""
        flag = asyncio.Event()
        entry = (asyncio.get_running_loop(), flag)
        self._waiters.append(entry)
        try:
            while True:
                flag.clear()
                for event in self.since(after):
                    after = event.seq
                    yield event
                await flag.wait()
        finally:
            self._waiters.remove(entry)

