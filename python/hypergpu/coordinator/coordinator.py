"""The coordinator: the I/O driver that wires membership, rounds and the model.

One asyncio task accepts node connections; one task per connection reads
that node's messages and hands them on — hellos to :class:`Membership`,
updates to the open :class:`~hypergpu.round.Round` (a sans-IO object that
decides, folds and records); the round loop asks the planner for a plan,
sends parameters, waits until the round says it is over, applies the mean
through the outer optimizer, evaluates and checkpoints. Every refusal is
counted by reason and published as an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import numpy as np
from torch import nn

from hypergpu import protocol
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator.checkpointing import CheckpointWriter, checkpoint_behind, resume_run
from hypergpu.coordinator.crashpoints import crash_point
from hypergpu.coordinator.dispatch import Dealt, Dispatch, deal, resync
from hypergpu.coordinator.effects import EffectScorer
from hypergpu.coordinator.identity import join_strings, kept_identity
from hypergpu.coordinator.intake import UpdateIntake
from hypergpu.coordinator.membership import Membership
from hypergpu.coordinator.admission import name_book, transport_config
from hypergpu.coordinator.network_script import NetworkScript
from hypergpu.coordinator.registry import NodeInfo, NodeRegistry
from hypergpu.coordinator.settle import Outcomes, settlement
from hypergpu.coordinator.summary import Summary, run_status, run_summary
from hypergpu.coordinator.trust import publish_metrics, tell_observers, undecodable
from hypergpu.coordinator.work import WorkDealer
from hypergpu.data.run_data import prepare_run_data
from hypergpu.errors import HyperGPUError, TransportError
from hypergpu.events import EventBus
from hypergpu.model.checkpoint import CheckpointManager
from hypergpu.model.manager import ModelManager
from hypergpu.model.nets import build_model
from hypergpu.model.outer import OuterOptimizer, outer_optimizer_for
from hypergpu.model.task import task_for
from hypergpu.protocol import WelcomeMeta
from hypergpu.round import LatePolicy, Planner, Round, RoundBook, RoundRecord
from hypergpu.round import StaticPlanner
from hypergpu.transport import Connection, Server
from hypergpu.update.downlink import ParamsEncoder
from hypergpu.update.robust import Rule

log = logging.getLogger("hypergpu.coordinator")

#: Called with each finished round's record (a plain function or a coroutine function).
RoundObserver = Callable[["Coordinator", RoundRecord], Awaitable[None] | None]


class Coordinator:
    """Runs training rounds over the nodes that join it."""

    resumed_from: int | None = None  # the round of the checkpoint it resumed from, once restored

    def __init__(
        self,
        config: HyperGPUConfig,
        *,
        planner: Planner | None = None,
        outer: OuterOptimizer | None = None,
        model: nn.Module | None = None,
        token: str | None = None,
        events: EventBus | None = None,
        expected_nodes: int | None = None,
    ):
        self.config = config
        c = config.coordinator
        self.token = token or secrets.token_urlsafe(18)
        self.events = events or EventBus(c.event_window)
        self.expected_nodes = config.nodes.count if expected_nodes is None else expected_nodes
        self.data = prepare_run_data(config)
        self.shards = self.data.manager
        self.task = task_for(config, bytes_per_token=self.data.bytes_per_token)
        #: which samples each node trains on per round: shards follow the work
        self.work = WorkDealer(self.shards, config.training.seed, config.training.epochs,
                               mix=self.data.node_meta() is not None)
        self.model = ModelManager(model if model is not None
                                  else build_model(config.training, self.data.input_shape, self.data.num_classes))
        self.checkpoints = CheckpointManager.from_config(config)
        self.outcomes = Outcomes(self)  # what became of each update, told once a checkpoint holds it
        self.saver = CheckpointWriter(self.checkpoints, self.outcomes.written, self.events)  # behind the rounds
        self.life = secrets.token_hex(8)  # a node welcomed by another life knows its unapplied updates are lost
        self.registry = NodeRegistry(c.max_consecutive_failures)
        #: What each node holds, so parameters can go down as compressed deltas; the initial ones, built
        #: from the config and seed, are what nodes build too: named by digest, not sent.
        self.downlink = ParamsEncoder(self.model.flat_parameters() if model is None else None)
        self.members = Membership(self.registry, self.shards, self.events, on_new_link=self.downlink.forget,
                                  sections_for=self.data.shard_sections)
        self.members.max_nodes, self.members.settlement = c.max_nodes, functools.partial(settlement, self)
        self.book = RoundBook(quorum=c.quorum, late_policy=LatePolicy(c.late_updates), decay=c.staleness_decay,
                              max_staleness=c.max_staleness)
        self.planner: Planner = planner or StaticPlanner(config)
        self.outer: OuterOptimizer = outer or outer_optimizer_for(config)
        self.network = NetworkScript(config.network.events, self.members.send, self.events.publish)
        self.history: deque[RoundRecord] = deque(maxlen=c.metric_history)
        self.refusals: Counter[str] = self.members.refused  # refused updates count with refused hellos
        self.members.names = name_book(config)  # which key holds which name
        self.round = 0
        self.samples = 0
        self.observers: list[RoundObserver] = []
        self.faults: Counter[str] = Counter()  # exceptions round observers raised, by observer
        #: node id -> why an operator took it out of the rounds (see :meth:`exclude`).
        self.excluded: dict[int, str] = {}
        self._server: Server | None = None
        self._open: Round | None = None
        self.closed = 0  # the last round closed: the parameters sent include its outer step
        self._dealt: Dealt | None = None  # the open round's
        self._ahead: dict[int, Dealt] = {}  # with overlap: the next round, dealt and sent before it opens
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dispatch = Dispatch(self.members, self.downlink, self.events, self._spawn)
        self.intake = UpdateIntake(self)
        self.effects = EffectScorer(config, self.model, self.data.test, self.task, self.events)  # off the round's path
        self._progress, self._stop, self._running = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._running.set()

    # --- lifecycle ------------------------------------------------------------

    @property
    def join_string(self) -> str:
        """The join string to hand nodes (the first of :attr:`join_strings`)."""
        return self.join_strings[0]

    @property
    def join_strings(self) -> list[str]:
        """Every address nodes may join by (see :mod:`hypergpu.coordinator.identity`)."""
        if self._server is None:
            raise TransportError("the coordinator is not listening yet; call start()")
        c = self.config.coordinator
        return join_strings(c.host, self._server.address[1], self._server.fingerprint, c.advertise)

    async def start(self, *, resume: bool = False) -> str:
        """Listen for nodes (``resume``: restored from the newest checkpoint first, so the
        nodes that reconnect find the run as it was); returns the join string nodes need."""
        c = self.config.coordinator
        if resume and self.resumed_from is None:
            self.resumed_from = await asyncio.to_thread(resume_run, self)
        self.outcomes.bind(asyncio.get_running_loop())
        # Kept beside the checkpoints, the identity (and so the join string) outlives a restart.
        identity = kept_identity(c.checkpoint_dir / "identity") if c.checkpoint_every else None
        self._server = await Server.listen(c.host, c.port, token=self.token, identity=identity,
                                          config=transport_config(self.config, self.model.layout.total))
        self.members.fingerprint = self._server.fingerprint  # what nodes sign their hellos for
        self._spawn(self._accept_loop())
        self._spawn(self.members.watch_heartbeats(c.heartbeat_interval_s))
        self.events.publish("training", type="listening", join=self.join_string, joins=self.join_strings)
        log.info("coordinator listening: %s", " ".join(self.join_strings))
        return self.join_string

    def admission(self) -> dict[str, int]:
        """The transport's admission so far: joins in flight, refused as busy, retries, hello timeouts."""
        return self._server.admission() if self._server is not None else {}

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

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()
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
        await self.members.farewell_all("training finished")
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.effects.close()
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def run(self, *, resume: bool = False, join_timeout_s: float = 120.0) -> Summary:
        """Train for the configured rounds (or until the target accuracy)."""
        if self._server is None:
            await self.start(resume=resume)
        elif resume and self.resumed_from is None:  # listening already: restored late, but restored
            self.resumed_from = await asyncio.to_thread(resume_run, self)
        t = self.config.training
        start_round = (self.resumed_from or 0) + 1
        started = time.perf_counter()
        await self.members.wait_for(self.expected_nodes, join_timeout_s, self._stop)
        self._spawn(self.network.run_timed(lambda: self.round))
        last: RoundRecord | None = None
        reached = False
        for round_id in range(start_round, t.rounds + 1):
            await self._running.wait()
            if self._stop.is_set():
                break
            await self.network.at_round(round_id)
            record = await self._run_round(round_id)
            if round_id % t.eval_interval == 0 or round_id == t.rounds:
                began = time.perf_counter()
                result = await asyncio.to_thread(self.model.evaluate, self.data.test, task=self.task,
                                                 indices=self.data.eval_indices)
                record = last = record.evaluated(result, eval_s=time.perf_counter() - began)
                reached = self.task.reached(result, t)
            await self._finish_round(record)
            if reached:
                break
        if self._stop.is_set() and self.round:
            # Graceful stop: keep the work done so far.
            checkpoint_behind(self, self.round)
        await self.saver.drain()
        await asyncio.sleep(0)  # the writer's last word reaches the loop
        await self.outcomes.pump()
        await self.effects.settled()
        summary = run_summary(self, last, reached, time.perf_counter() - started)
        self.events.publish("training", type="finished", **summary.as_dict())
        return summary

    async def _finish_round(self, record: RoundRecord) -> None:
        """Tell everyone who follows rounds, and checkpoint when due."""
        self.history.append(record)
        self.planner.observe(record)
        await tell_observers(self, record)
        self.events.publish("training", type="round", **record.as_dict())
        if self.checkpoints.due(record.round):
            checkpoint_behind(self, record.round)

    # --- status ---------------------------------------------------------------

    def link_stats(self, node_id: int) -> Any:
        """The transport's measurements of a node's link (None if not connected)."""
        return self.members.link_stats(node_id)

    def status(self) -> dict[str, Any]:
        """Where the run stands, JSON-ready."""
        return run_status(self)

    # --- the round ------------------------------------------------------------

    async def _run_round(self, round_id: int) -> RoundRecord:
        self.round = round_id
        params, version = self.model.flat_parameters(), self.model.version
        dealt = self._ahead.pop(round_id, None)
        fresh = dealt is None
        dealt = self._dealt = dealt or deal(self, round_id)
        ahead = None
        if self.config.training.overlap and round_id < self.config.training.rounds:
            # dealt before this round's first sends go out: a node busy receiving is an earlier round's
            ahead = self._ahead[round_id + 1] = deal(self, round_id + 1)
        fragments = self.model.layout.fragments(self.config.training.fragments)
        where = fragments[(round_id - 1) % len(fragments)]  # Streaming DiLoCo: the part this round syncs
        rnd = self._open = Round(dealt.plan, params[where], self.book, now=time.perf_counter(),
                                 assigned=dealt.assigned, timeout_s=self.config.coordinator.round_timeout_s,
                                 version=version, sent=dealt.sent, fragments=len(fragments),
                                 aggregation=Rule.of(self.config.coordinator),
                                 deterministic=self.config.coordinator.deterministic,
                                 quorum_grace=self.config.coordinator.quorum_grace
                                 if self.config.training.overlap else None,
                                 # per link: a node's fragments end where these pieces do
                                 pieces=self.model.layout.fragments(self.config.training.link_fragments))
        if fresh:
            # Sends run on their own: a slow link must not hold up the others,
            # and the round's deadline runs from its start.
            self.dispatch.send_all(round_id, dealt, params, version, self.closed)
        if self.config.training.overlap:
            self.dispatch.send_ahead(round_id, dealt, ahead, fresh, params, version, self.closed)
        await self.intake.round_opened()  # updates that came while the last round closed
        self._progress.clear()
        while not rnd.expire(now := time.perf_counter()) and not self._stop.is_set():
            self._progress.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._progress.wait(), rnd.wait_s(now))
        rnd.seal()

        def apply(mean: np.ndarray) -> int:
            crash_point("aggregate", round_id)
            if rnd.moved is not None:  # link fragments: only the parts some node sent move
                return self.outer.step(self.model, mean, rnd.moved)
            return self.outer.step(self.model, mean, None if len(fragments) == 1 else where)

        record = await asyncio.to_thread(rnd.close, time.perf_counter(), apply, self.model.version)
        record = replace(record, closed_at=time.time())
        record = await self.effects.begin(rnd, params, where, record)
        self.closed = round_id
        if record.applied:
            self.samples += record.samples
        self.work.settle(record)
        self.outcomes.closed(record)
        await self.members.after_round(record)
        return record

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
        welcome = WelcomeMeta(
            node_id=0, training=self.config.training.model_dump(mode="json"),
            layout=self.model.layout.digest, num_params=self.model.layout.total,
            task=self.task.name, input_shape=list(self.data.input_shape), num_classes=self.data.num_classes,
            data_source=self.data.node_meta(),
        )
        node = await self.members.greet(link, welcome, self.config.coordinator.admission.hello_timeout_s)
        if node is None:  # refused, and counted
            return
        try:
            await self._read(node, link)
        finally:
            self.members.disconnected(node, link)

    async def _read(self, node: NodeInfo, link: Connection) -> None:
        while True:
            try:
                frame = await link.recv()
            except TransportError:
                return
            try:
                msg = protocol.decode(frame, max_meta=protocol.MAX_META)
            except HyperGPUError as exc:
                reason = undecodable(exc)
                node.refusals[reason] += 1
                self.refusals[reason] += 1
                log.warning("node %d: message refused (%s): %s", node.node_id, reason, exc)
                continue
            self.registry.seen(node.node_id)
            if msg.kind == "update":
                await self.intake.arrived(node, msg, len(frame))
            elif msg.kind == "heartbeat":
                node.bytes_received += len(frame)
            elif msg.kind == "control":
                await resync(self, node, msg)
            elif msg.kind == "metrics":
                publish_metrics(self, node, msg)
            elif msg.kind == "bye":
                await self.members.left(node)
                return
            else:
                node.refusals["unexpected"] += 1
                self.refusals["unexpected"] += 1

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
