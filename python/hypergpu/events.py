"""A bounded, sequence-numbered stream of events for watchers.

The coordinator publishes what happens (rounds, nodes, network, alerts,
chain); the control plane relays it over WebSocket. Every event gets a
sequence number, so a client that reconnects can resume after the last one
it saw, as long as that event is still in the window. The window is the
only memory the stream keeps: a run of any length holds at most ``window``
events (``coordinator.event_window``).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

KINDS = ("training", "node", "network", "alert", "chain", "decision")

#: Events kept for watchers that resume (the default of ``coordinator.event_window``).
DEFAULT_WINDOW = 10_000


@dataclass(frozen=True)
class Event:
    seq: int
    kind: str
    time: float
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "time": self.time, "data": self.data}


class EventBus:
    def __init__(self, window: int = DEFAULT_WINDOW):
        if window < 1:
            raise ValueError(f"an event window holds at least one event, not {window}")
        self._events: deque[Event] = deque(maxlen=window)
        self._seq = 0
        # Publishers run on the event loop and on threads (the chain sender, to_thread
        # work): sequence numbers and the window change together, under this lock.
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def window(self) -> int:
        return self._events.maxlen or 0

    @property
    def oldest_seq(self) -> int:
        """The sequence number of the oldest event still held (``last_seq + 1`` when none is)."""
        with self._lock:
            return self._events[0].seq if self._events else self._seq + 1

    def publish(self, kind: str, **data: Any) -> Event:
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {KINDS}")
        with self._lock:
            self._seq += 1
            event = Event(self._seq, kind, time.time(), data)
            self._events.append(event)
            waiters = list(self._waiters)
        for loop, flag in waiters:
            # Publishers may run on another thread than the subscriber's loop.
            loop.call_soon_threadsafe(flag.set)
        return event

    def since(self, seq: int) -> list[Event]:
        """Events after ``seq`` still held in the window, oldest first.

        Sequence numbers in the window are consecutive, so the new events are the
        last ``last_seq - seq`` ones: a watcher that keeps up costs what it reads,
        not the window's length."""
        with self._lock:
            new = min(self._seq - seq, len(self._events))
            if new <= 0:
                return []
            out = list(itertools.islice(reversed(self._events), new))
        out.reverse()
        return out

    async def subscribe(self, after: int = 0) -> AsyncIterator[Event]:
        """Yield events after ``after`` as they are published, forever."""
        flag = asyncio.Event()
        entry = (asyncio.get_running_loop(), flag)
        with self._lock:
            self._waiters.append(entry)
        try:
            while True:
                flag.clear()
                for event in self.since(after):
                    after = event.seq
                    yield event
                await flag.wait()
        finally:
            with self._lock:
                self._waiters.remove(entry)
