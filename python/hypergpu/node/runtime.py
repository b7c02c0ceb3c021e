"""A node process: join the coordinator, train each round, send the update.

The node connects over the QUIC transport (shaping its own link when asked,
so a whole WAN can be emulated on one machine), introduces itself, receives
its training settings and data shard, then answers every ``params`` message
with an update encoded by the codec the coordinator chose for it. A lost
connection is retried with exponential backoff; a resent update is safe
because the coordinator applies each (node, round) at most once. The link
handling lives in :mod:`hypergpu.node.session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
from torch import nn

from hypergpu import protocol
from hypergpu.errors import HyperGPUError, TransportError
from hypergpu.identity import NodeKey
from hypergpu.model.layout import ParamLayout
from hypergpu.model.task import task_for
from hypergpu.node.data import ShardReader, ensure_shards, reader_for
from hypergpu.node.protocol import (Acked, Ended, Event, NodeProtocol, NodeReport, Reply, Reshape, RoundOpened,
                                    ShardsChanged, Welcome, Welcomed, hello)
from hypergpu.node.metrics import UploadMeter
from hypergpu.node.overlap import Folder, part_of
from hypergpu.node.session import Backoff, Session
from hypergpu.node.settle import Undo, Unsettled
from hypergpu.node.state import NodeState
from hypergpu.node.trainer import LocalTrainer, RoundResult, build_node_model, warm_up_torch
from hypergpu.node.update_encoder import UpdateEncoder
from hypergpu.protocol import Message, UpdateMeta
from hypergpu.transport import LinkShape, TransportConfig

__all__ = ["Backoff", "Node", "NodeReport"]

log = logging.getLogger("hypergpu.node")


class Node:
    """One training node. ``await Node(...).run()`` until the coordinator says bye."""

    _leave_reason = "leaving"

    def __init__(
        self,
        join: str,
        *,
        token: str,
        name: str,
        index: int | None = None,
        device: str = "auto",
        speed_factor: float = 1.0,
        shape: LinkShape | None = None,
        seed: int | None = None,
        threads: int | None = 1,
        model_factory: Callable[[tuple[int, ...], int], nn.Module] | None = None,
        backoff: Backoff | None = None,
        heartbeat_s: float = 1.0,
        idle_timeout_s: float = 600.0,
        state_dir: str | Path | None = None,
        key: NodeKey | str | Path | None = None,
        payout: str | None = None,
        transport: TransportConfig | None = None,
    ):
        self.join, self.token, self.name, self.index = join, token, name, index
        self.device, self.speed_factor, self.seed, self.threads = device, speed_factor, seed, threads
        self.model_factory = model_factory
        self.idle_timeout_s = idle_timeout_s
        self.report = NodeReport(node_id=None)
        self._model: nn.Module | None = None  # built at the first welcome, then the trainer's
        self.protocol = NodeProtocol(self.report, initial=self._initial_params)
        self._pending: deque[Message] = deque()
        self.session = Session(
            join, token=token, name=name, transport=transport,
            hello=hello(name=name, index=index, device=device, speed_factor=speed_factor, payout=payout),
            key=NodeKey.of(key, name, state_dir),  # who it is (a key file is created on first use)
            shape=shape, backoff=backoff, heartbeat_s=heartbeat_s, report=self.report,
            # A welcome that a resend had to wait for is handled once the round in hand is done.
            on_message=self._on_reconnect_message,
        )
        self._trainer: LocalTrainer | None = None
        self._reader: ShardReader | None = None
        self._encoder = UpdateEncoder()
        self._leaving = asyncio.Event()  # set by leave(): say bye and stop
        self.unsettled = Unsettled()  # updates received but not known applied (node/settle.py)
        self._idle_from: float | None = None  # waiting since (None before the first work: start-up is no wait)
        #: (kind, round, began, ended) lately, by its clock: "train", "upload" (the transport took it), "acked"
        self.timeline: deque[tuple[str, int, float, float]] = deque(maxlen=1024)
        self.uploads = UploadMeter()  # send -> ack of each update, told to the coordinator
        # overlap: parameters folded in as it trains, work queued (earliest round first), its worker, uploads
        self._folder, self._arrival = Folder(), asyncio.Event()
        self._work: asyncio.PriorityQueue[tuple[int, RoundOpened]] = asyncio.PriorityQueue()
        self._worker: asyncio.Task[None] | None = None
        self._queued: deque[int] = deque(maxlen=64)  # the rounds whose work was queued lately
        self._uploads: set[asyncio.Task[None]] = set()
        #: where this node checkpoints its inner optimizer after every round (None: nowhere)
        self.state = NodeState(state_dir, name) if state_dir is not None else None

    @property
    def shape(self) -> LinkShape | None:
        return self.session.shape

    # --- main loop --------------------------------------------------------------

    async def run(self) -> NodeReport:
        session = self.session
        await asyncio.to_thread(warm_up_torch)  # before joining: its first round starts on time
        await session.connect()
        heartbeat = asyncio.ensure_future(session.heartbeats())
        try:
            while not self.protocol.finished:
                msg = self._pending.popleft() if self._pending else await self._recv()
                if msg is not None:
                    for event in self.protocol.handle(msg):
                        await self._act(event)
        finally:
            if self._uploads:  # the last updates still on their way
                await asyncio.wait(self._uploads, timeout=self.idle_timeout_s)
            for task in (heartbeat, self._worker):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
            await session.close("node finished")
        if self._trainer is not None:
            self.report.metrics = self._trainer.metrics.snapshot()
        return self.report

    def leave(self, reason: str = "leaving") -> None:
        """Say ``bye`` and stop, once the round in hand is sent (SIGTERM/SIGINT land here):
        the coordinator lends this node's shards to the others."""
        self._leaving.set()
        self._leave_reason = reason

    async def _say_bye(self) -> None:
        self.protocol.finished = True
        link = self.session.link
        if link is not None:
            with contextlib.suppress(HyperGPUError):  # delivered before the link closes
                await link.send(protocol.encode(Message("bye", {"reason": self._leave_reason})), timeout=5.0,
                                acked=True)
        log.info("%s: left the run (%s)", self.name, self._leave_reason)

    async def _recv(self) -> Message | None:
        try:
            recv = asyncio.ensure_future(self.session.recv(timeout=self.idle_timeout_s))
            leaving = asyncio.ensure_future(self._leaving.wait())
            # With overlap the trainer runs beside this loop: its failure ends the node.
            waits = {recv, leaving} if self._worker is None else {recv, leaving, self._worker}
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            leaving.cancel()
            if not recv.done():
                recv.cancel()
                if self._leaving.is_set():
                    await self._say_bye()
                    return None
                assert self._worker is not None
                self._worker.result()
            return recv.result()
        except TransportError as exc:
            log.info("%s: link lost (%s); reconnecting", self.name, exc)
            await self.session.connect()
            return None

    async def _act(self, event: Event) -> None:
        if isinstance(event, Welcomed):
            if not event.first:
                self._folder.rejoined()
            self._on_welcome(event.welcome)
            self._undo(self.unsettled.welcomed(event.welcome.settlement))
        elif isinstance(event, RoundOpened):
            if self._trainer is not None and self._trainer.training.overlap:
                self._on_round_overlapped(event)
            else:
                await self._train(event)
        elif isinstance(event, Acked):
            # when the coordinator had the whole update: the upload's end, by this node's clock
            now = time.perf_counter()
            if event.ack.applied is None:
                self.timeline.append(("acked", event.ack.round, now, now))
                self.uploads.acked(event.ack.round, now)
            if event.ack.late_s and self._trainer is not None and self._trainer.training.overlap:
                self._folder.catch_up(event.ack.late_s)  # late by its phase: one shorter work realigns it
            self._undo(self.unsettled.acked(event.ack))
        elif isinstance(event, ShardsChanged) and self._trainer is not None:
            self._trainer.set_shard(event.shards)
        elif isinstance(event, Reshape):
            self.session.set_shape(event.profile, seed=self.seed or 0)
        elif isinstance(event, Reply):
            await self.session.send(event.message)
        elif isinstance(event, Ended):
            log.info("%s: training over (%s)", self.name, event.reason)

    # --- events -----------------------------------------------------------------

    def _on_reconnect_message(self, msg: Message) -> None:
        # what a welcome settles is settled at once: the resend waiting on it may be for a lost round
        if msg.kind == "welcome":
            with contextlib.suppress(HyperGPUError):
                self._undo(self.unsettled.welcomed(Welcome.parse(msg).settlement))
        self._pending.append(msg)

    def _undo(self, undo: Undo) -> None:
        """Take back updates that were never applied: their residuals are owed again, and
        the inner optimizer goes back to before the first of them (a coordinator that
        resumed from a checkpoint deals those rounds again)."""
        if not undo:
            return
        trainer = self._trainer
        optimizer = None if trainer is None else trainer.inner_optimizer()
        if undo.optimizer is not None and trainer is not None and trainer.training.overlap:
            # the trainer may be stepping on its own thread right now
            log.info("%s: rounds %s lost; the inner optimizer keeps its state (overlap)", self.name, undo.rounds)
            optimizer = None
        undo.take_back(lambda key: self._encoder, optimizer)
        log.info("%s: updates for rounds %s were not applied; taken back", self.name, undo.rounds)

    def _on_welcome(self, welcome: Welcome) -> None:
        if welcome.data_source is not None and self._reader is None:
            self._reader = reader_for(welcome.data_source, self.name)
        if self._trainer is None:
            self._trainer = LocalTrainer(
                self._model_for(welcome),
                welcome.shards or None,
                welcome.training,
                task=task_for(welcome.task),  # type: ignore[arg-type]
                device=self.device,
                speed_factor=self.speed_factor,
                seed=self.seed,
                threads=self.threads,
            )
            welcome.check_layout(self._trainer.layout.digest, self.name, self._trainer.layout.total)
            if self.state is not None:
                self.state.restore(self._trainer)
        elif welcome.shards:
            self._trainer.set_shard(welcome.shards)

    def _model_for(self, welcome: Welcome) -> nn.Module:
        """The node's model as the run's config and seed build it, built once."""
        if self._model is None:
            self._model = build_node_model(welcome.training, *welcome.model_io(), self.model_factory, self.seed)
        return self._model

    def _initial_params(self, welcome: Welcome) -> np.ndarray | None:
        """Its parameters before any training (asked at the first welcome): round 1 may name them by digest."""
        model = self._model_for(welcome)
        return ParamLayout.from_model(model).flatten(model)

    async def _train(self, opened: RoundOpened) -> None:
        """Without overlap: fold the round's parameters in, train, send, then wait for the next."""
        # Nothing trained since the last update, and it all went out: the parameters are loaded
        # as they are (folding them in would add rounding that depends on the node's history).
        t = None if self._trainer is None else self._trainer.training
        plain = t is None or t.fragments == t.link_fragments == 1
        self._folder.arrive(opened.params, opened.version, opened.closed or 0, replace=plain)
        trainer, result, version, idle = await self._train_work(opened)
        await self._send_update(opened, result, version, idle, reconnect=True)
        await self._save_state(trainer, opened.round)

    async def _train_work(self, opened: RoundOpened) -> tuple[LocalTrainer, RoundResult, int | None, float]:
        """Fold in what arrived, train the round's work; the result carries the part to send
        (the round's fragment of the progress not sent yet), with the version it began from."""
        trainer = await self._prepare(opened)
        self.unsettled.began(opened.round, copy.deepcopy(trainer.inner_optimizer().state_dict()))
        idle = 0.0 if self._idle_from is None else time.perf_counter() - self._idle_from
        version = await asyncio.to_thread(self._fold_now, trainer)
        result = await asyncio.to_thread(self._train_round, trainer, opened)
        self._idle_from = time.perf_counter()
        part = self._folder.outgoing(opened.round, result.update, part_of(trainer.layout, trainer.training, opened))
        return trainer, result._replace(update=part), version, idle

    def _on_round_overlapped(self, opened: RoundOpened) -> None:
        """With overlap: fold the parameters in when the trainer can, and queue the work."""
        self._folder.arrive(opened.params, opened.version, opened.closed or 0)
        self._arrival.set()
        if opened.round in self._queued:
            return  # parameters alone, for work already in hand
        self._queued.append(opened.round)
        self._work.put_nowait((opened.round, opened))
        if self._worker is None:
            self._worker = asyncio.ensure_future(self._work_loop())

    async def _work_loop(self) -> None:
        """With overlap: each work begins as soon as the last one's update is computed."""
        waiting_since: dict[int, float] = {}
        while True:
            _, opened = await self._work.get()
            since = waiting_since.setdefault(opened.round, time.perf_counter())
            if self._misses_lent_data(opened) and time.perf_counter() - since < self.idle_timeout_s:
                # The shards it names come with an earlier round's message, still on its way
                # (past the idle timeout the trainer says which shard never came).
                self._work.put_nowait((opened.round, opened))
                self._arrival.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrival.wait(), self.idle_timeout_s)
                continue
            waiting_since.pop(opened.round, None)
            trainer, result, version, idle = await self._train_work(opened)
            upload = asyncio.ensure_future(self._upload_when_open(opened, result, version, idle))
            self._uploads.add(upload)
            upload.add_done_callback(self._uploads.discard)
            await self._save_state(trainer, opened.round)  # between works: the optimizer is still

    async def _upload_when_open(self, opened: RoundOpened, result: RoundResult, version: int | None,
                                idle_s: float) -> None:
        """Send once the update's round is open on the coordinator (the one before it closed):
        sooner it would be refused as early. The node meanwhile trains on."""
        while self._folder.closed_seen < opened.round - 1:
            self._arrival.clear()
            await self._arrival.wait()
        await self._send_update(opened, result, version, idle_s, reconnect=False)

    def _misses_lent_data(self, opened: RoundOpened) -> bool:
        trainer = self._trainer
        if opened.work is None or opened.shards or self._reader is not None or trainer is None:
            return False
        return any(int(s) not in trainer.data for s in np.unique(opened.work[:, 0]))

    async def _save_state(self, trainer: LocalTrainer, round_id: int) -> None:
        if self.state is not None:
            await asyncio.to_thread(self.state.save, trainer, round_id)

    def _fold_now(self, trainer: LocalTrainer) -> int | None:
        trainer.fold(self._folder)
        return self._folder.version

    async def _prepare(self, opened: RoundOpened) -> LocalTrainer:
        trainer = self._trainer
        if trainer is None:
            raise TransportError(f"{self.name}: parameters arrived before the welcome")
        if opened.shards:
            trainer.set_shard(opened.shards)
        if opened.work is not None:
            await asyncio.to_thread(ensure_shards, trainer.data, self._reader, opened.work)
        return trainer

    def _train_round(self, trainer: LocalTrainer, opened: RoundOpened) -> RoundResult:
        work = opened.assignment
        began = time.perf_counter()
        result = trainer.train_round(None, steps=work.local_steps or None, batch_size=work.batch_size,
                                     accumulation=work.accumulation, work=opened.work, folder=self._folder,
                                     late_after=opened.round if trainer.training.overlap else None)
        self.timeline.append(("train", opened.round, began, time.perf_counter()))
        return result

    async def _send_update(self, opened: RoundOpened, result: RoundResult, version: int | None,
                           idle_s: float, *, reconnect: bool) -> None:
        trainer = self._trainer
        assert trainer is not None
        figures = result.metrics
        where = part_of(trainer.layout, trainer.training, opened)
        meta = UpdateMeta(
            samples=result.samples_seen,
            loss=figures["loss"],
            accuracy=figures["accuracy"],
            # an emulated slower GPU computes for longer: its sleep is compute time
            compute_s=figures["compute_s"] + figures["throttle_s"],
            wall_s=figures["wall_s"],
            idle_s=idle_s,
            version=version,
            # a link's own fragments name their part; the run's schedule is the round's own
            part=None if where is None or trainer.training.link_fragments == 1 else (where.start, where.stop),
            **self.uploads.figures(),
        )
        update = self._encoder.message(result.update, opened.assignment, meta, opened.round,
                                       where, trainer.layout.total)
        self.unsettled.encoded(opened.round, 0, self._encoder.last_delta)
        retries_before = self.report.retries
        began = time.perf_counter()
        self.uploads.began(opened.round, began, sum(a.nbytes for a in update.sections.values()))
        # a resend stops once a new coordinator life says the round is lost (it deals it again)
        comm = await self.session.send(update, reconnect=reconnect,
                                       wanted=lambda: self.unsettled.pending(opened.round))
        self.timeline.append(("upload", opened.round, began, time.perf_counter()))
        trainer.metrics.record_comm(comm, self.report.retries - retries_before)
        log.info("%s: sent update for round %d (%s, loss %.4f)", self.name, opened.round, update.codec,
                 figures["loss"])
        self.report.rounds += 1
        self.report.samples += result.samples_seen
