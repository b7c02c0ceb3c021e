"""Shared helpers for the transport and shaping tests."""

from __future__ import annotations

import struct
import time

from hypergpu.wire import encode_frame


def stamped_frame(seq: int, pad: int = 0) -> bytes:
    """A heartbeat frame carrying its sequence number and send time."""
    return encode_frame("heartbeat", struct.pack("<qd", seq, time.monotonic()) + bytes(pad), round=seq)


def stamp_of(frame: bytes) -> tuple[int, float]:
    from hypergpu.wire import decode_frame

    _, payload = decode_frame(frame)
    seq, sent = struct.unpack_from("<qd", payload)
    return seq, sent
