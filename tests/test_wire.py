"""Wire frames from Python: round trips, zero-copy payloads, typed errors."""

from __future__ import annotations

import numpy as np
import pytest

from hypergpu import errors
from hypergpu.wire import HEADER_FIXED_LEN, TensorSpec, decode_frame, encode_frame, frame_header_len


def _frame(payload: bytes = b"0123456789", **kw) -> bytes:
    spec = TensorSpec("layer.weight", "f32", [2, 5], len(payload))
    return encode_frame("update", payload, round=3, node_id=9, codec="raw", tensors=[spec], **kw)


def test_round_trip_and_zero_copy_payload():
    payload = np.arange(1000, dtype=np.float32)
    spec = TensorSpec("w", "f32", [1000], payload.nbytes)
    frame = encode_frame("params", payload, round=7, node_id=2, codec="raw", zstd=True, tensors=[spec])
    header, body = decode_frame(frame)
    assert (header.kind, header.round, header.node_id, header.codec, header.zstd) == ("params", 7, 2, "raw", True)
    assert header.tensors == [spec]
    assert header.payload_len == payload.nbytes
    assert frame_header_len(frame[:HEADER_FIXED_LEN]) == header.header_len
    view = np.frombuffer(body, dtype=np.float32)
    np.testing.assert_array_equal(view, payload)
    # The payload view shares memory with the frame: no copy was made.
    assert np.shares_memory(view, np.frombuffer(frame, dtype=np.uint8))


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda f: f[:20], errors.TruncatedFrameError),
        (lambda f: f[:-1], errors.TruncatedFrameError),
        (lambda f: b"XXXX" + f[4:], errors.BadMagicError),
        (lambda f: f[:4] + b"\x09\x00" + f[6:], errors.UnsupportedVersionError),
        (lambda f: f[:16] + bytes([f[16] ^ 1]) + f[17:], errors.ChecksumError),
        (lambda f: f[:-1] + bytes([f[-1] ^ 1]), errors.ChecksumError),
        (lambda f: f + b"\x00", errors.FrameError),
    ],
    ids=["short-header", "short-payload", "magic", "version", "header-crc", "payload-crc", "trailing"],
)
def test_corrupt_frames_raise_typed_errors(mutate, error):
    with pytest.raises(error):
        decode_frame(mutate(_frame()))


def test_typed_errors_are_value_errors_and_name_the_problem():
    with pytest.raises(ValueError, match="checksum mismatch"):
        decode_frame(_frame()[:-1] + b"!")


def test_oversized_payload_refused():
    with pytest.raises(errors.MessageTooLargeError, match="exceeds the limit of 4 bytes"):
        decode_frame(_frame(), max_payload=4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"codec": "lz4"}, errors.UnknownCodecError, "unknown codec"),
        ({"kind": "gossip"}, errors.FrameError, "unknown message kind"),
    ],
)
def test_bad_encode_arguments(kwargs, error, match):
    args = {"kind": "update", "codec": "raw"} | kwargs
    with pytest.raises(error, match=match):
        encode_frame(args.pop("kind"), b"x", **args)


def test_bad_tensor_spec_dtype():
    with pytest.raises(errors.FrameError, match="unknown dtype"):
        TensorSpec("w", "complex64", [1], 8)


def test_random_bytes_never_crash():
    rng = np.random.default_rng(0)
    good = _frame()
    for _ in range(2000):
        data = bytearray(good)
        for i in rng.integers(0, len(data), size=rng.integers(1, 4)):
            data[i] ^= int(rng.integers(1, 256))
        try:
            header, body = decode_frame(bytes(data[: rng.integers(0, len(data) + 1)]))
        except errors.FrameError:
            continue
        except (errors.UnknownCodecError, errors.MessageTooLargeError):
            continue
        # Only an unchanged frame may decode.
        assert bytes(body) == b"0123456789" and header.round == 3
