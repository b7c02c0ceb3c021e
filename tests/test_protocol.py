"""Coordinator/node messages: round trips and refusal of malformed ones."""

from __future__ import annotations

import numpy as np
import pytest

from hypergpu import errors, protocol
from hypergpu.protocol import Message
from hypergpu.wire import TensorSpec, encode_frame


def test_round_trip_with_sections_is_zero_copy():
    params = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    labels = np.arange(7, dtype=np.int64)
    frame = protocol.encode(
        Message("params", {"round": 3, "batch_size": 32}, {"params": params, "y": labels}, round=3, node_id=4)
    )
    msg = protocol.decode(frame)
    assert (msg.kind, msg.round, msg.node_id, msg.meta) == ("params", 3, 4, {"round": 3, "batch_size": 32})
    np.testing.assert_array_equal(msg.sections["params"], params)
    np.testing.assert_array_equal(msg.sections["y"], labels)
    assert np.shares_memory(msg.sections["params"], np.frombuffer(frame, dtype=np.uint8))


def test_encoded_update_keeps_its_original_spec():
    blob = np.frombuffer(b"\x01\x02\x03", dtype=np.uint8)
    spec = TensorSpec("update", "f32", [1000], 0)
    msg = protocol.decode(protocol.encode(Message("update", {}, {"update": blob}, codec="int8", update_spec=spec)))
    assert msg.codec == "int8"
    assert msg.update_spec is not None and msg.update_spec.shape == [1000]
    assert bytes(msg.sections["update"]) == b"\x01\x02\x03"


@pytest.mark.parametrize(
    ("tensors", "payload", "match"),
    [
        ([], b"", "no leading 'meta'"),
        ([TensorSpec("meta", "u8", [3], 3)], b"[1]", "not a JSON object"),
        ([TensorSpec("meta", "u8", [2], 2)], b"{x", "not JSON"),
        ([TensorSpec("meta", "u8", [2], 2), TensorSpec("p", "f32", [4], 8)], b"{}" + bytes(8), "needs 16 bytes"),
        ([TensorSpec("meta", "u8", [2], 2), TensorSpec("p", "u8", [9], 9)], b"{}" + bytes(4), "runs past"),
        ([TensorSpec("meta", "u8", [2], 2)], b"{}xx", "belong to no section"),
    ],
)
def test_malformed_messages_are_frame_errors(tensors, payload, match):
    with pytest.raises(errors.FrameError, match=match):
        protocol.decode(encode_frame("control", payload, tensors=tensors))


def test_sections_are_aligned_for_the_core():
    """Every section starts on an 8-byte boundary, so the Rust core can borrow it."""
    from hypergpu.update.aggregate import Accumulator

    rng = np.random.default_rng(1)
    for meta_len in range(9):
        update = rng.standard_normal(101).astype(np.float32)
        odd = np.arange(3, dtype=np.uint8)
        frame = protocol.encode(Message("update", {"x": "y" * meta_len}, {"odd": odd, "update": update}))
        msg = protocol.decode(frame)
        base = np.frombuffer(frame, dtype=np.uint8).ctypes.data
        for name, arr in msg.sections.items():
            assert (arr.ctypes.data - base) % protocol.ALIGN == 0, name
        acc = Accumulator(update.shape)
        acc.add(msg.sections["update"])
        np.testing.assert_array_equal(acc.finalize(), update)
        assert "_pad" not in msg.sections
