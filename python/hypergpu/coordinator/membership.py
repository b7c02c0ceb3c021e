"""Who is in the run: hellos and welcomes, links, heartbeats, shards, retirement.

:class:`Membership` owns the node registry, the data shards lent to each
node and the open link to each connected node. The coordinator hands it
every new connection's hello; it checks who signed it and whether that key
may use the name (:mod:`hypergpu.coordinator.admission`), admits the node (a
node that reconnects under its name keeps its id), opens its link (the
transport took nothing but the hello until then), welcomes it with its shards, re-lends shards
when nodes come and go, marks silent nodes suspect and retires nodes that
miss too many rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from hypergpu import protocol
from hypergpu.coordinator.admission import Identity, NameBook, Refused, verify
from hypergpu.coordinator.registry import NodeInfo, NodeRegistry, NodeStatus
from hypergpu.data.shards import ShardManager
from hypergpu.errors import FrameError, HyperGPUError, TransportError, UnknownNodeError
from hypergpu.events import EventBus
from hypergpu.protocol import Hello, Message, WelcomeMeta, parse_meta
from hypergpu.round import RoundRecord
from hypergpu.transport import Connection

log = logging.getLogger("hypergpu.coordinator")

#: Seconds past the hello deadline a new link's first message is still waited for here: the
#: transport's own deadline, with its count and its reason, is the one a peer meets.
HELLO_BACKSTOP_S = 5.0


class Membership:
    """The registry, the shard ledger and the links of a run."""

    def __init__(self, registry: NodeRegistry, shards: ShardManager[Any], events: EventBus,
                 on_new_link: Callable[[int], None] = lambda node_id: None,
                 sections_for: Callable[[list[int]], dict[str, np.ndarray]] = lambda ids: {}):
        self.registry = registry
        self.shards = shards
        self.events = events
        self.links: dict[int, Connection] = {}
        #: node -> shards it was sent over its current link (shipped data only)
        self.delivered: dict[int, set[int]] = {}
        #: nodes that train on the samples the coordinator names (not on their own data)
        self.follows_work: set[int] = set()
        self._sections_for = sections_for
        #: which key holds which name, and this coordinator's certificate fingerprint (set once listening)
        self.names = NameBook()
        self.fingerprint = ""
        #: hellos refused, by reason (the coordinator points this at its own refusal counts)
        self.refused: Counter[str] = Counter()
        #: most nodes in the run at once (coordinator.max_nodes; None: no cap)
        self.max_nodes: int | None = None
        #: node id -> the welcome's fields that settle its earlier updates (the coordinator's)
        self.settlement: Callable[[int], dict[str, Any]] = lambda node_id: {}
        # A new link means what the node holds is unknown (the downlink mirror forgets it).
        self._on_new_link = on_new_link

    # --- joining -------------------------------------------------------------------

    async def greet(self, link: Connection, welcome: WelcomeMeta, timeout_s: float) -> NodeInfo | None:
        """Read the hello on a new link, admit the node and welcome it (``welcome`` gets its
        node id); None, with the link closed (and the refusal counted in :attr:`refused`), when
        the first message is no valid hello or the node is refused."""
        try:
            # The transport closes, and counts, a link with no hello accepted ``timeout_s`` after
            # its handshake (earlier than now). This wait is a later backstop, so the two never race.
            wait = timeout_s + HELLO_BACKSTOP_S
            msg = protocol.decode(await link.recv(timeout=wait), max_meta=protocol.MAX_META)
            if msg.kind != "hello":
                raise FrameError(f"expected a hello, got {msg.kind}")
            hello = parse_meta(Hello, msg)
        except HyperGPUError as exc:
            self.refused["bad-hello"] += 1
            with contextlib.suppress(HyperGPUError):
                await link.close(f"bad hello: {exc}")
            return None
        # ~8 ms of signature recovery off the loop; the name's check and its binding below run
        # with no await between them, so two keys racing for one name cannot both win.
        proved = await asyncio.to_thread(verify, hello, link.challenge, self.fingerprint)
        who = self.identify(hello, proved)
        if isinstance(who, Refused):
            log.warning("hello from %s as %r refused (%s): %s", link.remote_address[0], hello.name, who.reason,
                        who.detail)
            await self.refuse(link, who.detail, who.reason)
            return None
        if (full := self.full_for(hello.name)) is not None:
            await self.refuse(link, full, "run-full")
            return None
        node, replaced = self.admit(hello, link)
        node.address, node.payout = who.address, who.payout
        if self.names.bind(node.name, who):
            self.names.save()  # a small file, written once per name
        link.authorize()  # its hello is taken: the link opens (the transport held it to that one message)
        if replaced is not None:
            with contextlib.suppress(HyperGPUError):
                await replaced.close("replaced by a new connection from the same node")
        await self.welcome(node, link, welcome.model_copy(update={"node_id": node.node_id,
                                                                  **self.settlement(node.node_id)}))
        return node

    def identify(self, hello: Hello, proved: Identity | Refused) -> Identity | Refused:
        """The key ``hello`` proved (:func:`~hypergpu.coordinator.admission.verify`), if it may join
        under its name: the name book and the per-key limit (see :mod:`.admission`)."""
        if isinstance(proved, Refused):
            return proved
        connected = [(n.name, n.address or "") for n in self.connected()]
        return self.names.check(hello.name, proved, connected) or proved

    def full_for(self, name: str) -> str | None:
        """Why a node called ``name`` cannot join (None: it can). A node still in the run
        under that name always can: it holds its place (and its shards) while away."""
        if self.max_nodes is None:
            return None
        alive = self.registry.alive()
        present = len(alive)
        if present < self.max_nodes or any(n.name == name for n in alive):
            return None
        return (f"the run is full: it has {present} nodes and coordinator.max_nodes is {self.max_nodes}; "
                "try again when a node leaves")

    async def refuse(self, link: Connection, reason: str, code: str) -> None:
        """Tell a node why it is not taken (an ``error`` message it reads before the link closes)."""
        self.refused[code] += 1
        self.events.publish("alert", level="warning", message=f"node refused: {reason}")
        with contextlib.suppress(HyperGPUError):
            msg = Message("error", protocol.Refusal(reason=reason, code=code).as_meta())
            await link.send(protocol.encode(msg), timeout=5.0, acked=True)
        with contextlib.suppress(HyperGPUError):
            await link.close(reason[:120])
    def admit(self, hello: Hello, link: Connection) -> tuple[NodeInfo, Connection | None]:
        """Register the node saying ``hello`` on ``link``; returns it and the link it replaces."""
        node = self.registry.join(
            hello.name, device=hello.device, speed_factor=hello.speed_factor, preferred_id=hello.index
        )
        self._on_new_link(node.node_id)
        self.delivered[node.node_id] = set()
        if hello.follows_work:
            self.follows_work.add(node.node_id)
        else:
            self.follows_work.discard(node.node_id)
        old = self.links.get(node.node_id)
        self.links[node.node_id] = link
        self.events.publish("node", type="joined", **node.as_dict())
        return node, old if old is not link else None

    async def welcome(self, node: NodeInfo, link: Connection, meta: WelcomeMeta) -> None:
        """Send the welcome with the node's shards, and new shards to whoever lost some."""
        before = self.shards.assignment()
        self.shards.join(node.node_id)
        msg = Message("welcome", meta.as_meta(), self.shard_sections(node.node_id), node_id=node.node_id)
        await link.send(protocol.encode(msg))
        await self._sync_shards(before, skip=node.node_id)

    def disconnected(self, node: NodeInfo, link: Connection) -> None:
        """The node's reader ended; forget the link unless a newer one replaced it."""
        if self.links.get(node.node_id) is not link:
            return
        del self.links[node.node_id]
        if node.status not in (NodeStatus.DEAD, NodeStatus.LEFT):  # a node that said bye stays gone
            self.registry.mark(node.node_id, NodeStatus.SUSPECT)
        self.events.publish("node", type="disconnected", node=node.node_id, name=node.name)

    async def left(self, node: NodeInfo) -> None:
        """The node said bye: its shards go to the others."""
        self.registry.mark(node.node_id, NodeStatus.LEFT)
        await self.release(node.node_id)
        self.events.publish("node", type="left", node=node.node_id, name=node.name)

    # --- who is there -------------------------------------------------------------

    def connected(self) -> list[NodeInfo]:
        """Alive nodes with an open link."""
        return [n for n in self.registry.alive() if n.node_id in self.links]

    def shard_samples(self, node_id: int) -> int | None:
        """Training samples in the shards a node holds (None for a node without any)."""
        try:
            return sum(len(s) for s in self.shards.shards_of(node_id)) or None
        except UnknownNodeError:
            return None

    def shard_sections(self, node_id: int) -> dict[str, np.ndarray]:
        """Sections carrying the shards a node holds (none for data nodes read themselves)."""
        try:
            ids = self.shards.shard_ids_of(node_id)
        except UnknownNodeError:
            return {}
        self.delivered.setdefault(node_id, set()).update(ids)
        return self._sections_for(ids)

    def lend(self, node_id: int, shard_ids: list[int]) -> dict[str, np.ndarray]:
        """Sections shipping the shards a round's work names that the node was not sent yet.

        They ride in the round's own ``params`` message: a separate message
        could arrive after the parameters (each message has its own stream).
        """
        missing = sorted(set(shard_ids) - self.delivered.setdefault(node_id, set()))
        sections = self._sections_for(missing) if missing else {}
        if sections:
            self.delivered[node_id].update(missing)
            self.events.publish("node", type="shards-lent", node=node_id, shards=missing)
        return sections

    def forget_delivered(self, node_id: int, shard_ids: list[int]) -> None:
        """A send failed: the node may not hold these shards."""
        self.delivered.get(node_id, set()).difference_update(shard_ids)

    async def wait_for(self, count: int, timeout_s: float, stop: asyncio.Event) -> None:
        """Until ``count`` nodes are connected, or ``timeout_s`` (an error if none came)."""
        deadline = time.perf_counter() + timeout_s
        while len(self.links) < count and time.perf_counter() < deadline and not stop.is_set():
            await asyncio.sleep(0.05)
        if not self.links and not stop.is_set():
            raise TransportError(f"no node joined within {timeout_s:.0f} s")

    # --- talking to nodes ---------------------------------------------------------

    async def send(self, node_id: int, msg: Message) -> bool:
        """Send ``msg`` to a connected node; False if it is not connected or the send failed."""
        link = self.links.get(node_id)
        if link is None:
            return False
        msg.node_id = node_id
        frame = protocol.encode(msg)
        try:
            await link.send(frame)
        except HyperGPUError as exc:
            log.info("node %d: send failed: %s", node_id, exc)
            return False
        self.registry.get(node_id).bytes_sent += len(frame)
        return True

    async def farewell_all(self, reason: str) -> None:
        """Say bye to every connected node and close its link."""

        async def farewell(node_id: int, link: Connection) -> None:
            # Wait for the node to hold the bye before closing, or it would
            # see a dropped link and try to reconnect.
            with contextlib.suppress(HyperGPUError):
                bye = Message("bye", {"reason": reason}, node_id=node_id)
                await link.send(protocol.encode(bye), timeout=5.0, acked=True)
            with contextlib.suppress(HyperGPUError):
                await link.close("coordinator shutting down")

        await asyncio.gather(*(farewell(n, link) for n, link in list(self.links.items())))
        self.links.clear()

    # --- after each round, and in the background ----------------------------------

    async def after_round(self, record: RoundRecord) -> None:
        """Credit the nodes that answered; retire those that missed too many rounds in a row."""
        for answer in [*record.answers.values(), *record.late.values()]:
            self.registry.credit(answer.node_id, answer.samples, answer.compute_s, answer.loss,
                                 answer.wall_s, answer.idle_s)
        for node_id in record.reported:
            self.registry.succeeded(node_id)
        for node_id in record.missing:
            if node_id in record.late:  # its last update came in this round, late: it works, it is not gone
                self.registry.late(node_id)
            elif node_id in self.registry and self.registry.failed(node_id):
                await self.retire(node_id, f"missed {self.registry.max_failures} rounds in a row")

    async def retire(self, node_id: int, reason: str) -> None:
        """Give up on a node: close its link and hand its shards to others."""
        self.registry.mark(node_id, NodeStatus.DEAD)
        self.events.publish("alert", level="error", node=node_id, message=f"node retired: {reason}")
        link = self.links.pop(node_id, None)
        if link is not None:
            with contextlib.suppress(HyperGPUError):
                await link.close(reason)
        await self.release(node_id)

    async def release(self, node_id: int) -> None:
        before = self.shards.assignment()
        if node_id in before:
            self.shards.leave(node_id)
            await self._sync_shards(before)

    async def _sync_shards(self, before: dict[int, list[int]], skip: int | None = None) -> None:
        """Send new data to every node whose shard set changed."""
        after = self.shards.assignment()
        for node_id, held in after.items():
            if node_id != skip and before.get(node_id) != held and node_id in self.links:
                msg = Message("control", {"type": "shard"}, self.shard_sections(node_id))
                await self.send(node_id, msg)
                self.events.publish("node", type="shards", node=node_id, shards=held)

    async def watch_heartbeats(self, interval_s: float) -> None:
        """Mark nodes silent for three intervals suspect (runs until cancelled)."""
        while True:
            await asyncio.sleep(interval_s)
            for node in self.registry.silent_since(time.monotonic() - 3 * interval_s):
                if node.status is NodeStatus.ACTIVE:
                    self.registry.mark(node.node_id, NodeStatus.SUSPECT)
                    self.events.publish(
                        "alert", level="warning", node=node.node_id, message="no heartbeat for 3 intervals"
                    )

    def link_stats(self, node_id: int) -> Any:
        """The transport's measurements of a node's link (None if not connected)."""
        link = self.links.get(node_id)
        return link.stats() if link is not None else None
