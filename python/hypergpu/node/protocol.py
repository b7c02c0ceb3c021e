"""What each message from the coordinator means to a node, decided once (sans-IO).

:class:`NodeProtocol` takes the messages a node receives, in arrival order,
and answers each with the events it amounts to: :class:`Welcomed`,
:class:`RoundOpened` (the parameters already decoded, whole or as a delta,
with the round's typed :class:`~hypergpu.protocol.Assignment`),
:class:`Acked`, :class:`ShardsChanged`, :class:`Reshape`, :class:`Ended`,
and :class:`Reply` for a message the node must send back (a ``resync``
request when a parameter delta cannot be applied). It does no I/O and
knows no clock, so both drivers — the built-in node
(:mod:`hypergpu.node.runtime`) and the wrapped optimizer's background link
(:mod:`hypergpu.node.background`) — act on the same decisions, and tests
feed it messages directly. The node's own side, the ``update`` message, is
built by :class:`~hypergpu.node.update_encoder.UpdateEncoder`.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np
from pydantic import ValidationError

from hypergpu.config.schema import TrainingConfig
from hypergpu.data.shards import Shard
from hypergpu.errors import FrameError, HyperGPUError, InvalidArgumentError, RefusedError, ShapeMismatchError
from hypergpu.identity import NodeKey
from hypergpu.protocol import (
    Ack,
    Assignment,
    Control,
    Hello,
    Message,
    Refusal,
    WelcomeMeta,
    parse_meta,
    validation_problems,
)
from hypergpu.node.settle import Settlement
from hypergpu.update.downlink import ParamsDecoder, ParamsOrder

__all__ = [
    "Acked",
    "Ended",
    "Event",
    "NodeProtocol",
    "NodeReport",
    "Reply",
    "Reshape",
    "RoundOpened",
    "ShardsChanged",
    "Welcome",
    "Welcomed",
    "hello",
    "shards_of",
    "signed_hello",
]

log = logging.getLogger("hypergpu.node")

#: ``params`` messages held while the welcome has not come yet (they can overtake it).
MAX_EARLY = 4


@dataclass
class NodeReport:
    node_id: int | None
    rounds: int = 0
    samples: int = 0
    acks: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    reconnects: int = 0
    #: Messages dropped because their meta or sections did not fit.
    malformed: int = 0
    metrics: dict[str, float] = field(default_factory=dict)

    def record_ack(self, ack: Ack) -> None:
        """Count an ``ack``: ``accepted`` (received), the coordinator's refusal reason, or
        the round's outcome (``applied`` / ``not-applied``)."""
        if ack.applied is not None:
            self.acks["applied" if ack.applied else "not-applied"] += 1
        else:
            self.acks["accepted" if ack.accepted else str(ack.reason)] += 1


@dataclass(frozen=True)
class Welcome:
    """The coordinator's answer to a hello."""

    node_id: int
    training: TrainingConfig
    layout: str  # digest of the coordinator's ParamLayout
    num_params: int | None
    shards: list[Shard]
    task: str = "classification"
    input_shape: tuple[int, ...] | None = None
    num_classes: int | None = None
    data_source: dict[str, Any] | None = None  # where to read shards (None: they are shipped)
    settlement: Settlement = Settlement()  # what became of this node's earlier updates

    @classmethod
    def parse(cls, msg: Message) -> Welcome:
        meta = parse_meta(WelcomeMeta, msg)
        try:
            training = TrainingConfig.model_validate(meta.training)
        except ValidationError as exc:
            raise FrameError(f"welcome meta refused: training: {validation_problems(exc)}") from None
        shape = tuple(meta.input_shape) if meta.input_shape is not None else None
        return cls(meta.node_id, training, meta.layout, meta.num_params, shards_of(msg),
                   meta.task, shape, meta.num_classes, meta.data_source, Settlement.of(meta))

    def model_io(self) -> tuple[tuple[int, ...], int]:
        """The model's input shape and output size, from the welcome (or its first shard)."""
        if self.input_shape is not None and self.num_classes is not None:
            return self.input_shape, self.num_classes
        if not self.shards:
            raise FrameError("the welcome names neither the model's input nor any shard")
        first = self.shards[0]
        return tuple(first.x.shape[1:]), first.num_classes

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


def _refusal(msg: Message) -> str:
    try:
        return parse_meta(Refusal, msg).reason
    except HyperGPUError as exc:
        return f"(its reason did not parse: {exc})"


def hello(**fields: Any) -> Hello:
    """What a node says about itself when it joins; a bad field is an InvalidArgumentError."""
    try:
        return Hello(**fields)
    except ValidationError as exc:
        raise InvalidArgumentError(f"cannot introduce this node: {validation_problems(exc)}") from None


def signed_hello(hello: Hello, key: NodeKey, challenge: bytes, fingerprint: str) -> Hello:
    """``hello`` for one connection: the key's address, the payout address (the key's own
    unless the hello names another) and the key's signature over the connection's
    ``challenge``, the coordinator's certificate ``fingerprint``, the name and the payout."""
    payout = hello.payout or key.address
    signature = key.sign_hello(challenge, fingerprint, hello.name, payout)
    return hello.model_copy(update={"address": key.address, "payout": payout, "signature": signature})


# --- events -----------------------------------------------------------------------


@dataclass(frozen=True)
class Welcomed:
    """The coordinator (re)admitted this node; ``first`` unless it is a reconnection."""

    welcome: Welcome
    first: bool


@dataclass(frozen=True)
class RoundOpened:
    """A round's work: the parameters to start from (a fresh float32 array this node owns)."""

    round: int
    version: int | None  # the model version the parameters are
    assignment: Assignment
    params: np.ndarray
    # the samples to train on, rows of (shard, index) in training order (None: the node's own choice)
    work: np.ndarray | None = None
    # shipped shards lent to this node for the work (checksums verified)
    shards: list[Shard] = field(default_factory=list)
    # the last round whose outer step the parameters include (None: not said)
    closed: int | None = None


@dataclass(frozen=True)
class Acked:
    ack: Ack


@dataclass(frozen=True)
class ShardsChanged:
    shards: list[Shard]


@dataclass(frozen=True)
class Reshape:
    """Shape this node's link with the named profile from now on."""

    profile: str


@dataclass(frozen=True)
class Ended:
    """The training is over for this node (``bye``, or a ``stop`` control)."""

    reason: str


@dataclass(frozen=True)
class Reply:
    """A message the node must send to the coordinator."""

    message: Message


Event = Union[Welcomed, RoundOpened, Acked, ShardsChanged, Reshape, Ended, Reply]


# --- the handler ------------------------------------------------------------------


class NodeProtocol:
    """A node's protocol state: the welcome, the parameters it holds, the acks, the end.

    :meth:`handle` each received message in arrival order (from one thread).
    A welcome that does not fit raises (the node cannot work without it);
    any other message that does not fit is dropped and counted in
    ``report.malformed``, so one bad message never stops the node.
    """

    def __init__(self, report: NodeReport | None = None,
                 initial: Callable[[Welcome], np.ndarray | None] | None = None):
        """``initial``: the node's model's parameters as the welcome's config and seed build
        them (asked at the first welcome): the coordinator may name them by digest."""
        self.report = report if report is not None else NodeReport(node_id=None)
        self.welcome: Welcome | None = None
        #: The parameters this node holds, kept current from ``params`` messages (whole or deltas).
        self.held = ParamsDecoder()
        self._initial = initial
        self.order = ParamsOrder()
        self.finished = False
        self._early: list[Message] = []

    def handle(self, msg: Message) -> list[Event]:
        """The events ``msg`` amounts to (none for a heartbeat or an unknown kind)."""
        if msg.kind == "welcome":
            return self._welcome(msg)
        if msg.kind == "error":  # refused (e.g. the run is full): nothing this node can do about it
            raise RefusedError(f"the coordinator refused this node: {_refusal(msg)}")
        if msg.kind == "params":
            return self._params(msg)
        if msg.kind == "ack":
            return self._guarded(msg, self._ack)
        if msg.kind == "control":
            return self._guarded(msg, self._control)
        if msg.kind == "bye":
            return self._end(str(msg.meta.get("reason") or "bye"))
        return []

    def _guarded(self, msg: Message, handler: Callable[[Message], list[Event]]) -> list[Event]:
        """``handler``'s events, or none if ``msg`` does not fit: dropped and counted."""
        try:
            return handler(msg)
        except HyperGPUError as exc:
            self.report.malformed += 1
            log.warning("node %s: %s message dropped: %s", self.report.node_id, msg.kind, exc)
            return []

    def _ack(self, msg: Message) -> list[Event]:
        ack = parse_meta(Ack, msg)
        self.report.record_ack(ack)
        return [Acked(ack)]

    def _welcome(self, msg: Message) -> list[Event]:
        welcome = Welcome.parse(msg)
        first = self.welcome is None
        self.welcome = welcome
        if first and self._initial is not None:
            self.held.initial = self._initial(welcome)
        self.report.node_id = welcome.node_id
        events: list[Event] = [Welcomed(welcome, first)]
        early, self._early = self._early, []
        opened = [e for m in early for e in self.handle(m)]
        # Rounds that opened before the welcome and were superseded are skipped;
        # with overlap none is: each holds work (and lent shards) for a round ahead.
        rounds = [e for e in opened if isinstance(e, RoundOpened)]
        events += [e for e in opened if not isinstance(e, RoundOpened)]
        events += rounds if welcome.training.overlap else rounds[-1:]
        return events

    def _params(self, msg: Message) -> list[Event]:
        if self.welcome is None:
            # Each message has its own stream, so a round's parameters can
            # overtake the (larger) welcome: hold them, in order, until it comes.
            self._early = [*self._early[-(MAX_EARLY - 1):], msg]
            return []
        # A round's message can also overtake the one before it: they are taken in the order sent.
        return [e for due in self.order.admit(msg) for e in self._guarded(due, self._opened)]

    def _opened(self, msg: Message) -> list[Event]:
        assert self.welcome is not None
        assignment = Assignment.from_meta(msg.meta, default_batch=self.welcome.training.batch_size)
        version, closed = msg.meta.get("version"), msg.meta.get("closed")
        for name, value in (("version", version), ("closed", closed)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise FrameError(f"params meta refused: {name}: not a non-negative integer ({value!r})")
        work = msg.sections.get("work")
        if work is not None:
            work = np.asarray(work)
            if work.ndim != 2 or work.shape[1:] != (2,) or work.dtype != np.int64 or (work < 0).any():
                raise FrameError(f"params work refused: expected (n, 2) non-negative int64 rows, got {work.dtype} {work.shape}")
        try:
            params = self.held.apply(msg.meta, msg.sections)
        except HyperGPUError as exc:
            log.info("node %s: round %d parameters unusable (%s); asking for them whole",
                     self.report.node_id, msg.round, exc)
            resync = Control(type="resync", reason=str(exc))
            return [Reply(Message("control", resync.as_meta(), round=msg.round))]
        return [RoundOpened(msg.round, version, assignment, params, work, shards_of(msg), closed)]

    def _control(self, msg: Message) -> list[Event]:
        control = parse_meta(Control, msg)
        if control.type == "shard":
            return [ShardsChanged(shards_of(msg))]
        if control.type == "shape":
            if not control.profile:
                raise FrameError("control meta refused: profile: a shape control needs one")
            return [Reshape(control.profile)]
        if control.type == "stop":
            return self._end(control.reason or "stop")
        return []  # resync goes node -> coordinator only

    def _end(self, reason: str) -> list[Event]:
        self.finished = True
        return [Ended(reason)]
