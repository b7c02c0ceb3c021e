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
from collections.abc import Callable

import numpy as np
from torch import nn

from hypergpu.errors import TransportError
from hypergpu.model.nets import build_model
from hypergpu.node.session import (
    Backoff,
    NodeReport,
    Session,
    UpdateEncoder,
    Welcome,
    hello_meta,
    shards_of,
)
from hypergpu.node.trainer import LocalTrainer
from hypergpu.protocol import Message
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
        self.session = Session(
            join,
            token=token,
            name=name,
            hello=hello_meta(name, index, device, speed_factor),
            shape=shape,
            backoff=backoff,
            heartbeat_s=heartbeat_s,
            report=self.report,
            on_welcome=self._on_welcome,
        )
        self._trainer: LocalTrainer | None = None
        self._encoder = UpdateEncoder()

    @property
    def shape(self) -> LinkShape | None:
        return self.session.shape

    # --- main loop --------------------------------------------------------------

    async def run(self) -> NodeReport:
        session = self.session
        await session.connect()
        heartbeat = asyncio.ensure_future(session.heartbeats())
        early: Message | None = None
        try:
            while True:
                try:
                    msg = await session.recv(timeout=self.idle_timeout_s)
                except TransportError as exc:
                    log.info("%s: link lost (%s); reconnecting", self.name, exc)
                    await session.connect()
                    continue
                if msg.kind == "welcome":
                    self._on_welcome(msg)
                    if early is not None:
                        msg, early = early, None
                        await self._on_params(msg)
                elif msg.kind == "params" and self._trainer is None:
                    # Each message has its own stream, so the first round's
                    # parameters can overtake the (larger) welcome: hold them.
                    early = msg
                elif msg.kind == "params":
                    await self._on_params(msg)
                elif msg.kind == "ack":
                    self.report.record_ack(msg)
                elif msg.kind == "control":
                    if self._on_control(msg):
                        break
                elif msg.kind == "bye":
                    break
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat
            await session.close("node finished")
        if self._trainer is not None:
            self.report.metrics = self._trainer.metrics.snapshot()
        return self.report

    # --- messages ---------------------------------------------------------------

    def _on_welcome(self, msg: Message) -> None:
        welcome = Welcome.parse(msg)
        self.report.node_id = welcome.node_id
        if self._trainer is None:
            first = welcome.shards[0]
            input_shape = tuple(first.x.shape[1:])
            if self.model_factory is not None:
                model = self.model_factory(input_shape, first.num_classes)
            else:
                model = build_model(welcome.training, input_shape, first.num_classes)
            self._trainer = LocalTrainer(
                model,
                welcome.shards,
                welcome.training,
                device=self.device,
                speed_factor=self.speed_factor,
                seed=self.seed,
                threads=self.threads,
            )
            welcome.check_layout(self._trainer.layout.digest, self.name, self._trainer.layout.total)
        elif welcome.shards:
            self._trainer.set_shard(welcome.shards)

    async def _on_params(self, msg: Message) -> None:
        trainer = self._trainer
        if trainer is None:
            raise TransportError(f"{self.name}: parameters arrived before the welcome")
        params = self.session.take_params(msg)
        if params is None:
            return  # the coordinator sends the whole vector again
        meta = msg.meta
        steps = int(meta.get("local_steps", 0)) or None
        result = await asyncio.to_thread(
            trainer.train_round,
            params,
            steps=steps,
            batch_size=int(meta.get("batch_size", trainer.training.batch_size)),
            accumulation=int(meta.get("accumulation", 1)),
        )
        out_meta = {
            "samples": result.samples_seen,
            "loss": result.metrics["loss"],
            "accuracy": result.metrics["accuracy"],
            "compute_s": result.metrics["compute_s"],
            "wall_s": result.metrics["wall_s"],
            "version": meta.get("version"),
        }
        update = self._encoder.message(result.update, meta, out_meta, msg.round)
        retries_before = self.report.retries
        comm = await self.session.send(update)
        trainer.metrics.record_comm(comm, self.report.retries - retries_before)
        log.info("%s: sent update for round %d (%s, loss %.4f)", self.name, msg.round, update.codec, result.metrics["loss"])
        self.report.rounds += 1
        self.report.samples += result.samples_seen

    def _on_control(self, msg: Message) -> bool:
        """Handle a control message; True means stop."""
        kind = msg.meta.get("type")
        if kind == "shard" and self._trainer is not None:
            self._trainer.set_shard(shards_of(msg))
        elif kind == "shape":
            self.session.set_shape(str(msg.meta["profile"]), seed=self.seed or 0)
        elif kind == "stop":
            return True
        return False
