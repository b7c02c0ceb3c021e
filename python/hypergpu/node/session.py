"""A node's link to the coordinator (the I/O half of the node protocol).

:class:`Session` owns the link: it connects with backoff, introduces the
node (``hello``), resends over a fresh link when one breaks, applies link
shaping and sends heartbeats. What the coordinator's messages mean is
decided in :mod:`hypergpu.node.protocol`; the built-in
:class:`~hypergpu.node.runtime.Node` and the wrapped optimizer's
:class:`~hypergpu.node.background.BackgroundLink` each drive a session and
feed what it receives to a :class:`~hypergpu.node.protocol.NodeProtocol`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hypergpu import protocol
from hypergpu.errors import AuthError, HyperGPUError, TransportError
from hypergpu.identity import NodeKey, join_fingerprint
from hypergpu.node.liveness import DEAD_AFTER_S, recv_alive
from hypergpu.node.protocol import NodeReport, signed_hello
from hypergpu.protocol import Hello, Message
from hypergpu.transport import Connection, LinkShape, TransportConfig, connect

__all__ = ["Backoff", "Session"]

log = logging.getLogger("hypergpu.node")


@dataclass
class Backoff:
    """Jittered exponential backoff between retries: about first, first*factor, … up to ``cap``.

    By default a node never gives up: a coordinator that restarts (with its
    kept identity) finds its nodes still knocking. ``attempts`` or
    ``give_up_s`` (seconds of retrying) bound it.
    """

    first_s: float = 0.2
    factor: float = 2.0
    cap_s: float = 5.0
    attempts: int | None = None
    give_up_s: float | None = None
    #: a coordinator that sent nothing, not even the transport's probes, this long is taken as
    #: gone and the node reconnects (:mod:`hypergpu.node.liveness`)
    dead_after_s: float = DEAD_AFTER_S

    def delays(self) -> Iterator[float]:
        """The waits before each retry; the jitter (50–100 %) keeps many nodes from knocking at once."""
        started = time.monotonic()
        for i in itertools.count():
            if self.attempts is not None and i >= self.attempts:
                return
            delay = min(self.cap_s, self.first_s * self.factor ** min(i, 64)) * random.uniform(0.5, 1.0)
            if self.give_up_s is not None and time.monotonic() - started + delay > self.give_up_s:
                return
            yield delay


class Session:
    """One node's link to the coordinator, kept up across failures.

    ``on_message`` is called with the message (the welcome) that
    :meth:`send` had to wait for after reconnecting; a receive loop sees
    the others itself.
    """

    def __init__(
        self,
        join: str,
        *,
        token: str,
        name: str,
        hello: Hello,
        key: NodeKey,
        shape: LinkShape | None = None,
        backoff: Backoff | None = None,
        heartbeat_s: float = 1.0,
        report: NodeReport | None = None,
        on_message: Callable[[Message], object] | None = None,
        transport: TransportConfig | None = None,
    ):
        self.join = join
        self.token = token
        self.name = name
        self.hello = hello
        self.key = key
        self.shape = shape
        self.backoff = backoff or Backoff()
        self.heartbeat_s = heartbeat_s
        self.report = report if report is not None else NodeReport(node_id=None)
        self.on_message = on_message
        self.link: Connection | None = None
        self.transport = transport  # the transport's settings (its congestion controller among them)

    async def connect(self) -> Connection:
        """Connect and say hello (signed for this connection: see :mod:`hypergpu.identity`),
        retrying with backoff; sets and returns :attr:`link`."""
        fingerprint = join_fingerprint(self.join)
        last: Exception | None = None
        for attempt, delay in enumerate(itertools.chain([0.0], self.backoff.delays())):
            if delay:
                await asyncio.sleep(delay)
            try:
                link = await connect(self.join, token=self.token, name=self.name, shape=self.shape,
                                     config=self.transport)
                me = signed_hello(self.hello, self.key, link.challenge, fingerprint)
                await link.send(protocol.encode(Message("hello", me.as_meta())))
                if attempt:
                    self.report.reconnects += 1
                log.info("%s: connected, sending with %s congestion control", self.name,
                         (self.transport or TransportConfig()).congestion)
                self.link = link
                return link
            except AuthError:
                raise  # a wrong token or fingerprint stays wrong: retrying would knock forever
            except TransportError as exc:
                last = exc
                log.info("%s: connect attempt %d failed: %s", self.name, attempt + 1, exc)
        raise TransportError(f"{self.name}: could not reach the coordinator: {last}")

    async def reconnect(self, welcome_timeout_s: float = 30.0) -> Connection:
        """Connect again and wait for the welcome (handed to ``on_message``)."""
        link = await self.connect()
        welcome = protocol.decode(await link.recv(timeout=welcome_timeout_s))
        if self.on_message is not None:
            self.on_message(welcome)
        return link

    async def recv(self, timeout: float | None = None) -> Message:
        if self.link is None:
            raise TransportError(f"{self.name}: not connected")
        return protocol.decode(await recv_alive(self.link, timeout, self.backoff.dead_after_s))

    async def send(self, msg: Message, *, reconnect: bool = True,
                   wanted: Callable[[], bool] | None = None) -> float:
        """Send ``msg``; on a broken link reconnect and resend. Returns seconds spent.

        With ``reconnect=False`` another task owns reconnecting (a receive
        loop running beside this call): the send backs off and retries on
        whatever :attr:`link` is by then. ``wanted``: asked before each
        resend; once it says no, the message is dropped (its round was lost
        with the coordinator that asked for it).
        """
        frame = protocol.encode(msg)
        started = time.perf_counter()
        for delay in itertools.chain([0.0], self.backoff.delays()):
            if delay:
                await asyncio.sleep(delay)
                self.report.retries += 1
            if wanted is not None and not wanted():
                log.info("%s: %s for round %d dropped: that round was lost", self.name, msg.kind, msg.round)
                return time.perf_counter() - started
            try:
                if self.link is None:
                    raise TransportError("not connected")
                await self.link.send(frame)
                return time.perf_counter() - started
            except TransportError as exc:
                log.info("%s: send failed (%s); retrying", self.name, exc)
                if reconnect:
                    with contextlib.suppress(TransportError):
                        await self.reconnect()
        raise TransportError(f"{self.name}: could not deliver a {msg.kind} message")

    def set_shape(self, profile: str, seed: int = 0) -> None:
        """Apply a named link profile (a ``shape`` control message) from now on."""
        self.shape = LinkShape.profile(profile, seed=seed)
        if self.link is not None:
            self.link.set_shape(self.shape)

    async def heartbeats(self) -> None:
        """Send a heartbeat every ``heartbeat_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            link = self.link
            if link is None:
                continue
            with contextlib.suppress(HyperGPUError):
                await link.send(protocol.encode(Message("heartbeat", {"t": time.time()})))

    async def close(self, reason: str) -> None:
        if self.link is not None:
            with contextlib.suppress(HyperGPUError):
                await self.link.close(reason)
