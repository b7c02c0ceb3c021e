"""Wire frames: the versioned binary envelope of every message.

Encoding and decoding happen in Rust (:mod:`hypergpu._core`); this module
adds the zero-copy view of the payload.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypergpu._core import (
    FRAME_VERSION,
    HEADER_FIXED_LEN,
    FrameHeader,
    TensorSpec,
    frame_header_len,
)
from hypergpu._core import decode_frame as _decode_frame
from hypergpu._core import encode_frame as _encode_frame

__all__ = [
    "FRAME_VERSION",
    "HEADER_FIXED_LEN",
    "byte_view",
    "FrameHeader",
    "TensorSpec",
    "decode_frame",
    "encode_frame",
    "frame_header_len",
]


def byte_view(data: Any) -> memoryview:
    """A flat unsigned-byte view of any C-contiguous buffer (no copy)."""
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def encode_frame(
    kind: str,
    payload: Any,
    *,
    round: int = 0,
    node_id: int = 0,
    codec: str = "raw",
    zstd: bool = False,
    tensors: Sequence[TensorSpec] = (),
) -> bytes:
    """Encode a frame around ``payload`` (any C-contiguous buffer)."""
    return _encode_frame(
        kind, byte_view(payload), round=round, node_id=node_id, codec=codec, zstd=zstd, tensors=list(tensors)
    )


def decode_frame(
    data: bytes | bytearray | memoryview, max_payload: int | None = None
) -> tuple[FrameHeader, memoryview]:
    """Decode and verify a frame; the payload is a view into ``data``."""
    if max_payload is None:
        header, offset = _decode_frame(byte_view(data))
    else:
        header, offset = _decode_frame(byte_view(data), max_payload)
    return header, byte_view(data)[offset:]
