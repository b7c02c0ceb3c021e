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
import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path

from torch import nn

from hypergpu.errors import TransportError
from hypergpu.model.nets import build_model
from hypergpu.model.task import task_for
from hypergpu.node.data import ShardReader, ensure_shards, reader_for
from hypergpu.node.protocol import (
    Ended,
    Event,
    NodeProtocol,
    NodeReport,
    Reply,
    Reshape,
    RoundOpened,
    ShardsChanged,
    UpdateEncoder,
    Welcome,
    Welcomed,
    hello,
)
from hypergpu.node.session import Backoff, Session
from hypergpu.node.state import NodeState
from hypergpu.node.trainer import LocalTrainer
from hypergpu.protocol import Message, UpdateMeta
from hypergpu.transport import LinkShape

__all__ = ["Backoff", "Node", "NodeReport"]

log = logging.getLogger("hypergpu.node")


class Node:
    """One training node. ``await Node(...).run()`` until the coordinator says bye."""

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
    ):
        self.join = join
        self.token = token
        self.name = name
        self.index = index
        self.device = device
        self.speed_factor = speed_factor
        self.seed = seed
        self.threads = threads
        self.model_factory = model_factory
        self.idle_timeout_s = idle_timeout_s
        self.report = NodeReport(node_id=None)
        self.protocol = NodeProtocol(self.report)
        self._pending: deque[Message] = deque()
        self.session = Session(
            join,
            token=token,
            name=name,
            hello=hello(name=name, index=index, device=device, speed_factor=speed_factor),
            shape=shape,
            backoff=backoff,
            heartbeat_s=heartbeat_s,
            report=self.report,
            # A welcome that a resend had to wait for is handled once the round in hand is done.
            on_message=self._pending.append,
        )
        self._trainer: LocalTrainer | None = None
        self._reader: ShardReader | None = None
        self._encoder = UpdateEncoder()
        #: where this node checkpoints its inner optimizer after every round (None: nowhere)
        self.state = NodeState(state_dir, name) if state_dir is not None else None

    @property
    def shape(self) -> LinkShape | None:
        return self.session.shape

    # --- main loop --------------------------------------------------------------

    async def run(self) -> NodeReport:
        session = self.session
        await session.connect()
        heartbeat = asyncio.ensure_future(session.heartbeats())
        try:
            while not self.protocol.finished:
                msg = self._pending.popleft() if self._pending else await self._recv()
                if msg is not None:
                    for event in self.protocol.handle(msg):
                        await self._act(event)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat
            await session.close("node finished")
        if self._trainer is not None:
            self.report.metrics = self._trainer.metrics.snapshot()
        return self.report

    async def _recv(self) -> Message | None:
        try:
            return await self.session.recv(timeout=self.idle_timeout_s)
        except TransportError as exc:
            log.info("%s: link lost (%s); reconnecting", self.name, exc)
            await self.session.connect()
            return None

    async def _act(self, event: Event) -> None:
        if isinstance(event, Welcomed):
            self._on_welcome(event.welcome)
        elif isinstance(event, RoundOpened):
            await self._train(event)
        elif isinstance(event, ShardsChanged) and self._trainer is not None:
            self._trainer.set_shard(event.shards)
        elif isinstance(event, Reshape):
            self.session.set_shape(event.profile, seed=self.seed or 0)
        elif isinstance(event, Reply):
            await self.session.send(event.message)
        elif isinstance(event, Ended):
            log.info("%s: training over (%s)", self.name, event.reason)

    # --- events -----------------------------------------------------------------

    def _on_welcome(self, welcome: Welcome) -> None:
        if welcome.data_source is not None and self._reader is None:
            self._reader = reader_for(welcome.data_source, self.name)
        if self._trainer is None:
            input_shape, num_classes = welcome.model_io()
            if self.model_factory is not None:
                model = self.model_factory(input_shape, num_classes)
            else:
                model = build_model(welcome.training, input_shape, num_classes)
            self._trainer = LocalTrainer(
                model,
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

    async def _train(self, opened: RoundOpened) -> None:
        trainer = self._trainer
        if trainer is None:
            raise TransportError(f"{self.name}: parameters arrived before the welcome")
        work = opened.assignment
        if opened.shards:
            trainer.set_shard(opened.shards)
        if opened.work is not None:
            await asyncio.to_thread(ensure_shards, trainer.data, self._reader, opened.work)
        result = await asyncio.to_thread(
            trainer.train_round,
            opened.params,
            steps=work.local_steps or None,
            batch_size=work.batch_size,
            accumulation=work.accumulation,
            work=opened.work,
        )
        meta = UpdateMeta(
            samples=result.samples_seen,
            loss=result.metrics["loss"],
            accuracy=result.metrics["accuracy"],
            compute_s=result.metrics["compute_s"],
            wall_s=result.metrics["wall_s"],
            version=opened.version,
        )
        update = self._encoder.message(result.update, work, meta, opened.round)
        retries_before = self.report.retries
        comm = await self.session.send(update)
        trainer.metrics.record_comm(comm, self.report.retries - retries_before)
        log.info("%s: sent update for round %d (%s, loss %.4f)", self.name, opened.round, update.codec,
                 result.metrics["loss"])
        self.report.rounds += 1
        self.report.samples += result.samples_seen
        if self.state is not None:
            await asyncio.to_thread(self.state.save, trainer, opened.round)
