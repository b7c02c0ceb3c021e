"""A node's side of the coordinator protocol, shared by every kind of node.

:class:`Session` owns the link: it connects with backoff, introduces the
node (``hello``), resends over a fresh link when one breaks, and sends
heartbeats. :class:`Welcome` is what the coordinator answers with (node id,
training settings, layout digest, data shard); :class:`UpdateEncoder`
turns a round's update into an ``update`` message with the codec the
coordinator assigned, keeping the top-k residual across rounds. The
built-in :class:`~hypergpu.node.runtime.Node` and the wrapped optimizer
(:class:`~hypergpu.node.optimizer.DistributedOptimizer`) both build on these.
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

from hypergpu import protocol
from hypergpu.config.schema import TrainingConfig
from hypergpu.data.shards import Shard
from hypergpu.errors import HyperGPUError, ShapeMismatchError, TransportError
from hypergpu.protocol import Message
from hypergpu.transport import Connection, LinkShape, connect
from hypergpu.update.codec import Codec
from hypergpu.update.downlink import ParamsDecoder
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

    def record_ack(self, msg: Message) -> None:
        """Count an ``ack``: ``accepted``, or the coordinator's refusal reason."""
        self.acks["accepted" if msg.meta.get("accepted") else str(msg.meta.get("reason"))] += 1


def hello_meta(name: str, index: int | None, device: str, speed_factor: float) -> dict[str, Any]:
    """What a node says about itself when it joins."""
    return {"name": name, "index": index, "device": device, "speed_factor": speed_factor}


@dataclass(frozen=True)
class Welcome:
    """The coordinator's answer to a hello."""

    node_id: int
    training: TrainingConfig
    layout: str  # digest of the coordinator's ParamLayout
    num_params: int | None
    shards: list[Shard]

    @classmethod
    def parse(cls, msg: Message) -> Welcome:
        num_params = msg.meta.get("num_params")
        return cls(
            node_id=int(msg.meta["node_id"]),
            training=TrainingConfig.model_validate(msg.meta["training"]),
            layout=str(msg.meta["layout"]),
            num_params=int(num_params) if num_params is not None else None,
            shards=shards_of(msg),
        )

    def check_layout(self, digest: str, who: str, num_params: int | None = None) -> None:
        """Refuse a model whose flat layout differs from the coordinator's."""
        if digest != self.layout:
            sizes = ""
            if num_params is not None and self.num_params is not None:
                sizes = f"; {num_params} values here, {self.num_params} there"
            raise ShapeMismatchError(
                f"{who}: this node's model does not match the coordinator's "
                f"(layout {digest[:12]} vs {self.layout[:12]}{sizes})"
            )


def shards_of(msg: Message) -> list[Shard]:
    """The data shards a welcome or a ``shard`` control message carries (checksums verified)."""
    return [Shard.from_bytes(bytes(v)) for k, v in sorted(msg.sections.items()) if k.startswith("shard")]


class UpdateEncoder:
    """Encodes updates with the codec a round's assignment names.

    The top-k residual (what earlier rounds did not send) lives here, so it
    carries over from round to round.
    """

    def __init__(self) -> None:
        self.residual: np.ndarray | None = None

    def message(self, update: np.ndarray, assignment: dict[str, Any], meta: dict[str, Any], round_id: int) -> Message:
        """The ``update`` message for ``update`` (float32, flat) in ``round_id``."""
        codec_name = str(assignment.get("codec", "raw"))
        zstd = bool(assignment.get("zstd"))
        if codec_name == "raw" and not zstd:
            return Message("update", meta, {"update": update}, round=round_id)
        ratio = assignment.get("codec_ratio")
        codec = Codec(codec_name, ratio=ratio if codec_name == "topk" else None, zstd=zstd)
        residual = None
        if codec.error_feedback:
            if self.residual is None or self.residual.shape != update.shape:
                self.residual = np.zeros_like(update)
            residual = self.residual
        encoded = codec.encode(update, residual)
        return Message(
            "update",
            meta,
            {"update": np.frombuffer(encoded.payload, dtype=np.uint8)},
            round=round_id,
            codec=codec_name,
            zstd=codec.zstd,
            update_spec=TensorSpec("update", "f32", list(update.shape), 0),
        )


class Session:
    """One node's link to the coordinator, kept up across failures.

    ``on_welcome`` is called with a welcome that :meth:`send` had to wait
    for after reconnecting (a receive loop sees the others itself).
    """

    def __init__(
        self,
        join: str,
        *,
        token: str,
        name: str,
        hello: dict[str, Any],
        shape: LinkShape | None = None,
        backoff: Backoff | None = None,
        heartbeat_s: float = 1.0,
        report: NodeReport | None = None,
        on_welcome: Callable[[Message], None] | None = None,
    ):
        self.join = join
        self.token = token
        self.name = name
        self.hello = hello
        self.shape = shape
        self.backoff = backoff or Backoff()
        self.heartbeat_s = heartbeat_s
        self.report = report if report is not None else NodeReport(node_id=None)
        self.on_welcome = on_welcome
        self.link: Connection | None = None
        #: The parameters this node holds, kept current from ``params`` messages (whole or deltas).
        self.held = ParamsDecoder()
        self._resync: asyncio.Future[Any] | None = None

    async def connect(self) -> Connection:
        """Connect and say hello, retrying with backoff; sets and returns :attr:`link`."""
        last: Exception | None = None
        for attempt, delay in enumerate([0.0, *self.backoff.delays()]):
            if delay:
                await asyncio.sleep(delay)
            try:
                link = await connect(self.join, token=self.token, name=self.name, shape=self.shape)
                await link.send(protocol.encode(Message("hello", self.hello)))
                if attempt:
                    self.report.reconnects += 1
                self.link = link
                return link
            except TransportError as exc:
                last = exc
                log.info("%s: connect attempt %d failed: %s", self.name, attempt + 1, exc)
        raise TransportError(f"{self.name}: could not reach the coordinator: {last}")

    async def reconnect(self, welcome_timeout_s: float = 30.0) -> Connection:
        """Connect again and wait for the welcome (handed to ``on_welcome``)."""
        link = await self.connect()
        welcome = protocol.decode(await link.recv(timeout=welcome_timeout_s))
        if self.on_welcome is not None:
            self.on_welcome(welcome)
        return link

    async def recv(self, timeout: float | None = None) -> Message:
        if self.link is None:
            raise TransportError(f"{self.name}: not connected")
        return protocol.decode(await self.link.recv(timeout=timeout))

    async def send(self, msg: Message, *, reconnect: bool = True) -> float:
        """Send ``msg``; on a broken link reconnect and resend. Returns seconds spent.

        With ``reconnect=False`` another task owns reconnecting (a receive
        loop running beside this call): the send backs off and retries on
        whatever :attr:`link` is by then.
        """
        frame = protocol.encode(msg)
        started = time.perf_counter()
        for delay in [0.0, *self.backoff.delays()]:
            if delay:
                await asyncio.sleep(delay)
                self.report.retries += 1
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

    def take_params(self, msg: Message) -> np.ndarray | None:
        """The parameters a ``params`` message brings this node to (a fresh array).

        A delta this node cannot apply (it holds another state, or the
        payload is corrupt) is refused: the node asks the coordinator for
        the whole vector with a ``resync`` control message and gets None.
        Call in arrival order, from the event loop's thread.
        """
        try:
            return self.held.apply(msg.meta, msg.sections)
        except HyperGPUError as exc:
            log.info("%s: round %d parameters unusable (%s); asking for them whole", self.name, msg.round, exc)
            resync = Message("control", {"type": "resync", "reason": str(exc)}, round=msg.round)
            self._resync = asyncio.ensure_future(self.send(resync, reconnect=False))
            return None

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
