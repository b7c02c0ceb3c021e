"""Parameters down the wire: whole, or a compressed delta against what the node holds.

A node that took part in an earlier round still holds the parameters it
was sent then. On a slow link the coordinator can send it only the change
since, encoded with a lossy codec (fp16 or int8), for a fraction of the
full vector's bytes. Both ends must agree on what the node holds, to the
bit, so the coordinator keeps per node a *mirror*: the parameters exactly
as that node reconstructed them (the last full vector plus every decoded
delta since). Each delta is taken against the mirror, not against the
coordinator's own parameters, so what one delta's codec drops travels in
the next: the node's copy is never further from the coordinator's than one
encoding's error, however many rounds pass.

A sequence number names each state the coordinator sent; base 0 names
"nothing", so the first message to a node (or the first after its state
was lost) is the whole vector encoded against zeros, compressed like any
delta: its error, too, is carried by the next delta. A node whose state
does not match a delta's base (it reconnected, or a message went missing)
refuses the delta with :class:`~hypergpu.errors.ParamsOutOfSyncError`
and asks for the whole vector again.

A node builds its model from the run's config and seed before any
parameters come, so while the coordinator's are still the ones it built
the same way, the first message names them by their digest
(``params_init``, :func:`params_digest`) instead of carrying them: a node
whose own match starts from those, one whose do not asks for them whole.
On a 5 Mbit/s link that first download was 10 s of int8 or 40 s raw.

Each message to a node travels on its own stream, so a small one can
overtake a larger one sent before it (a next round's work overtaking
this round's). Each message therefore also names the one framed for the
same node before it (``params_after``), and the node takes them in that
order (:class:`ParamsOrder`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from hypergpu import protocol
from hypergpu.errors import CodecError, ParamsOutOfSyncError, ShapeMismatchError, UpdateError
from hypergpu.update.codec import Codec, decode

log = logging.getLogger("hypergpu.downlink")

__all__ = ["ParamsDecoder", "ParamsEncoder", "ParamsOrder", "params_digest"]

FULL = "params"
DELTA = "params_delta"
INIT = "params_init"  # meta: the digest of the initial parameters the node built itself
NOTHING = 0  # the base of a delta taken against zeros; "after" of a first message
MAX_HELD = 4  # messages a node holds for an earlier one still on its way


class _Mirror:
    """Parameters exactly as a node holds them (float32, bit for bit), shared by every node that
    holds the same: nodes sent the same parameters with the same codec from the same mirror
    reach the same next one, so its delta is encoded once a round, not once a node."""

    def __init__(self, params: np.ndarray):
        self.params = params  # never changed in place: other nodes may hold it
        #: per codec, the step last taken from here: toward which parameters, the mirror it
        #: reached and the delta's payload. Both weakly: a past round's parameters are not kept
        #: alive by this, nor mirrors no node holds any more (a chain of them would never end).
        self._next: dict[tuple[str, bool], tuple[weakref.ref[np.ndarray], weakref.ref[_Mirror], bytes]] = {}

    def step(self, params: np.ndarray, codec: Codec) -> tuple[_Mirror, bytes]:
        """The mirror ``codec``'s delta toward ``params`` leads to, and that delta's payload."""
        key = (codec.name, codec.zstd)
        taken = self._next.get(key)
        if taken is not None and taken[0]() is params and (reached := taken[1]()) is not None:
            return reached, taken[2]
        encoded = codec.encode(params - self.params)  # may refuse (CodecError)
        # Exactly what the node will add: the mirror stays bit-identical to its copy.
        reached = _Mirror(self.params + encoded.decode())
        self._next[key] = (weakref.ref(params), weakref.ref(reached), encoded.payload)
        return reached, encoded.payload


@dataclass
class _Held:
    seq: int  # of the message that brought the node to ``mirror``
    mirror: _Mirror

    @property
    def params(self) -> np.ndarray:
        """What the node holds (read only: the mirror may be shared)."""
        return self.mirror.params


def params_digest(params: np.ndarray) -> str:
    """A digest of a float32 parameter vector's bytes: equal digests, bit-identical parameters."""
    return hashlib.blake2b(np.ascontiguousarray(params, dtype=np.float32).data, digest_size=16).hexdigest()


class ParamsEncoder:
    """Coordinator side: what to send each node so it holds the current parameters.

    ``initial``: the parameters as the run's config and seed build them, when the
    coordinator's came from there (nodes build the same before the first round).
    """

    def __init__(self, initial: np.ndarray | None = None) -> None:
        self._held: dict[int, _Held] = {}
        self._last: dict[int, int] = {}  # per node, the seq of the last message framed for it
        self._seq = itertools.count(1)
        self._initial: _Mirror | None = None
        self._digest: str | None = None
        if initial is not None:
            self._initial = _Mirror(np.array(initial, dtype=np.float32, copy=True))
            self._digest = params_digest(self._initial.params)
        self._nothing: _Mirror | None = None  # zeros: what a node whose state is unknown holds
        self._whole: set[int] = set()  # nodes whose own initial parameters did not match

    def forget(self, node_id: int, *, resync: bool = False) -> None:
        """The node's state is unknown (new link, resync): send it everything next time.
        ``resync``: the node could not use what it was sent, so it gets the parameters
        themselves, not their digest."""
        self._held.pop(node_id, None)
        self._last.pop(node_id, None)  # nor can it wait for what it may never get
        if resync:
            self._whole.add(node_id)

    def frame(self, node_id: int, params: np.ndarray, codec: str, meta: dict[str, Any],
              extra: dict[str, np.ndarray] | None = None, *, kept: bool = False) -> bytes:
        """The ``params`` frame (``meta`` plus what it takes) that brings the node to ``params``;
        ``extra`` sections ride along (e.g. the round's work). ``kept``: the message framed for
        the node just before this one brought it to ``params`` already (see :meth:`kept`)."""
        kept_meta = self.kept(node_id) if kept else None
        try:
            held, sections = (kept_meta, {}) if kept_meta is not None else self.parts(node_id, params, Codec(codec))
        except CodecError as exc:  # e.g. a value beyond fp16's range: send it whole
            log.info("node %d: parameters go whole this time (%s)", node_id, exc)
            held, sections = self.parts(node_id, params, Codec("raw"))
        msg = protocol.Message("params", {**meta, **held}, {**sections, **(extra or {})},
                               round=int(meta.get("round", 0)), node_id=node_id)
        return protocol.encode(msg)

    def kept(self, node_id: int) -> dict[str, Any] | None:
        """Meta of a message that carries no parameters: the node keeps those it was sent last
        (a next round's work dealt with the same parameters as this round's, which would
        otherwise carry them again, or their first rounding error, on a slow link). None when
        nothing was framed for the node since its state was lost: it needs them sent."""
        if node_id not in self._last:
            return None
        return {**self._order(node_id), "params_kept": True}

    def _order(self, node_id: int) -> dict[str, int]:
        """A new message's sequence number, and the one framed for the node before it."""
        seq = next(self._seq)
        after, self._last[node_id] = self._last.get(node_id, NOTHING), seq
        return {"params_seq": seq, "params_after": after}

    def parts(self, node_id: int, params: np.ndarray, codec: Codec) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Meta fields and sections of a ``params`` message that bring the node to ``params``.

        A raw ``codec`` sends the whole vector and keeps no mirror (a node
        kept on raw costs no memory here); any other codec sends a delta,
        against zeros while the node's state is unknown.
        """
        if self._is_initial(node_id, params):
            assert self._initial is not None and self._digest is not None
            order = self._order(node_id)
            if codec.name == "raw":
                self._held.pop(node_id, None)
            else:
                self._held[node_id] = _Held(order["params_seq"], self._initial)
            return {**order, INIT: self._digest}, {}
        if codec.name == "raw":
            self._held.pop(node_id, None)
            return self._order(node_id), {FULL: params}
        held = self._held.get(node_id)
        if held is None or held.params.shape != params.shape:
            held = self._held[node_id] = _Held(NOTHING, self._zeros(params.shape))
        held.mirror, payload = held.mirror.step(params, codec)  # may refuse (CodecError): then no seq was taken
        order = self._order(node_id)
        meta = {**order, "params_base": held.seq, "params_numel": int(params.size),
                "params_codec": codec.name, "params_zstd": codec.zstd}
        held.seq = order["params_seq"]
        return meta, {DELTA: np.frombuffer(payload, dtype=np.uint8)}

    def _zeros(self, shape: tuple[int, ...]) -> _Mirror:
        """The mirror of a node that holds nothing (one, shared, per shape)."""
        if self._nothing is None or self._nothing.params.shape != shape:
            self._nothing = _Mirror(np.zeros(shape, dtype=np.float32))
        return self._nothing

    def _is_initial(self, node_id: int, params: np.ndarray) -> bool:
        """Whether ``params`` are still the initial ones (the node can name them by digest)."""
        if self._initial is None or node_id in self._whole:
            return False
        if params.shape != self._initial.params.shape or not np.array_equal(params, self._initial.params):
            self._initial = self._digest = None  # trained past them: they never come back
            return False
        return True


class ParamsDecoder:
    """Node side: the parameters this node holds, kept current from ``params`` messages."""

    def __init__(self) -> None:
        self.seq: int | None = None
        self.params: np.ndarray | None = None
        #: the parameters this node built from the run's config and seed, until a message names them
        self.initial: np.ndarray | None = None

    def apply(self, meta: dict[str, Any], sections: dict[str, np.ndarray]) -> np.ndarray:
        """Fold one ``params`` message in; returns a copy of the parameters now held."""
        if meta.get("params_kept") is True:
            if self.params is None:
                raise ParamsOutOfSyncError("a message keeps the parameters held, and this node holds none")
            return self.params.copy()  # the state (and the next delta's base) stays as it is
        if INIT in meta:
            return self._named_initial(meta)
        full = sections.get(FULL)
        if full is not None:
            self.params = np.array(full, dtype=np.float32, copy=True)
            self.seq = meta.get("params_seq")
            return self.params.copy()
        delta = sections.get(DELTA)
        if delta is None:
            raise UpdateError(f"params message carries neither {FULL!r} nor {DELTA!r}")
        base = meta.get("params_base")
        if base == NOTHING:
            numel = meta.get("params_numel")
            if not isinstance(numel, int) or numel <= 0:
                raise UpdateError(f"params_numel must be a positive int, got {numel!r}")
            held = np.zeros(numel, dtype=np.float32)
        elif self.params is None or base is None or base != self.seq:
            raise ParamsOutOfSyncError(
                f"parameter delta is against state {base}, this node holds {self.seq}; the whole vector is needed"
            )
        else:
            held = self.params
        change = decode(delta, str(meta.get("params_codec")), zstd=bool(meta.get("params_zstd")), shape=held.shape)
        if change.shape != held.shape:
            raise ShapeMismatchError(f"parameter delta has shape {change.shape}, held {held.shape}")
        held += change
        self.params, self.seq = held, meta.get("params_seq")
        return held.copy()

    def _named_initial(self, meta: dict[str, Any]) -> np.ndarray:
        """The initial parameters a message names by digest: this node's own, if they match."""
        digest = meta[INIT]
        if self.initial is None:
            raise ParamsOutOfSyncError("the parameters are named by the initial ones' digest, and this node built none")
        own = params_digest(self.initial)
        if digest != own:
            raise ParamsOutOfSyncError(
                f"the initial parameters' digest is {digest!r}, this node built {own!r}; they are needed whole"
            )
        self.params, self.seq, self.initial = self.initial, meta.get("params_seq"), None
        return self.params.copy()


class ParamsOrder:
    """Node side: ``params`` messages in the order the coordinator framed them.

    A message whose predecessor (``params_after``) has not come yet is held
    until it does, at most :data:`MAX_HELD` of them: past that, or when a
    message begins a new sequence (after 0: a new link, a resync, a
    restarted coordinator), those held go on, oldest first, as a lost
    predecessor will not come. One that comes after its successor is
    stale and goes on as it is (what it means is the handler's to judge).
    """

    def __init__(self) -> None:
        self.last = NOTHING  # the seq of the last message let through
        self._held: dict[int, protocol.Message] = {}  # by the seq each waits for

    def admit(self, msg: protocol.Message) -> list[protocol.Message]:
        """The messages due now, in order: ``msg`` and those held behind it; none while it waits."""
        seq, after = msg.meta.get("params_seq"), msg.meta.get("params_after")
        if not isinstance(seq, int) or not isinstance(after, int):
            return [msg]  # unordered (framed by hand): taken as it comes
        if after > self.last and len(self._held) < MAX_HELD:
            self._held[after] = msg
            return []
        due = self._flush(seq) if after == NOTHING or after > self.last else []
        due.append(msg)
        self.last = seq if after == NOTHING else max(self.last, seq)
        while (following := self._held.pop(self.last, None)) is not None:
            due.append(following)
            self.last = int(following.meta["params_seq"])
        return due

    def _flush(self, before: int) -> list[protocol.Message]:
        """Those held that were framed before ``before``, oldest first: their wait is over."""
        older = sorted((m for m in self._held.values() if m.meta["params_seq"] < before),
                       key=lambda m: m.meta["params_seq"])
        self._held = {k: m for k, m in self._held.items() if m.meta["params_seq"] >= before}
        return older
