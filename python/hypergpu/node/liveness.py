"""Whether the coordinator at the other end of a node's link is still there.

A coordinator killed outright says nothing more, and the link would fail only
at the transport's idle timeout (10 s), which is most of the time a restarted
coordinator waits for its nodes. The transports at both ends send a small
probe datagram every 0.5 s and answer the other's (``TransportConfig.ping_interval``),
so a live coordinator makes the link receive datagrams at least that often,
whatever the rounds are doing, and it does so from the transport's own threads,
busy Python or not. A link that has received no datagram for
``dead_after_s`` is taken as lost: the node reconnects at once.
"""

from __future__ import annotations

import asyncio
import time

from hypergpu.errors import TransportError
from hypergpu.transport import Connection

__all__ = ["DEAD_AFTER_S", "Silence", "recv_alive"]

#: Seconds without a datagram from the coordinator after which its link counts as lost
#: (six missed probes; the transport's own idle timeout is 10 s).
DEAD_AFTER_S = 3.0


class Silence:
    """How long a link has received nothing (sans-IO: fed the link's datagram count and a clock)."""

    def __init__(self, dead_after_s: float, received: int, now: float):
        self.dead_after_s = dead_after_s
        self._received = received
        self._since = now

    def dead(self, received: int, now: float) -> bool:
        """True once ``received`` (datagrams so far) has not grown for ``dead_after_s``."""
        if received != self._received:
            self._received, self._since = received, now
        return now - self._since >= self.dead_after_s


async def recv_alive(link: Connection, timeout: float | None, dead_after_s: float) -> bytes:
    """``link.recv(timeout)``, failing with a :class:`~hypergpu.errors.TransportError` as soon as
    the peer has sent no datagram at all (not even a probe) for ``dead_after_s``."""
    recv = asyncio.ensure_future(link.recv(timeout=timeout))
    silence = Silence(dead_after_s, link.stats().udp_datagrams_received, time.monotonic())
    poll_s = min(0.5, dead_after_s / 6)
    try:
        while True:
            done, _ = await asyncio.wait({recv}, timeout=poll_s)
            if done:
                return recv.result()
            if silence.dead(link.stats().udp_datagrams_received, time.monotonic()):
                raise TransportError(f"the coordinator sent nothing for {dead_after_s:g} s; taking its link as lost")
    finally:
        if not recv.done():
            recv.cancel()
