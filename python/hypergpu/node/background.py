"""A node's :class:`~hypergpu.node.session.Session` on its own thread, for synchronous callers.

:class:`BackgroundLink` runs an asyncio loop on a daemon thread. That loop
connects, keeps the link up (reconnecting after a loss), sends heartbeats,
follows shard and shape changes and hears what became of each update (the
acks and welcomes that settle it, :mod:`hypergpu.node.settle`); a ``params`` message, the
end of the training (``bye`` or ``stop``) or a fatal error reaches the
caller's thread through :meth:`BackgroundLink.next_round`, so a plain
PyTorch loop can block on it without ever touching asyncio. What each
message means is decided by :class:`~hypergpu.node.protocol.NodeProtocol`.

An update is held, as the built-in node holds it, until an ack says it was
applied: the caller's thread encodes and sends it (:meth:`BackgroundLink.send_update`)
and this thread hears its outcome, under one lock; what is taken back (a
residual change, an optimizer state) waits for the caller's thread at its
next round boundary (:meth:`BackgroundLink.taken_back`). An update goes out
only over a link the coordinator has welcomed, so a new coordinator life's
welcome, which may say the update's round was lost, comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hypergpu import protocol
from hypergpu.data.shards import Shard
from hypergpu.errors import ConfigError, HyperGPUError, TimeoutError, TransportError
from hypergpu.model.layout import ParamLayout
from hypergpu.node.protocol import (
    Acked,
    Ended,
    Event,
    NodeProtocol,
    Reply,
    Reshape,
    RoundOpened,
    ShardsChanged,
    Welcome,
    Welcomed,
)
from hypergpu.node.session import Session
from hypergpu.node.settle import Undo, Unsettled
from hypergpu.node.update_encoder import UpdateEncoder
from hypergpu.protocol import Assignment, Message, UpdateMeta

__all__ = ["BackgroundLink"]

log = logging.getLogger("hypergpu.node")


class BackgroundLink:
    """Keeps ``session`` up on a background thread; hands rounds to the caller's thread."""

    def __init__(self, session: Session, layout: ParamLayout, *, idle_timeout_s: float = 600.0, seed: int = 0,
                 initial: Callable[[Welcome], np.ndarray | None] | None = None):
        """``initial``: the caller's model's parameters before any training (asked at the first welcome,
        while the caller waits for it): round 1 may name them by digest."""
        self.session = session
        self.layout = layout
        self.idle_timeout_s = idle_timeout_s
        self.seed = seed
        self.protocol = NodeProtocol(session.report, initial=initial)
        session.on_message = self._handle
        self.welcome: Welcome | None = None
        self.shard_version = 0
        #: Times the link broke and was re-established (hello and welcome again).
        self.links_lost = 0
        #: Rounds whose parameters were superseded before the caller got to them.
        self.rounds_skipped = 0
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._shards: list[Shard] = []
        self._welcomed = threading.Event()
        self._finished = threading.Event()
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._closing = False
        self._replies: set[asyncio.Future[float]] = set()
        self._driver_task: asyncio.Task[None] | None = None
        self.unsettled = Unsettled()  # updates sent and not known applied yet
        self._settling = threading.Lock()  # around unsettled, _taken_back and the encoder's use
        self._taken_back = Undo()  # heard here, folded back on the caller's thread
        self._ready = asyncio.Event()  # the link is one the coordinator has welcomed
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"hypergpu-{session.name}", daemon=True)

    # --- the caller's thread --------------------------------------------------

    def start(self, timeout_s: float) -> Welcome:
        """Connect and wait for the welcome (layout checked); raises what went wrong."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._drive(), self._loop)
        if not self._welcomed.wait(timeout_s):
            raise TimeoutError(f"{self.session.name}: no welcome from the coordinator within {timeout_s:g} s")
        if self.failure is not None:
            raise self.failure
        assert self.welcome is not None
        return self.welcome

    @property
    def finished(self) -> bool:
        """True once the coordinator ended the training (``bye`` or a ``stop`` control)."""
        return self._finished.is_set()

    @property
    def shards(self) -> list[Shard]:
        with self._lock:
            return list(self._shards)

    def next_round(self, timeout_s: float, after: int) -> RoundOpened | None:
        """The newest round opened, or None once the training has ended.

        Raises :class:`~hypergpu.errors.TimeoutError` when neither comes
        within ``timeout_s``, and the link's fatal error if it failed.
        """
        try:
            kind, value = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            if self.finished:
                return None
            raise TimeoutError(
                f"{self.session.name}: no parameters for the next round within {timeout_s:g} s "
                f"(after round {after}); is the coordinator still running?"
            ) from None
        # Rounds that opened while the caller was still busy are skipped: only the newest counts.
        while True:
            try:
                newer = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "round" and newer[0] == "round":
                self.rounds_skipped += 1
            kind, value = newer
        if kind == "error":
            raise value
        return value if kind == "round" else None

    def began(self, round_id: int, optimizer_state: Any) -> None:
        """The caller starts training ``round_id`` from ``optimizer_state`` (a copy kept until settled)."""
        with self._settling:
            self.unsettled.began(round_id, optimizer_state)

    def taken_back(self) -> Undo:
        """What acks and welcomes took back since the last call, for the caller to fold back."""
        with self._settling:
            undo, self._taken_back = self._taken_back, Undo()
        if undo:
            log.info("%s: updates for rounds %s were not applied; taken back", self.session.name, undo.rounds)
        return undo

    def send_update(self, encoder: UpdateEncoder, update: np.ndarray, assignment: Assignment, meta: UpdateMeta,
                    round_id: int, timeout_s: float) -> bool:
        """Encode and send ``round_id``'s update, held until settled; False (nothing sent) when a
        welcome already said that round was lost with the coordinator (it is dealt again)."""
        with self._settling:  # an ack or welcome heard meanwhile waits: the residual change is recorded first
            if not self.unsettled.pending(round_id):
                log.info("%s: round %d was lost with the coordinator; its update is not sent", self.session.name,
                         round_id)
                return False
            msg = encoder.message(update, assignment, meta, round_id)
            self.unsettled.encoded(round_id, 0, encoder.last_delta)
        self.send(msg, timeout_s, round_id=round_id)
        return True

    def send(self, msg: Message, timeout_s: float, *, round_id: int | None = None) -> float:
        """Send ``msg`` (resent over a new link if this one breaks; a round's update dropped once
        that round is lost); seconds spent."""
        sending = asyncio.run_coroutine_threadsafe(self._deliver(msg, round_id), self._loop)
        try:
            return sending.result(timeout=timeout_s)
        except TransportError:
            raise
        except BaseException as exc:
            sending.cancel()
            raise TimeoutError(f"{self.session.name}: could not send a {msg.kind} message: {exc!r}") from exc

    def close(self) -> None:
        """Say bye (unless the coordinator already did), close the link, stop the thread."""
        if self._closing:
            return
        self._closing = True
        if self._loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._leave(), self._loop)
            try:
                done.result(timeout=10.0)
            except Exception as exc:  # closing goes on: the link is going away either way
                log.warning("%s: saying bye failed: %s", self.session.name, exc)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10.0)
        if not self._loop.is_running():
            self._loop.close()

    # --- the background thread ------------------------------------------------

    async def _drive(self) -> None:
        self._driver_task = asyncio.current_task()
        session = self.session
        heartbeat: asyncio.Future[None] | None = None
        try:
            await session.connect()
            heartbeat = asyncio.ensure_future(session.heartbeats())
            while not self._closing:
                try:
                    msg = await session.recv(timeout=self.idle_timeout_s)
                except TransportError as exc:
                    if self._closing:
                        break
                    log.info("%s: link lost (%s); reconnecting", session.name, exc)
                    self._ready.clear()  # until the next welcome: it may say which rounds were lost
                    await session.connect()
                    self.links_lost += 1
                    continue
                if not self._handle(msg):
                    break
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the caller's thread, raised there
            self._fail(exc)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                # Cancelled just now: its end, or a send failing on a closing link, is no news.
                await asyncio.gather(heartbeat, return_exceptions=True)
            if self.failure is not None:
                await session.close(f"node failed: {self.failure}")

    async def _deliver(self, msg: Message, round_id: int | None) -> float:
        """Send ``msg`` over a welcomed link, again over the next one if this one breaks (with the
        session's backoff); a round's update is dropped once its round was lost."""
        frame = protocol.encode(msg)
        started = time.perf_counter()
        delays = self.session.backoff.delays()
        while True:
            await self._ready.wait()
            link = self.session.link
            if round_id is not None and not self._still_pending(round_id):
                log.info("%s: update for round %d dropped: that round was lost", self.session.name, round_id)
                break
            try:
                if link is None:
                    raise TransportError("not connected")
                await link.send(frame)
                break
            except TransportError as exc:
                delay = next(delays, None)
                if delay is None:
                    raise TransportError(f"{self.session.name}: could not deliver a {msg.kind} message: {exc}") from exc
                log.info("%s: send failed (%s); retrying", self.session.name, exc)
                self.session.report.retries += 1
                await asyncio.sleep(delay)
        return time.perf_counter() - started

    def _still_pending(self, round_id: int) -> bool:
        with self._settling:
            return self.unsettled.pending(round_id)

    def _handle(self, msg: Message) -> bool:
        """Act on one message; False ends the session."""
        for event in self.protocol.handle(msg):
            self._act(event)
        return not self.protocol.finished

    def _act(self, event: Event) -> None:
        if isinstance(event, Welcomed):
            self._on_welcome(event.welcome)
            with self._settling:
                self._taken_back.merge(self.unsettled.welcomed(event.welcome.settlement))
            self._ready.set()
        elif isinstance(event, Acked):
            with self._settling:
                self._taken_back.merge(self.unsettled.acked(event.ack))
        elif isinstance(event, RoundOpened):
            # Deltas were applied in arrival order; the caller's thread may skip rounds.
            self._inbox.put(("round", event))
        elif isinstance(event, ShardsChanged):
            self._set_shards(event.shards)
        elif isinstance(event, Reshape):
            self.session.set_shape(event.profile, seed=self.seed)
        elif isinstance(event, Reply):
            reply = asyncio.ensure_future(self.session.send(event.message, reconnect=False))
            self._replies.add(reply)  # held until sent: the loop keeps only weak references
            reply.add_done_callback(self._replies.discard)
        elif isinstance(event, Ended):
            self._end()

    def _on_welcome(self, welcome: Welcome) -> None:
        try:
            welcome.check_layout(self.layout.digest, self.session.name, self.layout.total)
            t = welcome.training
            if t.overlap or t.fragments > 1 or t.link_fragments > 1:
                # Work a round ahead, or one fragment per round: the user's loop steps whole rounds.
                raise ConfigError("training.overlap, training.fragments and training.link_fragments need the "
                                  "built-in node (hypergpu node); DistributedOptimizer trains whole rounds: set "
                                  "training.overlap = false, training.fragments = 1, training.link_fragments = 1")
        except HyperGPUError as exc:
            self._fail(exc)
            raise
        self.welcome = welcome
        if welcome.shards:
            self._set_shards(welcome.shards)
        self._welcomed.set()

    def _set_shards(self, shards: list[Shard]) -> None:
        with self._lock:
            self._shards = shards
            self.shard_version += 1

    def _end(self) -> None:
        self._finished.set()
        self._inbox.put(("end", None))

    def _fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self._inbox.put(("error", exc))
        self._welcomed.set()

    async def _leave(self) -> None:
        link = self.session.link
        if not self.finished and link is not None:
            with contextlib.suppress(HyperGPUError):  # a link already gone cannot carry the bye
                await link.send(protocol.encode(Message("bye", {"reason": "leaving"})))
        await self.session.close("node leaving")
        task = self._driver_task
        if task is not None and not task.done():
            task.cancel()
            # A failure of the driver has reached the caller already (``_fail``).
            await asyncio.gather(task, return_exceptions=True)
