"""Compressing model updates for the wire.

A :class:`Codec` names how an update is encoded (the coordinator can pick
one per node from its link); :func:`encode` turns an update (NumPy array or
CPU torch tensor of float32, float16 or bfloat16) into an :class:`Encoded`
payload, and :func:`decode` turns a payload back into float32. The work is
done by the Rust core, which borrows the update without copying.

Codecs and their guarantees (payload layouts are documented in the Rust
module ``compress``):

``raw``
    float32, exact. 4 bytes per element.
``fp16``
    relative error ≤ 2⁻¹¹ in fp16's normal range, absolute ≤ 2⁻²⁵ below it;
    values beyond ±65504 are refused (:class:`~hypergpu.errors.CodecError`
    naming the position) rather than sent as infinity. 2 bytes per element.
``bf16``
    relative error ≤ 2⁻⁸. 2 bytes per element.
``int8``
    blockwise: each block of ``block_size`` elements keeps a float32
    scale = max|block| / 127, and every element is within scale/2
    (plus float32 rounding, under 2⁻¹⁵·scale).
    12 + 4·⌈n/block_size⌉ + n bytes.
``int4``
    blockwise like int8 with levels −7..7, two to a byte: scale =
    max|block| / 7, and every element is within scale/2 (plus float32
    rounding, under 2⁻¹⁹·scale). 12 + 4·⌈n/block_size⌉ + ⌈n/2⌉ bytes.
``topk``
    the ``k`` coordinates of largest magnitude, exact (12 + 8k bytes).

Error feedback: every lossy codec (all but ``raw``) takes a ``residual``,
a float32 buffer the caller keeps across rounds. The payload then encodes
update + residual, and the residual keeps what the payload lost (top-k's
unsent coordinates, the others' rounding), so it is added to the next
round's update: over any number of rounds the decoded payloads sum to the
updates minus the final residual. A refused call leaves it untouched.

Every codec refuses NaN and infinity (:class:`~hypergpu.errors.NonFiniteError`)
and ``zstd=True`` compresses the payload further (frame flag ``FLAG_ZSTD``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hypergpu import _core
from hypergpu._buffers import as_array
from hypergpu.errors import (
    DtypeMismatchError,
    InvalidArgumentError,
    NonContiguousError,
    ShapeMismatchError,
    UnknownCodecError,
)

__all__ = ["CODECS", "Codec", "Encoded", "encode", "decode"]

CODECS = ("raw", "fp16", "bf16", "int8", "int4", "topk")
MAX_BLOCK_SIZE: int = _core.COMPRESS_MAX_BLOCK_SIZE
DEFAULT_ZSTD_LEVEL: int = _core.COMPRESS_DEFAULT_ZSTD_LEVEL


@dataclass(frozen=True)
class Codec:
    """A codec and its parameters.

    ``k`` (coordinates sent) or ``ratio`` (fraction of coordinates sent,
    in (0, 1]) is required for ``topk`` and refused for the others.
    ``error_feedback`` says whether the codec is used with a residual (see
    the module docs); unset, it is on for every lossy codec and off for
    ``raw``, which is exact and refuses it.
    """

    name: str = "raw"
    block_size: int = 256
    k: int | None = None
    ratio: float | None = None
    zstd: bool = False
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    error_feedback: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in CODECS:
            raise UnknownCodecError(f"unknown codec {self.name!r}; known: {', '.join(CODECS)}")
        if not _is_int(self.block_size) or not 1 <= self.block_size <= MAX_BLOCK_SIZE:
            raise InvalidArgumentError(
                f"block_size must be an int in 1..={MAX_BLOCK_SIZE}, got {self.block_size!r}"
            )
        if self.name == "topk":
            if (self.k is None) == (self.ratio is None):
                raise InvalidArgumentError("the topk codec needs exactly one of k or ratio")
            if self.k is not None and (not _is_int(self.k) or self.k < 1):
                raise InvalidArgumentError(f"topk k must be an int ≥ 1, got {self.k!r}")
            if self.ratio is not None and not (
                isinstance(self.ratio, (int, float)) and 0.0 < self.ratio <= 1.0
            ):
                raise InvalidArgumentError(f"topk ratio must be in (0, 1], got {self.ratio!r}")
        elif self.k is not None or self.ratio is not None:
            raise InvalidArgumentError(f"k and ratio apply to the topk codec only, not {self.name}")
        if self.error_feedback is None:
            object.__setattr__(self, "error_feedback", self.name != "raw")
        elif not isinstance(self.error_feedback, bool):
            raise InvalidArgumentError(f"error_feedback must be a bool, got {self.error_feedback!r}")
        elif self.error_feedback and self.name == "raw":
            raise InvalidArgumentError("raw is exact: there is no error to feed back")

    def k_for(self, numel: int) -> int | None:
        """Coordinates top-k sends for an update of ``numel`` elements."""
        if self.name != "topk":
            return None
        if self.k is not None:
            return self.k
        assert self.ratio is not None
        return max(1, math.ceil(self.ratio * numel))

    def encoded_len(self, numel: int) -> int:
        """Payload bytes for ``numel`` elements, before zstd."""
        return _core.compress_encoded_len(
            self.name, numel, block_size=self.block_size, k=self.k_for(numel)
        )

    def expected_ratio(self, numel: int) -> float:
        """Dense float32 bytes over payload bytes (before zstd)."""
        return 4 * numel / self.encoded_len(numel)

    def encode(self, update: Any, residual: Any = None) -> Encoded:
        """Encode ``update``; see :func:`encode`."""
        array = as_array(update)
        if residual is not None:
            if not self.error_feedback:
                why = "raw is exact" if self.name == "raw" else f"this {self.name} codec has error_feedback off"
                raise InvalidArgumentError(f"a residual (error feedback) was given, but {why}")
            residual = _residual_view(residual, array.size)
        payload = _core.compress_encode(
            array,
            self.name,
            block_size=self.block_size,
            k=self.k_for(array.size),
            residual=residual,
            zstd=self.zstd,
            zstd_level=self.zstd_level,
        )
        return Encoded(payload, self.name, self.zstd, array.size, tuple(array.shape))


@dataclass(frozen=True)
class Encoded:
    """An encoded update and what is needed to decode it."""

    payload: bytes = field(repr=False)
    codec: str
    zstd: bool
    numel: int
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return len(self.payload)

    @property
    def compression_ratio(self) -> float:
        """Dense float32 bytes over the bytes actually sent."""
        return 4 * self.numel / len(self.payload)

    def decode(self) -> np.ndarray:
        """The decoded update, float32, in its original shape."""
        return decode(self.payload, self.codec, zstd=self.zstd, shape=self.shape)


def encode(
    update: Any,
    codec: str | Codec = "int8",
    *,
    block_size: int = 256,
    k: int | None = None,
    ratio: float | None = None,
    residual: Any = None,
    zstd: bool = False,
    zstd_level: int = DEFAULT_ZSTD_LEVEL,
) -> Encoded:
    """Encode ``update`` (ndarray or CPU torch tensor; float32/float16/bfloat16).

    ``codec`` is a name (with the keyword parameters) or a :class:`Codec`.
    ``residual`` (any codec but raw) is a contiguous float32 array or tensor
    with as many elements as ``update``; it is updated in place (error
    feedback) and must be kept by the caller for the next round.
    """
    if isinstance(codec, str):
        codec = Codec(codec, block_size, k, ratio, zstd, zstd_level)
    elif not isinstance(codec, Codec):
        raise UnknownCodecError(f"codec must be a name or a Codec, got {type(codec).__name__}")
    return codec.encode(update, residual)


def decode(
    payload: Any,
    codec: str,
    *,
    zstd: bool = False,
    numel: int | None = None,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Decode ``payload`` (any bytes-like object) to a float32 array.

    Pass ``shape`` (or ``numel``) when known: a payload of any other size is
    refused, and zstd decompression is bounded by it. Corrupt or truncated
    payloads raise :class:`~hypergpu.errors.CodecError`.
    """
    if codec not in CODECS:
        raise UnknownCodecError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    if shape is not None:
        shape = tuple(int(d) for d in shape)
        size = math.prod(shape)
        if numel is not None and numel != size:
            raise InvalidArgumentError(f"numel {numel} disagrees with shape {shape}")
        numel = size
    out: np.ndarray = _core.compress_decode(payload, codec, zstd=zstd, numel=numel)
    return out.reshape(shape) if shape is not None else out


def _residual_view(residual: Any, numel: int) -> np.ndarray:
    """The residual as a flat float32 view sharing its memory."""
    array = as_array(residual, 1)
    if array.dtype != np.float32:
        raise DtypeMismatchError(f"the residual must be float32, got {array.dtype}")
    if not array.flags.c_contiguous:
        raise NonContiguousError("the residual is not C-contiguous; it is updated in place")
    if array.size != numel:
        raise ShapeMismatchError(
            f"the residual has {array.size} elements, the update has {numel}"
        )
    return array.reshape(-1)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
