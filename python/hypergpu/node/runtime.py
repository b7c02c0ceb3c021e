"""A node process: join the coordinator, train each round, send the update.

The node connects over the QUIC transport (shaping its own link when asked,
so a whole WAN can be emulated on one machine), introduces itself, receives
its training settings and data shard, then answers every ``params`` message
with an update encoded by the codec the coordinator chose for it. A lost
connection is retried with exponential backoff; a resent update is safe
because the coordinator applies each (node, round) at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from hypergpu import protocol
from hypergpu.config.schema import TrainingConfig
from hypergpu.data.shards import Shard
from hypergpu.errors import HyperGPUError, ShapeMismatchError, TransportError
from hypergpu.model.nets import build_model
from hypergpu.node.trainer import LocalTrainer
from hypergpu.protocol import Message
from hypergpu.transport import Connection, LinkShape, connect
from hypergpu.update.codec import Codec
from hypergpu.wire import TensorSpec

log = logging.getLogger("hypergpu.node")


@dataclass
class Backoff:
    """Exponential backoff between retries: first, first*factor, … up to ``cap``."""

    first_s: float = 0.2
    factor: float = 2.0
    cap_s: float = 5.0
    attempts: int = 8

    def delays(self) -> list[float]:
        return [min(self.cap_s, self.first_s * self.factor**i) for i in range(self.attempts)]


@dataclass
class NodeReport:
    node_id: int | None
    rounds: int = 0
    samples: int = 0
    acks: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    reconnects: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


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
        self.shape = shape
        self.seed = seed
        self.threads = threads
        self.model_factory = model_factory
        self.backoff = backoff or Backoff()
        self.heartbeat_s = heartbeat_s
        self.idle_timeout_s = idle_timeout_s
        self.report = NodeReport(node_id=None)
        self._link: Connection | None = None
        self._trainer: LocalTrainer | None = None
        self._residual: np.ndarray | None = None

    # --- connection -------------------------------------------------------------

    async def _connect(self) -> Connection:
        """Connect and introduce ourselves, retrying with backoff."""
        last: Exception | None = None
        for attempt, delay in enumerate([0.0, *self.backoff.delays()]):
            if delay:
                await asyncio.sleep(delay)
            try:
                link = await connect(self.join, token=self.token, name=self.name, shape=self.shape)
                hello = {
                    "name": self.name,
                    "index": self.index,
                    "device": self.device,
                    "speed_factor": self.speed_factor,
                }
                await link.send(protocol.encode(Message("hello", hello)))
                if attempt:
                    self.report.reconnects += 1
                return link
            except TransportError as exc:
                last = exc
                log.info("%s: connect attempt %d failed: %s", self.name, attempt + 1, exc)
        raise TransportError(f"{self.name}: could not reach the coordinator: {last}")

    async def _send(self, msg: Message) -> float:
        """Send ``msg``; on a broken link reconnect and resend. Returns seconds spent."""
        frame = protocol.encode(msg)
        started = time.perf_counter()
        for delay in [0.0, *self.backoff.delays()]:
            if delay:
                await asyncio.sleep(delay)
                self.report.retries += 1
            try:
                assert self._link is not None
                await self._link.send(frame)
                return time.perf_counter() - started
            except TransportError as exc:
                log.info("%s: send failed (%s); reconnecting", self.name, exc)
                with contextlib.suppress(TransportError):
                    self._link = await self._reconnect()
        raise TransportError(f"{self.name}: could not deliver a {msg.kind} message")

    async def _reconnect(self) -> Connection:
        link = await self._connect()
        welcome = protocol.decode(await link.recv(timeout=30.0))
        self._on_welcome(welcome)
        return link

    # --- main loop --------------------------------------------------------------

    async def run(self) -> NodeReport:
        self._link = await self._connect()
        heartbeat = asyncio.ensure_future(self._heartbeats())
        early: Message | None = None
        try:
            while True:
                try:
                    frame = await self._link.recv(timeout=self.idle_timeout_s)
                except TransportError as exc:
                    log.info("%s: link lost (%s); reconnecting", self.name, exc)
                    self._link = await self._connect()
                    continue
                msg = protocol.decode(frame)
                if msg.kind == "welcome":
                    self._on_welcome(msg)
                    if early is not None:
                        early, msg = None, early
                        await self._on_params(msg)
                elif msg.kind == "params" and self._trainer is None:
                    # Each message has its own stream, so the first round's
                    # parameters can overtake the (larger) welcome: hold them.
                    early = msg
                elif msg.kind == "params":
                    await self._on_params(msg)
                elif msg.kind == "ack":
                    self.report.acks["accepted" if msg.meta.get("accepted") else str(msg.meta.get("reason"))] += 1
                elif msg.kind == "control":
                    if self._on_control(msg):
                        break
                elif msg.kind == "bye":
                    break
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat
            if self._link is not None:
                with contextlib.suppress(HyperGPUError):
                    await self._link.close("node finished")
        if self._trainer is not None:
            self.report.metrics = self._trainer.metrics.snapshot()
        return self.report

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            link = self._link
            if link is None:
                continue
            with contextlib.suppress(HyperGPUError):
                await link.send(protocol.encode(Message("heartbeat", {"t": time.time()})))

    # --- messages ---------------------------------------------------------------

    def _on_welcome(self, msg: Message) -> None:
        self.report.node_id = int(msg.meta["node_id"])
        training = TrainingConfig.model_validate(msg.meta["training"])
        shards = _shards(msg)
        if self._trainer is None:
            first = shards[0]
            input_shape = tuple(first.x.shape[1:])
            if self.model_factory is not None:
                model = self.model_factory(input_shape, first.num_classes)
            else:
                model = build_model(training, input_shape, first.num_classes)
            self._trainer = LocalTrainer(
                model,
                shards,
                training,
                device=self.device,
                speed_factor=self.speed_factor,
                seed=self.seed,
                threads=self.threads,
            )
            if self._trainer.layout.digest != msg.meta["layout"]:
                raise ShapeMismatchError(
                    f"{self.name}: this node's model does not match the coordinator's "
                    f"(layout {self._trainer.layout.digest[:12]} vs {str(msg.meta['layout'])[:12]})"
                )
        elif shards:
            self._trainer.set_shard(shards)

    async def _on_params(self, msg: Message) -> None:
        trainer = self._trainer
        if trainer is None:
            raise TransportError(f"{self.name}: parameters arrived before the welcome")
        meta = msg.meta
        steps = int(meta.get("local_steps", 0)) or None
        result = await asyncio.to_thread(
            trainer.train_round,
            np.asarray(msg.sections["params"]),
            steps=steps,
            batch_size=int(meta.get("batch_size", trainer.training.batch_size)),
            accumulation=int(meta.get("accumulation", 1)),
        )
        codec_name = str(meta.get("codec", "raw"))
        out_meta = {
            "samples": result.samples_seen,
            "loss": result.metrics["loss"],
            "accuracy": result.metrics["accuracy"],
            "compute_s": result.metrics["compute_s"],
            "wall_s": result.metrics["wall_s"],
            "version": meta.get("version"),
        }
        update = self._encode(result.update, codec_name, meta)
        retries_before = self.report.retries
        comm = await self._send(Message("update", out_meta, update.sections, round=msg.round, codec=update.codec,
                                        zstd=update.zstd, update_spec=update.update_spec))
        trainer.metrics.record_comm(comm, self.report.retries - retries_before)
        self.report.rounds += 1
        self.report.samples += result.samples_seen

    def _encode(self, update: np.ndarray, codec_name: str, meta: dict[str, Any]) -> Message:
        """The update section (and codec fields) for ``update``."""
        if codec_name == "raw" and not meta.get("zstd"):
            return Message("update", sections={"update": update})
        ratio = meta.get("codec_ratio")
        codec = Codec(codec_name, ratio=ratio if codec_name == "topk" else None, zstd=bool(meta.get("zstd")))
        residual = None
        if codec.error_feedback:
            if self._residual is None or self._residual.shape != update.shape:
                self._residual = np.zeros_like(update)
            residual = self._residual
        encoded = codec.encode(update, residual)
        return Message(
            "update",
            sections={"update": np.frombuffer(encoded.payload, dtype=np.uint8)},
            codec=codec_name,
            zstd=codec.zstd,
            update_spec=TensorSpec("update", "f32", list(update.shape), 0),
        )

    def _on_control(self, msg: Message) -> bool:
        """Handle a control message; True means stop."""
        kind = msg.meta.get("type")
        if kind == "shard" and self._trainer is not None:
            self._trainer.set_shard(_shards(msg))
        elif kind == "shape" and self._link is not None:
            self.shape = LinkShape.profile(str(msg.meta["profile"]), seed=self.seed or 0)
            self._link.set_shape(self.shape)
        elif kind == "stop":
            return True
        return False


def _shards(msg: Message) -> list[Shard]:
    return [Shard.from_bytes(bytes(v)) for k, v in sorted(msg.sections.items()) if k.startswith("shard")]
