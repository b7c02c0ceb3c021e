"""The coordinator: registry, shards, the round loop, checkpoints.

One asyncio task accepts node connections; one task per connection reads
that node's messages; the round loop sends parameters, waits for updates
(until every participant answered, or the timeout with a quorum), folds
each accepted update into a Rust accumulator as it arrives, applies the
average, evaluates and checkpoints. Every update is applied at most once
(:class:`~hypergpu.coordinator.rounds.RoundBook`); every refusal is
counted by reason and published as an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from hypergpu import protocol
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator.plan import OuterOptimizer, Planner, RoundPlan, StaticPlanner
from hypergpu.coordinator.registry import NodeInfo, NodeRegistry, NodeStatus
from hypergpu.coordinator.rounds import LatePolicy, RoundBook
from hypergpu.data.prepare import prepare_data
from hypergpu.errors import (
    CodecError,
    HyperGPUError,
    ShapeMismatchError,
    TransportError,
    UnknownNodeError,
    UpdateError,
)
from hypergpu.events import EventBus
from hypergpu.model.checkpoint import CheckpointManager
from hypergpu.model.manager import ModelManager
from hypergpu.model.nets import build_model
from hypergpu.protocol import Message
from hypergpu.transport import Connection, Server
from hypergpu.update.aggregate import Accumulator, cosines
from hypergpu.update.codec import Codec
from hypergpu.update.codec import decode as decode_update
from hypergpu.update.downlink import ParamsEncoder

log = logging.getLogger("hypergpu.coordinator")

#: How long a new connection has to introduce itself.
HELLO_TIMEOUT_S = 10.0


@dataclass
class Summary:
    """What a finished (or stopped) run achieved."""

    rounds: int
    accuracy: float | None
    loss: float | None
    wall_s: float
    samples: int
    reached_target: bool
    stopped_early: bool
    nodes: list[dict[str, Any]] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0


class Coordinator:
    """Runs training rounds over the nodes that join it."""

    def __init__(
        self,
        config: HyperGPUConfig,
        *,
        model: nn.Module | None = None,
        token: str | None = None,
        events: EventBus | None = None,
        planner: Planner | None = None,
        expected_nodes: int | None = None,
    ):
        self.config = config
        c = config.coordinator
        self.token = token or secrets.token_urlsafe(18)
        self.events = events or EventBus()
        self.expected_nodes = config.nodes.count if expected_nodes is None else expected_nodes

        self.data = prepare_data(config.data, config.training.seed, config.nodes.count)
        self.shards = self.data.manager
        if model is None:
            model = build_model(config.training, self.data.input_shape, self.data.num_classes)
        self.model = ModelManager(model)
        self.checkpoints = CheckpointManager.from_config(config)
        self.registry = NodeRegistry(c.max_consecutive_failures)
        self.book = RoundBook(
            quorum=c.quorum, late_policy=LatePolicy(c.late_updates), decay=c.staleness_decay
        )
        self.planner: Planner = planner or _default_planner(config)
        self.history: deque[dict[str, Any]] = deque(maxlen=c.metric_history)
        self.refusals: Counter[str] = Counter()
        self.round = 0
        self.samples = 0

        self._server: Server | None = None
        self._links: dict[int, Connection] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._acc: Accumulator | None = None
        self._progress = asyncio.Event()
        self._stop = asyncio.Event()
        self._running = asyncio.Event()
        self._running.set()
        self._round_samples = 0
        self._round_losses: list[float] = []
        # node id -> what its update for the open round looked like
        self._round_nodes: dict[int, dict[str, Any]] = {}
        self._sent_at: dict[int, float] = {}
        self._sent_bytes: dict[int, int] = {}  # node id -> size of its params message this round
        # the open round: its id, the parameters it started from, its plan (for resends)
        self._open: tuple[int, np.ndarray, RoundPlan] | None = None
        #: What each node holds, so parameters can go down as compressed deltas.
        self.downlink = ParamsEncoder()
        self._sending: dict[int, asyncio.Task[Any]] = {}
        # node id -> its accepted update for the open round, to measure agreement with the mean
        self._round_updates: dict[int, np.ndarray] = {}
        #: Called with each finished round's record (sync callables or coroutines).
        self.observers: list[Any] = []
        #: node id -> why an operator took it out of the rounds (see :meth:`exclude`).
        self.excluded: dict[int, str] = {}
        #: Applies the round's averaged update; None: ``params += server_lr * mean``.
        self.outer_optimizer: OuterOptimizer | None = None
        self._network_events = list(config.network.events)
        bind = getattr(self.planner, "bind", None)
        if callable(bind):
            bind(self)  # planners that read links (link_stats) or publish events

    # --- lifecycle ------------------------------------------------------------

    @property
    def join_string(self) -> str:
        if self._server is None:
            raise TransportError("the coordinator is not listening yet; call start()")
        return self._server.join_string

    async def start(self) -> str:
        """Listen for nodes; returns the join string nodes need."""
        c = self.config.coordinator
        self._server = await Server.listen(c.host, c.port, token=self.token)
        self._spawn(self._accept_loop())
        self._spawn(self._watch_heartbeats())
        self.events.publish("training", type="listening", join=self._server.join_string)
        log.info("coordinator listening: %s", self._server.join_string)
        return self._server.join_string

    def request_stop(self) -> None:
        """Finish the current round, checkpoint, and stop (SIGINT/SIGTERM land here)."""
        self._stop.set()
        self._running.set()

    def pause(self) -> None:
        self._running.clear()
        self.events.publish("training", type="paused", round=self.round)

    def resume(self) -> None:
        self._running.set()
        self.events.publish("training", type="resumed", round=self.round)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def exclude(self, node_id: int, reason: str = "excluded by operator") -> None:
        """Leave a known node out of every round from the next one on, whatever
        the planner decides (it stays connected and keeps its shard)."""
        self.registry.get(node_id)  # UnknownNodeError for an id never seen
        self.excluded[node_id] = reason
        self.events.publish("decision", node=node_id, action="exclude", reason=reason, round=self.round)

    def include(self, node_id: int) -> None:
        """Undo :meth:`exclude`: the node takes part again from the next round."""
        self.registry.get(node_id)
        if self.excluded.pop(node_id, None) is not None:
            self.events.publish("decision", node=node_id, action="include", round=self.round)

    async def close(self) -> None:
        async def farewell(node_id: int, link: Connection) -> None:
            # Wait for the node to hold the bye before closing, or it would
            # see a dropped link and try to reconnect.
            with contextlib.suppress(HyperGPUError):
                bye = Message("bye", {"reason": "training finished"}, node_id=node_id)
                await link.send(protocol.encode(bye), timeout=5.0, acked=True)
            with contextlib.suppress(HyperGPUError):
                await link.close("coordinator shutting down")

        await asyncio.gather(*(farewell(n, link) for n, link in list(self._links.items())))
        self._links.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def run(self, *, resume: bool = False, join_timeout_s: float = 120.0) -> Summary:
        """Train for the configured rounds (or until the target accuracy)."""
        if self._server is None:
            await self.start()
        t = self.config.training
        start_round = 1
        if resume:
            found = self.checkpoints.resume(self.model)
            if found is not None:
                start_round = found.round + 1
                self.events.publish("training", type="resumed-from-checkpoint", round=found.round)
        started = time.perf_counter()
        await self._wait_for_nodes(join_timeout_s)
        self._spawn(self._timed_network_events())
        last_eval: tuple[float, float] | None = None
        reached = False
        for round_id in range(start_round, t.rounds + 1):
            await self._running.wait()
            if self._stop.is_set():
                break
            await self._round_network_events(round_id)
            record = await self._run_round(round_id)
            if round_id % t.eval_interval == 0 or round_id == t.rounds:
                result = await asyncio.to_thread(self.model.evaluate, self.data.test)
                last_eval = (result.loss, result.accuracy)
                record.update(test_loss=result.loss, test_accuracy=result.accuracy)
            self.history.append(record)
            self.planner.observe(record)
            for observer in self.observers:
                result = observer(self, record)
                if asyncio.iscoroutine(result):
                    await result
            self.events.publish("training", type="round", **record)
            if self.checkpoints.due(round_id):
                await asyncio.to_thread(self.checkpoints.save, self.model, round_id)
            if last_eval and t.target_accuracy is not None and last_eval[1] >= t.target_accuracy:
                reached = True
                break
        if self._stop.is_set() and self.round:
            # Graceful stop: keep the work done so far.
            await asyncio.to_thread(self.checkpoints.save, self.model, self.round)
        summary = Summary(
            rounds=self.round,
            accuracy=last_eval[1] if last_eval else None,
            loss=last_eval[0] if last_eval else None,
            wall_s=time.perf_counter() - started,
            samples=self.samples,
            reached_target=reached,
            stopped_early=self._stop.is_set(),
            nodes=[n.as_dict() for n in self.registry.all()],
            refusals=dict(self.refusals),
        )
        self.events.publish("training", type="finished", **_jsonable(summary.__dict__))
        return summary

    # --- status ---------------------------------------------------------------

    def link_stats(self, node_id: int) -> dict[str, Any] | None:
        """The transport's measurements of a node's link (None if not connected)."""
        link = self._links.get(node_id)
        return link.stats() if link is not None else None

    def shard_samples(self, node_id: int) -> int | None:
        """Training samples in the shards a node holds (None for a node without any)."""
        try:
            return sum(len(s) for s in self.shards.shards_of(node_id)) or None
        except UnknownNodeError:
            return None

    def status(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        return {
            "round": self.round,
            "rounds": self.config.training.rounds,
            "paused": self.paused,
            "stopping": self._stop.is_set(),
            "model_version": self.model.version,
            "model_hash": self.model.hash,
            "nodes": len(self.registry.alive()),
            "samples": self.samples,
            "last": last,
            "refusals": dict(self.refusals),
            # an adaptive planner's links, standings, settings and decisions
            "planner": planner_status() if callable(planner_status := getattr(self.planner, "status", None)) else None,
        }

    # --- the round ------------------------------------------------------------

    async def _run_round(self, round_id: int) -> dict[str, Any]:
        c = self.config.coordinator
        started = time.perf_counter()
        self.round = round_id
        nodes = [n for n in self.registry.alive() if n.node_id in self._links]
        plan = self.planner.plan(round_id, nodes)
        for node_id, reason in self.excluded.items():
            if plan.assignments.pop(node_id, None) is not None:
                plan.excluded[node_id] = reason
        params = self.model.flat_parameters()
        self._acc = Accumulator(params.shape)
        # A node still receiving an earlier round's parameters sits this one
        # out rather than queue a second copy behind the first on a slow link.
        for node_id in list(plan.assignments):
            pending = self._sending.get(node_id)
            if pending is not None and not pending.done():
                del plan.assignments[node_id]
                plan.excluded[node_id] = "still receiving the previous parameters"
        self.book.open(round_id, plan.participants, plan.optional)
        self._progress.clear()
        self._round_samples = 0
        self._round_losses = []
        self._round_nodes = {}
        self._sent_at = {}
        self._sent_bytes = {}
        self._round_updates = {}
        self._open = (round_id, params, plan)

        # Sends run on their own: a slow link must not hold up the others,
        # and the round's deadline runs from its start.
        for node_id in plan.participants:
            self._sending[node_id] = self._spawn(self._send_params(node_id, round_id, params, plan))

        deadline = started + min(c.round_timeout_s, plan.deadline_s or c.round_timeout_s)
        while not self.book.complete() and not self._stop.is_set():
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                if self.book.has_quorum() or remaining < -c.round_timeout_s:
                    break  # quorum, or a second timeout without one: give up on the round
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), max(0.05, remaining if remaining > 0 else 0.25))
        self.book.close()
        self._open = None

        applied = False
        acc, self._acc = self._acc, None
        if acc.count > 0 and self.book.has_quorum():
            mean = acc.finalize()
            if self.outer_optimizer is None:
                await asyncio.to_thread(self.model.apply_update, mean, lr_scale=self.config.training.server_lr)
            else:
                await asyncio.to_thread(self.outer_optimizer.step, self.model, mean)
            applied = True
            cosines = await asyncio.to_thread(_cosines, self._round_updates, mean)
            for node_id, cosine in cosines.items():
                if node_id in self._round_nodes:
                    self._round_nodes[node_id]["cosine"] = cosine
        self._round_updates = {}
        round_samples = self._round_samples
        self.samples += round_samples if applied else 0

        missing = plan.participants - self.book.reported
        for node_id in self.book.reported:
            self.registry.succeeded(node_id)
        for node_id in missing:
            if node_id in self.registry and self.registry.failed(node_id):
                await self._retire(node_id, f"missed {self.registry.max_failures} rounds in a row")
        losses = self._round_losses
        return {
            "round": round_id,
            "applied": applied,
            "participants": sorted(plan.participants),
            "reported": sorted(self.book.reported),
            "missing": sorted(missing),
            "excluded": {str(k): v for k, v in plan.excluded.items()},
            "train_loss": float(np.mean(losses)) if losses else None,
            "samples": round_samples,
            "duration_s": time.perf_counter() - started,
            "model_version": self.model.version,
            "assignments": {str(k): a.as_meta() for k, a in plan.assignments.items()},
            "nodes": {str(k): v for k, v in self._round_nodes.items()},
        }

    async def _send_params(self, node_id: int, round_id: int, params: np.ndarray, plan: RoundPlan) -> None:
        link = self._links.get(node_id)
        if link is None:
            return
        assignment = plan.assignments[node_id]
        try:
            held, sections = self.downlink.parts(node_id, params, Codec(assignment.down_codec))
        except CodecError as exc:  # e.g. a value beyond fp16's range: send it whole
            log.info("node %d: parameters go whole this round (%s)", node_id, exc)
            held, sections = self.downlink.parts(node_id, params, Codec("raw"))
        meta = {"round": round_id, "version": self.model.version, **assignment.as_meta(), **held}
        frame = protocol.encode(Message("params", meta, sections, round=round_id, node_id=node_id))
        try:
            self._sent_at[node_id] = time.perf_counter()
            self._sent_bytes[node_id] = len(frame)
            await link.send(frame)
            self.registry.get(node_id).bytes_sent += len(frame)
        except HyperGPUError as exc:
            self.downlink.forget(node_id)  # it may not hold what was sent
            log.warning("node %d: sending round %d failed: %s", node_id, round_id, exc)
            self.events.publish("alert", level="warning", node=node_id, message=f"send failed: {exc}")

    # --- updates ----------------------------------------------------------------

    async def _on_update(self, node: NodeInfo, msg: Message, size: int) -> None:
        node.bytes_received += size
        decision = self.book.check(node.node_id, msg.round)
        reason: str | None = None if decision.accepted else decision.verdict.value
        if reason is None:
            try:
                update = self._decode_update(msg)
                samples = int(msg.meta.get("samples", 0))
                if samples <= 0:
                    raise UpdateError(f"update claims {samples} samples; must be positive")
                assert self._acc is not None  # the book only accepts while a round is open
                self._acc.add(update, weight=samples * decision.weight)
            except HyperGPUError as exc:
                reason = "invalid"
                self.events.publish("alert", level="warning", node=node.node_id, message=f"update refused: {exc}")
                log.warning("node %d: update for round %d refused: %s", node.node_id, msg.round, exc)
            else:
                self.book.commit(node.node_id, msg.round)
                node.updates_accepted += 1
                node.samples += samples
                node.compute_s += float(msg.meta.get("compute_s", 0.0))
                loss = msg.meta.get("loss")
                if isinstance(loss, (int, float)) and math.isfinite(loss):
                    node.last_loss = float(loss)
                    if msg.round == self.round:
                        self._round_losses.append(float(loss))
                self._round_samples += samples
                if msg.round == self.round:
                    self._round_updates[node.node_id] = update
                    sent = self._sent_at.get(node.node_id)
                    self._round_nodes[node.node_id] = {
                        "samples": samples,
                        "loss": node.last_loss,
                        "compute_s": float(msg.meta.get("compute_s", 0.0)),
                        "wall_s": float(msg.meta.get("wall_s", 0.0)),
                        # params sent -> update in: compute, waiting and both transfers
                        "turnaround_s": time.perf_counter() - sent if sent is not None else None,
                        "update_bytes": size,
                        "params_bytes": self._sent_bytes.get(node.node_id),
                        "codec": msg.codec,
                        "weight": decision.weight,
                    }
                self._progress.set()
        if reason is not None:
            node.refusals[reason] += 1
            self.refusals[reason] += 1
        await self._reply(node.node_id, Message(
            "ack", {"round": msg.round, "accepted": reason is None, "reason": reason}, round=msg.round
        ))

    def _decode_update(self, msg: Message) -> np.ndarray:
        raw = msg.sections.get("update")
        if raw is None:
            raise UpdateError("update message has no 'update' section")
        expected = (self.model.layout.total,)
        if msg.codec == "raw":
            update = raw
        else:
            update = decode_update(raw, msg.codec, zstd=msg.zstd, shape=expected)
        if update.shape != expected:
            raise ShapeMismatchError(f"update has shape {update.shape}, the model has {expected}")
        return update

    # --- connections ------------------------------------------------------------

    async def _accept_loop(self) -> None:
        assert self._server is not None
        while True:
            try:
                link = await self._server.accept()
            except TransportError as exc:
                log.warning("accept failed: %s", exc)
                continue
            self._spawn(self._serve(link))

    async def _serve(self, link: Connection) -> None:
        try:
            hello = protocol.decode(await link.recv(timeout=HELLO_TIMEOUT_S))
            if hello.kind != "hello":
                raise UpdateError(f"expected a hello, got {hello.kind}")
        except HyperGPUError as exc:
            self.refusals["bad-hello"] += 1
            with contextlib.suppress(HyperGPUError):
                await link.close(f"bad hello: {exc}")
            return
        node = self._admit(hello.meta, link)
        try:
            await self._welcome(node, link)
            await self._read(node, link)
        finally:
            if self._links.get(node.node_id) is link:
                del self._links[node.node_id]
                if node.status is not NodeStatus.DEAD:
                    self.registry.mark(node.node_id, NodeStatus.SUSPECT)
                self.events.publish("node", type="disconnected", node=node.node_id, name=node.name)

    def _admit(self, meta: dict[str, Any], link: Connection) -> NodeInfo:
        name = str(meta.get("name") or link.peer_name)
        speed = float(meta.get("speed_factor", 1.0))
        index = meta.get("index")
        node = self.registry.join(
            name,
            device=str(meta.get("device", "cpu")),
            speed_factor=speed,
            preferred_id=index if isinstance(index, int) else None,
        )
        self.downlink.forget(node.node_id)  # a new link: what the node holds is unknown
        old = self._links.get(node.node_id)
        if old is not None and old is not link:
            self._spawn(old.close("replaced by a new connection from the same node"))
        self._links[node.node_id] = link
        self.events.publish("node", type="joined", **node.as_dict())
        return node

    async def _welcome(self, node: NodeInfo, link: Connection) -> None:
        before = self.shards.assignment()
        self.shards.join(node.node_id)
        meta = {
            "node_id": node.node_id,
            "training": self.config.training.model_dump(mode="json"),
            "layout": self.model.layout.digest,
            "num_params": self.model.layout.total,
        }
        await link.send(protocol.encode(Message("welcome", meta, self._shard_sections(node.node_id), node_id=node.node_id)))
        await self._sync_shards(before, skip=node.node_id)

    def _shard_sections(self, node_id: int) -> dict[str, np.ndarray]:
        try:
            shards = self.shards.shards_of(node_id)
        except UnknownNodeError:
            return {}
        return {f"shard{i}": np.frombuffer(s.to_bytes(), dtype=np.uint8) for i, s in enumerate(shards)}

    async def _sync_shards(self, before: dict[int, list[int]], skip: int | None = None) -> None:
        """Send new data to every node whose shard set changed."""
        after = self.shards.assignment()
        for node_id, held in after.items():
            if node_id != skip and before.get(node_id) != held and node_id in self._links:
                msg = Message("control", {"type": "shard"}, self._shard_sections(node_id), node_id=node_id)
                await self._reply(node_id, msg)
                self.events.publish("node", type="shards", node=node_id, shards=held)

    async def _read(self, node: NodeInfo, link: Connection) -> None:
        while True:
            try:
                frame = await link.recv()
            except TransportError:
                return
            try:
                msg = protocol.decode(frame)
            except HyperGPUError as exc:
                node.refusals["malformed"] += 1
                self.refusals["malformed"] += 1
                log.warning("node %d: malformed message: %s", node.node_id, exc)
                continue
            self.registry.seen(node.node_id)
            if msg.kind == "update":
                await self._on_update(node, msg, len(frame))
            elif msg.kind == "heartbeat":
                node.bytes_received += len(frame)
            elif msg.kind == "control" and msg.meta.get("type") == "resync":
                await self._resync(node, msg)
            elif msg.kind == "metrics":
                self.events.publish("node", type="metrics", node=node.node_id, **msg.meta)
            elif msg.kind == "bye":
                self.registry.mark(node.node_id, NodeStatus.LEFT)
                await self._release_shards(node.node_id)
                self.events.publish("node", type="left", node=node.node_id, name=node.name)
                return
            else:
                node.refusals["unexpected"] += 1
                self.refusals["unexpected"] += 1

    async def _resync(self, node: NodeInfo, msg: Message) -> None:
        """The node could not apply a parameter delta: send it the whole vector,
        right away if it still owes the open round an update."""
        self.downlink.forget(node.node_id)
        self.events.publish("node", type="resync", node=node.node_id, round=msg.round, reason=msg.meta.get("reason"))
        opened = self._open
        if opened is None:
            return
        round_id, params, plan = opened
        if msg.round == round_id and node.node_id in plan.assignments and node.node_id not in self.book.reported:
            self._sending[node.node_id] = self._spawn(self._send_params(node.node_id, round_id, params, plan))

    async def _reply(self, node_id: int, msg: Message) -> None:
        link = self._links.get(node_id)
        if link is None:
            return
        msg.node_id = node_id
        frame = protocol.encode(msg)
        try:
            await link.send(frame)
            self.registry.get(node_id).bytes_sent += len(frame)
        except HyperGPUError as exc:
            log.info("node %d: reply failed: %s", node_id, exc)

    async def _retire(self, node_id: int, reason: str) -> None:
        """Give up on a node: close its link and hand its shards to others."""
        self.registry.mark(node_id, NodeStatus.DEAD)
        self.events.publish("alert", level="error", node=node_id, message=f"node retired: {reason}")
        link = self._links.pop(node_id, None)
        if link is not None:
            with contextlib.suppress(HyperGPUError):
                await link.close(reason)
        await self._release_shards(node_id)

    async def _release_shards(self, node_id: int) -> None:
        before = self.shards.assignment()
        if node_id in before:
            self.shards.leave(node_id)
            await self._sync_shards(before)

    async def _wait_for_nodes(self, timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while len(self._links) < self.expected_nodes and time.perf_counter() < deadline and not self._stop.is_set():
            await asyncio.sleep(0.05)
        if not self._links and not self._stop.is_set():
            raise TransportError(f"no node joined within {timeout_s:.0f} s")

    async def _watch_heartbeats(self) -> None:
        interval = self.config.coordinator.heartbeat_interval_s
        while True:
            await asyncio.sleep(interval)
            for node in self.registry.silent_since(time.monotonic() - 3 * interval):
                if node.status is NodeStatus.ACTIVE:
                    self.registry.mark(node.node_id, NodeStatus.SUSPECT)
                    self.events.publish(
                        "alert", level="warning", node=node.node_id, message="no heartbeat for 3 intervals"
                    )

    # --- scheduled network events ---------------------------------------------------

    async def _round_network_events(self, round_id: int) -> None:
        for event in [e for e in self._network_events if e.at_round is not None and e.at_round <= round_id]:
            if await self._reshape(event.node, event.profile):
                self._network_events.remove(event)  # else: retried next round, once the node is back

    async def _timed_network_events(self) -> None:
        started = time.perf_counter()
        for event in sorted((e for e in self._network_events if e.at_s is not None), key=lambda e: e.at_s or 0.0):
            await asyncio.sleep(max(0.0, (event.at_s or 0.0) - (time.perf_counter() - started)))
            while event in self._network_events:
                if await self._reshape(event.node, event.profile):
                    self._network_events.remove(event)
                else:
                    await asyncio.sleep(0.5)

    async def _reshape(self, node_id: int, profile: str) -> bool:
        """Tell a node to switch its link to ``profile`` (it shapes its own end); False if not connected."""
        if node_id not in self._links:
            log.info("network event for node %d waits: not connected", node_id)
            return False
        await self._reply(node_id, Message("control", {"type": "shape", "profile": profile}))
        self.events.publish("network", type="shape", node=node_id, profile=profile, round=self.round)
        return True

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _cosines(updates: dict[int, np.ndarray], mean: np.ndarray) -> dict[int, float]:
    """Each update's cosine similarity with the round's mean (its agreement with the aggregate)."""
    if not updates:
        return {}
    values = cosines(list(updates.values()), mean.reshape(-1))
    return {n: float(c) for n, c in zip(updates, values) if math.isfinite(c)}


def _default_planner(config: HyperGPUConfig) -> Planner:
    """The adaptive planner when ``adapt.enabled``, else every node with the configured settings."""
    if config.adapt.enabled:
        from hypergpu.adapt import AdaptivePlanner

        return AdaptivePlanner(config)
    return StaticPlanner(config)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool, list, dict, type(None)))}

