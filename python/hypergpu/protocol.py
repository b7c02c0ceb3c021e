"""Messages between coordinator and nodes, carried in wire frames.

A message is a wire frame whose tensor table names the sections of its
payload. The first section is always ``meta``: UTF-8 JSON describing the
message. The remaining sections are named arrays (parameters, an update,
a data shard). The frame's ``codec`` applies to the ``update`` section only;
every other section travels raw. Decoding yields NumPy views into the
received frame, so a 100 MB parameter vector is never copied on receipt.
For those views to be usable by the Rust core every section starts on an
8-byte boundary of the frame: the encoder inserts ``_pad`` sections (and
pads the meta JSON with spaces), and the decoder skips them.

Message kinds (``hypergpu.wire`` ``MessageKind``) and their meta:

- ``hello``     node → coordinator: name, device, speed factor, and who it
  is: its key's address, its payout address and its signature over the
  connection's challenge (:mod:`hypergpu.identity`).
- ``welcome``   coordinator → node: node id, training settings; sections
  ``x``/``y`` hold the node's data shard.
- ``params``    coordinator → node: a round's assignment (batch size, local
  steps, codec); section ``params`` holds the flat float32 parameters.
- ``update``    node → coordinator: samples, timings, losses; section
  ``update`` holds the encoded update.
- ``ack``       coordinator → node: whether an update was received (taken into
  the open round), and again when its round closed whether it was applied.
- ``error``     coordinator → node: the node is refused (:class:`Refusal`).
- ``heartbeat`` both ways; ``control`` for shard changes and stop;
  ``metrics`` node → coordinator; ``bye`` on orderly exit.

Each kind's meta has one schema here (:class:`Hello`, :class:`WelcomeMeta`,
:class:`Assignment`, :class:`UpdateMeta`, :class:`Ack`, :class:`Control`,
:class:`NodeMetrics`), used by both ends: the sender builds it, the receiver
parses it, and a meta that does not fit is refused with the field that is
wrong. Whoever reads a peer it does not trust decodes with ``max_meta``
(the coordinator: :data:`MAX_META`): a larger meta is refused by its size in
the frame's tensor table, before a byte of it is copied or parsed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from hypergpu.config.base import Address
from hypergpu.errors import FrameError, MessageTooLargeError
from hypergpu.wire import TensorSpec, decode_frame, encode_frame

__all__ = [
    "Ack",
    "Assignment",
    "Control",
    "Hello",
    "MAX_META",
    "Message",
    "NodeMetrics",
    "Refusal",
    "UpdateMeta",
    "WelcomeMeta",
    "decode",
    "encode",
    "max_node_message",
    "parse_meta",
]

_DTYPES: dict[np.dtype[Any], str] = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float16): "f16",
    np.dtype(np.float64): "f64",
    np.dtype(np.int8): "i8",
    np.dtype(np.uint8): "u8",
    np.dtype(np.int32): "i32",
    np.dtype(np.int64): "i64",
}
_NUMPY: dict[str, np.dtype[Any]] = {v: k for k, v in _DTYPES.items()}
# bf16 sections travel as their raw 16-bit patterns.
_NUMPY["bf16"] = np.dtype(np.uint16)


@dataclass
class Message:
    """A decoded (or to-be-encoded) coordinator/node message."""

    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, np.ndarray] = field(default_factory=dict)
    round: int = 0
    node_id: int = 0
    codec: str = "raw"
    zstd: bool = False
    # For an encoded ``update`` section: its original dtype and shape.
    update_spec: TensorSpec | None = None


ALIGN = 8
_PAD = "_pad"

#: The largest meta the coordinator parses from a node (JSON bytes). What nodes send is a few
#: hundred bytes; parsing is on the event loop, so a larger one would stall every node's reader.
MAX_META = 64 * 1024


def max_node_message(num_params: int) -> int:
    """The largest payload a node's message can have for a model of ``num_params`` values (the
    coordinator's transport limit): an update in the bulkiest codec (top-k keeping every
    coordinate: an index and a value, 8 bytes each), zstd's worst case over that, the largest
    meta and the sections' alignment. Anything larger is refused before it is read."""
    update = 8 * max(1, num_params) + 12
    return update + (update >> 8) + (64 << 10) + MAX_META + 1024


def encode(msg: Message) -> bytes:
    """Serialise ``msg`` into one wire frame."""
    specs: list[TensorSpec] = []
    parts: list[Any] = []
    for name, arr in msg.sections.items():
        if name == "update" and msg.update_spec is not None:
            spec = msg.update_spec
            specs.append(TensorSpec(name, spec.dtype, list(spec.shape), arr.nbytes))
        else:
            dtype = _DTYPES.get(arr.dtype)
            if dtype is None:
                raise FrameError(f"section {name!r} has unsupported dtype {arr.dtype}")
            specs.append(TensorSpec(name, dtype, list(arr.shape), arr.nbytes))
        parts.append(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))
        if arr.nbytes % ALIGN and len(parts) < len(msg.sections):
            pad = ALIGN - arr.nbytes % ALIGN
            specs.append(TensorSpec(_PAD, "u8", [pad], pad))
            parts.append(bytes(pad))
    # The header's length does not depend on the sizes it records (fixed-width
    # fields), so an empty-payload frame measures it, and the meta is padded
    # to end header + meta on a boundary.
    meta = json.dumps(msg.meta, separators=(",", ":")).encode()
    head = len(encode_frame(msg.kind, b"", tensors=[TensorSpec("meta", "u8", [0], 0), *specs]))
    meta += b" " * (-(head + len(meta)) % ALIGN)
    specs.insert(0, TensorSpec("meta", "u8", [len(meta)], len(meta)))
    parts.insert(0, meta)
    payload = b"".join(memoryview(p) for p in parts) if len(parts) > 1 else meta
    return encode_frame(
        msg.kind, payload, round=msg.round, node_id=msg.node_id, codec=msg.codec, zstd=msg.zstd, tensors=specs
    )


def decode(frame: bytes | memoryview, max_payload: int | None = None, max_meta: int | None = None) -> Message:
    """Parse one wire frame into a :class:`Message` (sections are views). A meta section
    over ``max_meta`` bytes raises :class:`MessageTooLargeError` without being read."""
    header, payload = decode_frame(frame, max_payload)
    if not header.tensors or header.tensors[0].name != "meta":
        raise FrameError("message has no leading 'meta' section")
    if max_meta is not None and header.tensors[0].nbytes > max_meta:
        raise MessageTooLargeError(
            f"{header.kind} meta of {header.tensors[0].nbytes} bytes refused unread (at most {max_meta})")
    at = 0
    sections: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    update_spec = None
    for spec in header.tensors:
        end = at + spec.nbytes
        if end > len(payload):
            raise FrameError(f"section {spec.name!r} runs past the payload ({end} > {len(payload)})")
        raw = payload[at:end]
        at = end
        if spec.name == _PAD:
            continue
        if spec.name == "meta":
            try:
                meta = json.loads(bytes(raw))
            except ValueError as exc:
                raise FrameError(f"meta section is not JSON: {exc}") from exc
            if not isinstance(meta, dict):
                raise FrameError("meta section is not a JSON object")
        elif spec.name == "update" and header.codec != "raw":
            update_spec = spec
            sections[spec.name] = np.frombuffer(raw, dtype=np.uint8)
        else:
            dtype = _NUMPY[spec.dtype]
            count = int(np.prod(spec.shape, dtype=np.int64)) if spec.shape else 1
            if count * dtype.itemsize != spec.nbytes:
                raise FrameError(
                    f"section {spec.name!r}: shape {list(spec.shape)} of {spec.dtype} needs "
                    f"{count * dtype.itemsize} bytes, frame says {spec.nbytes}"
                )
            sections[spec.name] = np.frombuffer(raw, dtype=dtype).reshape(spec.shape)
    if at != len(payload):
        raise FrameError(f"{len(payload) - at} payload bytes belong to no section")
    return Message(
        kind=header.kind,
        meta=meta,
        sections=sections,
        round=header.round,
        node_id=header.node_id,
        codec=header.codec,
        zstd=header.zstd,
        update_spec=update_spec,
    )


# --- meta schemas ---------------------------------------------------------------


class _Meta(BaseModel):
    # Fields a newer peer adds are ignored; the ones named here must fit.
    model_config = ConfigDict(extra="ignore", frozen=True)

    def as_meta(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


M = TypeVar("M", bound=_Meta)


def parse_meta(schema: type[M], msg: Message) -> M:
    """``msg``'s meta as ``schema``; a :class:`FrameError` names what does not fit."""
    try:
        return schema.model_validate(msg.meta)
    except ValidationError as exc:
        raise FrameError(f"{msg.kind} meta refused: {validation_problems(exc)}") from None


def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as one line: each bad field and what is wrong with it."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'meta'}: {e['msg']}" for e in exc.errors())


class Hello(_Meta):
    """node → coordinator: who it is."""

    name: str = Field(min_length=1, max_length=256)
    index: int | None = Field(default=None, ge=0)  # the node id a local run's node asks for
    device: str = Field(default="cpu", max_length=64)
    speed_factor: float = Field(default=1.0, gt=0, le=1)
    # False: the node trains on its own data (a user's loop), so the coordinator names no samples
    follows_work: bool = True
    # Who it is (hypergpu.identity): its key's address, where it is paid (unset: that address), and
    # its signature over the connection's challenge, the coordinator's fingerprint, its name and payout.
    address: Address | None = None
    payout: Address | None = None
    signature: str | None = Field(default=None, pattern=r"^0x[0-9a-fA-F]{130}$")


class WelcomeMeta(_Meta):
    """coordinator → node: its id, the task and training settings, the model's layout,
    and where to read the shards when they do not travel with the messages."""

    node_id: int = Field(ge=0)
    training: dict[str, Any]
    layout: str  # digest of the coordinator's ParamLayout
    num_params: int | None = None
    task: Literal["classification", "lm"] = "classification"
    input_shape: list[int] | None = None  # the model's input (per sample); a language model's block
    num_classes: int | None = None  # classes, or a language model's vocabulary
    # None: shards are shipped; else see node_meta() in hypergpu.data.run_data
    data_source: dict[str, Any] | None = None
    # What a node that rejoins needs to settle the updates it sent (issue 15): this
    # coordinator process's life (a new one after a restart), the last round closed,
    # and which of the node's remembered updates were applied, not applied, or are
    # held for a round still open. The node folds the error-feedback residual of
    # an update back in once it knows the update was not applied.
    life: str = ""
    closed: int = Field(default=0, ge=0)
    applied: list[int] = Field(default_factory=list, max_length=4096)
    not_applied: list[int] = Field(default_factory=list, max_length=4096)
    held: list[int] = Field(default_factory=list, max_length=4096)


@dataclass(frozen=True)
class Assignment:
    """One node's work for one round (the ``params`` message's meta carries it)."""

    # The bounds bind what a node parses (from_meta); a planner's own values are its business.
    batch_size: Annotated[int, Field(ge=1)]
    local_steps: Annotated[int, Field(ge=0)]  # 0: the configured number of local epochs instead
    accumulation: Annotated[int, Field(ge=1)] = 1
    codec: str = "raw"
    codec_ratio: Annotated[float, Field(gt=0, le=1)] | None = None  # top-k: fraction of coordinates sent
    zstd: bool = False
    down_codec: str = "raw"  # parameters to this node: whole (raw) or a delta in this codec
    # training.link_fragments: the update goes out in this many fragments, one per round in turn
    fragments: Annotated[int, Field(ge=1, le=64)] = 1

    def as_meta(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_meta(cls, meta: dict[str, Any], default_batch: int) -> Assignment:
        """The assignment a ``params`` meta carries (fields it lacks take their defaults)."""
        known = {f.name for f in fields(cls)}
        given = {k: v for k, v in meta.items() if k in known and v is not None}
        given.setdefault("batch_size", default_batch)
        given.setdefault("local_steps", 0)
        try:
            return _ASSIGNMENT.validate_python(given)
        except ValidationError as exc:
            raise FrameError(f"params meta refused: {validation_problems(exc)}") from None


_ASSIGNMENT: TypeAdapter[Assignment] = TypeAdapter(Assignment)


class UpdateMeta(_Meta):
    """node → coordinator: what the update it carries cost and achieved."""

    samples: int = Field(gt=0)  # what the node says it trained on
    loss: float | None = None
    accuracy: float | None = None
    steps: int | None = None
    compute_s: float = Field(default=0.0, ge=0)
    wall_s: float = Field(default=0.0, ge=0)
    # seconds the node waited (for work, or for the parameters an update builds on) since its last update
    idle_s: float = Field(default=0.0, ge=0)
    version: int | None = None  # the model version the update started from
    # this node's previous update: seconds from its send to the ack of its receipt, and its bytes
    # (what the uplink carried, measured where overlap hides it from the coordinator's clock)
    upload_s: float | None = Field(default=None, ge=0, le=86_400)
    upload_bytes: int | None = Field(default=None, ge=0)
    # training.link_fragments: the [start, stop) of the flat parameter vector the update covers (None: all)
    part: tuple[int, int] | None = None


class Ack(_Meta):
    """coordinator → node: whether its update for ``round`` was taken, and if not, why."""

    round: int
    accepted: bool
    reason: str | None = None  # a refusal's reason (a RoundBook verdict, or "invalid")
    detail: str | None = None  # what was wrong with an invalid update
    # None: the answer on receipt ("received": folded into the open round, not applied yet);
    # True/False: sent again when the round closed, whether the update went into the model
    applied: bool | None = None
    # a late update's receipt: seconds from its round's close to its arrival (with overlap the
    # node cuts its work in hand by that much, so its next update comes in on time)
    late_s: float | None = Field(default=None, ge=0)


class Refusal(_Meta):
    """coordinator → node (an ``error`` message, then the link closes): why it will not
    take the node at all, e.g. the run already has ``coordinator.max_nodes`` nodes."""

    reason: str = Field(max_length=1024)
    code: str = Field(default="refused", max_length=64)


class NodeMetrics(_Meta):
    """node → coordinator: a node's rolling figures (the window means of
    ``hypergpu.node.metrics.SERIES`` and its lifetime retries). Only these keys, only finite
    non-negative numbers (loss may be any finite number): the coordinator publishes them as
    an event, so nothing else a node writes reaches the event's own fields or its watchers."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    loss: float | None = None
    accuracy: float | None = Field(default=None, ge=0, le=1)
    forward_s: float | None = Field(default=None, ge=0)
    backward_s: float | None = Field(default=None, ge=0)
    step_s: float | None = Field(default=None, ge=0)
    compute_s: float | None = Field(default=None, ge=0)
    throttle_s: float | None = Field(default=None, ge=0)
    comm_s: float | None = Field(default=None, ge=0)
    retries: float | None = Field(default=None, ge=0)
    total_retries: float | None = Field(default=None, ge=0)

    def figures(self) -> dict[str, float]:
        """The figures the node sent (fields it left out are absent)."""
        return self.model_dump(exclude_none=True)


class Control(_Meta):
    """Either way: shard changes, link reshaping, stop, a request for the whole parameters."""

    type: Literal["shard", "shape", "stop", "resync"]
    profile: str | None = None  # shape: the link profile to switch to
    reason: str | None = None  # resync: why the delta could not be applied
