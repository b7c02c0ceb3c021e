"""A node's ``update`` message, in the codec its round's assignment names, with the
error-feedback residual that carries what lossy payloads dropped from round to round."""

from __future__ import annotations

import numpy as np

from hypergpu.protocol import Assignment, Message, UpdateMeta
from hypergpu.update.codec import Codec
from hypergpu.wire import TensorSpec

__all__ = ["UpdateEncoder"]


class UpdateEncoder:
    """Encodes updates with the codec a round's assignment names.

    The error-feedback residual (what earlier rounds' payloads lost: top-k's
    unsent coordinates, the other lossy codecs' rounding) lives here, so it
    carries over from round to round, and across a change of lossy codec.
    A round sent raw sends it along exactly and clears it. ``last_delta`` is
    how the last message changed the residual: should that update never be
    applied, :meth:`unsend` takes the change back (:mod:`hypergpu.node.settle`).
    A fragment's update (``where`` of ``total``) uses its share of a residual over
    all the parameters: however fragments are cut from round to round, none is lost.
    """

    def __init__(self) -> None:
        self.residual: np.ndarray | None = None
        self.last_delta: np.ndarray | None = None

    def unsend(self, delta: np.ndarray) -> None:
        """Take back a message's change to the residual: what its payload carried of the
        residual (and lost of its update) is owed again."""
        if self.residual is None or self.residual.shape != delta.shape:
            self.residual = np.zeros_like(delta)
        self.residual -= delta

    def message(self, update: np.ndarray, assignment: Assignment, meta: UpdateMeta, round_id: int,
                where: slice | None = None, total: int = 0) -> Message:
        """The ``update`` message for ``update`` (float32, flat) in ``round_id``: the whole
        parameter vector, or its fragment ``where`` of a vector ``total`` long."""
        before = None if self.residual is None else self.residual.copy()
        msg = self._message(update, assignment, meta, round_id, where, total)
        after = self.residual
        if before is None:
            self.last_delta = None if after is None else after.copy()
        else:
            self.last_delta = -before if after is None or after.shape != before.shape else after - before
        return msg

    def _residual(self, update: np.ndarray, where: slice | None, total: int, make: bool) -> np.ndarray | None:
        """The residual ``update`` carries: all of it, or fragment ``where``'s share of it
        (None when it holds none of that shape and ``make`` is false)."""
        shape = update.shape if where is None else (total,)
        if self.residual is None or self.residual.shape != shape:
            if not make:
                return None
            self.residual = np.zeros(shape, np.float32)
        return self.residual if where is None else self.residual[where]

    def _message(self, update: np.ndarray, assignment: Assignment, meta: UpdateMeta, round_id: int,
                 where: slice | None, total: int) -> Message:
        if assignment.codec == "raw":
            owed = self._residual(update, where, total, make=False)
            if owed is not None:
                update = update + owed
                owed[:] = 0.0
            if where is None:
                self.residual = None
            if not assignment.zstd:
                return Message("update", meta.as_meta(), {"update": update}, round=round_id)
        ratio = assignment.codec_ratio if assignment.codec == "topk" else None
        codec = Codec(assignment.codec, ratio=ratio, zstd=assignment.zstd)
        residual = self._residual(update, where, total, make=True) if codec.error_feedback else None
        encoded = codec.encode(update, residual)
        return Message(
            "update",
            meta.as_meta(),
            {"update": np.frombuffer(encoded.payload, dtype=np.uint8)},
            round=round_id,
            codec=assignment.codec,
            zstd=codec.zstd,
            update_spec=TensorSpec("update", "f32", list(update.shape), 0),
        )
