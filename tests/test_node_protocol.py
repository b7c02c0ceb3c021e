"""The node's protocol handler on its own: messages in, decisions out (no processes, no links).

Every message goes through the real wire encoding first, so what the
handler sees is what a node would decode from a frame.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from hypergpu import protocol
from hypergpu.config.schema import TrainingConfig
from hypergpu.data.shards import Shard
from hypergpu.errors import FrameError, InvalidArgumentError, ShapeMismatchError
from hypergpu.node.protocol import (
    Acked,
    Ended,
    NodeProtocol,
    Reply,
    Reshape,
    RoundOpened,
    ShardsChanged,
    Welcomed,
    hello,
)
from hypergpu.protocol import Ack, Assignment, Control, Message, UpdateMeta, parse_meta
from hypergpu.update.codec import Codec
from hypergpu.update.downlink import MAX_HELD, ParamsDecoder, ParamsEncoder
from hypergpu.node.update_encoder import UpdateEncoder

TRAINING = TrainingConfig(batch_size=24, local_steps=7)


def wire(msg: Message) -> Message:
    """``msg`` as the receiving end decodes it."""
    return protocol.decode(protocol.encode(msg))


def shard(index: int, n: int = 6) -> Shard:
    rng = np.random.default_rng(index)
    return Shard(index=index, indices=np.arange(n, dtype=np.int64), x=rng.normal(size=(n, 4)).astype(np.float32),
                 y=np.arange(n, dtype=np.int64) % 3, num_classes=3, dataset="test")


def shard_sections(*shards: Shard) -> dict[str, np.ndarray]:
    return {f"shard{i}": np.frombuffer(s.to_bytes(), dtype=np.uint8) for i, s in enumerate(shards)}


def welcome(node_id: int = 3, *shards: Shard) -> Message:
    meta = {"node_id": node_id, "training": TRAINING.model_dump(mode="json"), "layout": "abc123", "num_params": 8}
    return wire(Message("welcome", meta, shard_sections(*(shards or (shard(0),))), node_id=node_id))


def params(round_id: int, values: np.ndarray, encoder: ParamsEncoder, assignment: Assignment,
           version: int | None = None, **extra: Any) -> Message:
    """A ``params`` message exactly as the coordinator builds it."""
    held, sections = encoder.parts(0, values, Codec(assignment.down_codec))
    meta = {"round": round_id, "version": round_id - 1 if version is None else version, **assignment.as_meta(),
            **held, **extra}
    return wire(Message("params", meta, sections, round=round_id))


def welcomed() -> NodeProtocol:
    proto = NodeProtocol()
    proto.handle(welcome())
    return proto


def test_the_welcome_is_parsed_once_and_a_later_one_is_a_reconnection() -> None:
    proto = NodeProtocol()
    (event,) = proto.handle(welcome(3, shard(0), shard(1)))
    assert isinstance(event, Welcomed) and event.first
    assert event.welcome.node_id == 3 and proto.report.node_id == 3
    assert event.welcome.training.batch_size == 24 and event.welcome.layout == "abc123"
    assert [s.index for s in event.welcome.shards] == [0, 1]
    (again,) = proto.handle(welcome(3))
    assert isinstance(again, Welcomed) and not again.first


def test_a_welcome_that_does_not_fit_names_the_field() -> None:
    bad = wire(Message("welcome", {"training": {}, "layout": "x"}))
    with pytest.raises(FrameError, match="welcome meta refused: node_id"):
        NodeProtocol().handle(bad)
    worse = wire(Message("welcome", {"node_id": 1, "training": {"batch_size": 0}, "layout": "x"}))
    with pytest.raises(FrameError, match="training"):
        NodeProtocol().handle(worse)


def test_the_welcome_checks_the_models_layout() -> None:
    (event,) = NodeProtocol().handle(welcome())
    assert isinstance(event, Welcomed)
    event.welcome.check_layout("abc123", "me")
    with pytest.raises(ShapeMismatchError, match="does not match the coordinator's.*7 values here, 8 there"):
        event.welcome.check_layout("zzz", "me", 7)


def test_params_open_a_round_with_the_typed_assignment() -> None:
    proto = welcomed()
    work = Assignment(batch_size=16, local_steps=5, codec="topk", codec_ratio=0.2, zstd=True)
    values = np.arange(8, dtype=np.float32)
    (event,) = proto.handle(params(4, values, ParamsEncoder(), work, version=9))
    assert isinstance(event, RoundOpened)
    assert event.round == 4 and event.version == 9 and event.assignment == work
    np.testing.assert_array_equal(event.params, values)
    event.params[:] = -1  # the node's own copy: the held state is untouched
    np.testing.assert_array_equal(proto.held.params, values)


def test_fields_a_params_meta_lacks_take_the_welcomes_defaults() -> None:
    proto = welcomed()
    meta = {"round": 2, "params_seq": 1}
    sections = {"params": np.zeros(8, dtype=np.float32)}
    (event,) = proto.handle(wire(Message("params", meta, sections, round=2)))
    assert isinstance(event, RoundOpened)
    assert event.assignment == Assignment(batch_size=TRAINING.batch_size, local_steps=0)
    assert event.version is None


@pytest.mark.parametrize(("field", "value"), [("batch_size", 0), ("batch_size", "many"), ("codec_ratio", 2.0),
                                              ("local_steps", -1), ("version", "v1")])
def test_a_params_meta_that_does_not_fit_is_dropped_and_named(
    field: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    proto = welcomed()
    meta = {"round": 2, "params_seq": 1, "batch_size": 8, "local_steps": 1, field: value}
    with caplog.at_level(logging.WARNING, logger="hypergpu.node"):
        events = proto.handle(wire(Message("params", meta, {"params": np.zeros(8, dtype=np.float32)}, round=2)))
    assert events == [] and proto.report.malformed == 1
    assert f"params meta refused: {field}" in caplog.text


def test_params_that_overtake_the_welcome_wait_for_it_in_order() -> None:
    proto = NodeProtocol()
    encoder = ParamsEncoder()
    work = Assignment(batch_size=8, local_steps=2, down_codec="int8")
    first, second = np.full(8, 0.5, dtype=np.float32), np.full(8, 0.75, dtype=np.float32)
    assert proto.handle(params(1, first, encoder, work)) == []
    assert proto.handle(params(2, second, encoder, work)) == []  # a delta against round 1's state
    events = proto.handle(welcome())
    assert [type(e) for e in events] == [Welcomed, RoundOpened]
    opened = events[1]
    assert isinstance(opened, RoundOpened) and opened.round == 2  # round 1 was superseded
    np.testing.assert_allclose(opened.params, second, atol=1e-2)


def test_a_message_that_overtook_the_one_sent_before_it_waits_for_it() -> None:
    proto = welcomed()
    encoder = ParamsEncoder()
    work = Assignment(batch_size=8, local_steps=2, down_codec="int8")
    sent = [params(r, np.full(8, r / 4, dtype=np.float32), encoder, work) for r in (1, 2, 3)]
    # Round 3's work comes first, then round 2's: both wait for round 1's.
    assert proto.handle(sent[2]) == [] and proto.handle(sent[1]) == []
    opened = proto.handle(sent[0])
    assert [e.round for e in opened if isinstance(e, RoundOpened)] == [1, 2, 3]
    # Each delta applied against the state the one before it left: no resync asked.
    np.testing.assert_allclose(opened[-1].params, np.full(8, 0.75), atol=1e-2)
    assert proto.report.malformed == 0


def test_messages_held_for_one_that_never_comes_go_on_in_order() -> None:
    encoder = ParamsEncoder()
    work = Assignment(batch_size=8, local_steps=2)
    proto = welcomed()
    encoder.parts(0, np.zeros(8, dtype=np.float32), Codec("raw"))  # framed, then lost on the way
    later = [params(r, np.full(8, r, dtype=np.float32), encoder, work) for r in range(2, 3 + MAX_HELD)]
    assert [proto.handle(m) for m in later[:MAX_HELD]] == [[]] * MAX_HELD
    released = proto.handle(later[MAX_HELD])  # one past the bound: none is held longer
    assert [e.round for e in released if isinstance(e, RoundOpened)] == list(range(2, 3 + MAX_HELD))
    # A new sequence (a new link, a resync) does not wait for the old one either.
    lost = encoder.parts(0, np.zeros(8, dtype=np.float32), Codec("raw"))
    assert lost and proto.handle(params(9, np.ones(8, dtype=np.float32), encoder, work)) == []
    encoder.forget(0)
    fresh = proto.handle(params(10, np.full(8, 2.0, dtype=np.float32), encoder, work))
    assert [e.round for e in fresh if isinstance(e, RoundOpened)] == [9, 10]


def test_parameters_a_codec_refused_go_whole_in_their_place_in_the_order() -> None:
    proto, encoder = welcomed(), ParamsEncoder()
    work = Assignment(batch_size=8, local_steps=2, down_codec="fp16")
    first, huge = np.ones(8, dtype=np.float32), np.full(8, 1e6, dtype=np.float32)  # past fp16's range
    frames = [encoder.frame(0, v, "fp16", {"round": r, **work.as_meta()}) for r, v in ((1, first), (2, huge))]
    refused = protocol.decode(frames[1])
    assert "params" in refused.sections  # sent whole instead, naming the message before it
    assert refused.meta["params_after"] == protocol.decode(frames[0]).meta["params_seq"]
    assert proto.handle(refused) == []  # it overtook the first: it waits for it
    opened = [e for e in proto.handle(protocol.decode(frames[0])) if isinstance(e, RoundOpened)]
    assert [e.round for e in opened] == [1, 2]
    np.testing.assert_array_equal(opened[1].params, huge)


def test_a_delta_the_node_cannot_apply_asks_for_the_whole_vector() -> None:
    proto = welcomed()
    encoder = ParamsEncoder()
    work = Assignment(batch_size=8, local_steps=2, down_codec="int8")
    proto.handle(params(4, np.ones(8, dtype=np.float32), encoder, work))
    proto.held = ParamsDecoder()  # the state it was sent is lost (as if it had restarted)
    (event,) = proto.handle(params(5, np.full(8, 2.0, dtype=np.float32), encoder, work))
    assert isinstance(event, Reply)
    reply = wire(event.message)
    assert reply.kind == "control" and reply.round == 5
    control = parse_meta(Control, reply)
    assert control.type == "resync" and control.reason and "whole vector" in control.reason
    # The whole vector then brings it back.
    (opened,) = proto.handle(params(5, np.full(8, 2.0, dtype=np.float32), ParamsEncoder(),
                                    Assignment(batch_size=8, local_steps=2)))
    assert isinstance(opened, RoundOpened)


def test_acks_are_counted_by_outcome() -> None:
    proto = welcomed()
    for meta in ({"round": 1, "accepted": True}, {"round": 2, "accepted": False, "reason": "stale"},
                 {"round": 3, "accepted": True, "reason": None}):
        (event,) = proto.handle(wire(Message("ack", meta, round=meta["round"])))
        assert isinstance(event, Acked) and event.ack.round == meta["round"]
    assert proto.report.acks == {"accepted": 2, "stale": 1}
    assert proto.handle(wire(Message("ack", {"round": 4}))) == [] and proto.report.malformed == 1


def test_control_messages() -> None:
    proto = welcomed()
    (changed,) = proto.handle(wire(Message("control", {"type": "shard"}, shard_sections(shard(4), shard(5)))))
    assert isinstance(changed, ShardsChanged) and [s.index for s in changed.shards] == [4, 5]
    (reshape,) = proto.handle(wire(Message("control", {"type": "shape", "profile": "wan"})))
    assert reshape == Reshape("wan")
    for bad in ({"type": "shape"}, {"type": "explode"}, {}):
        assert proto.handle(wire(Message("control", bad))) == []
    assert proto.report.malformed == 3
    assert not proto.finished
    (end,) = proto.handle(wire(Message("control", {"type": "stop"})))
    assert isinstance(end, Ended) and proto.finished


def test_a_corrupt_shard_is_dropped_not_fatal() -> None:
    proto = welcomed()
    sections = {"shard0": np.frombuffer(shard(1).to_bytes()[:-3], dtype=np.uint8)}
    assert proto.handle(wire(Message("control", {"type": "shard"}, sections))) == []
    assert proto.report.malformed == 1


def test_bye_ends_and_heartbeats_or_unknown_kinds_mean_nothing() -> None:
    proto = welcomed()
    assert proto.handle(wire(Message("heartbeat", {"t": 1.0}))) == []
    assert proto.handle(wire(Message("metrics", {"x": 1}))) == []
    assert not proto.finished
    (end,) = proto.handle(wire(Message("bye", {"reason": "training finished"})))
    assert end == Ended("training finished") and proto.finished


def test_the_hello_keeps_its_wire_keys_and_refuses_bad_fields() -> None:
    meta = hello(name="n1", index=2, device="cpu", speed_factor=0.5).as_meta()
    assert meta == {"name": "n1", "index": 2, "device": "cpu", "speed_factor": 0.5, "follows_work": True,
                    "address": None, "payout": None, "signature": None}  # signed per connection (signed_hello)
    with pytest.raises(InvalidArgumentError, match="payout"):
        hello(name="n1", payout="0x12")
    with pytest.raises(InvalidArgumentError, match="speed_factor"):
        hello(name="n1", speed_factor=1.5)
    with pytest.raises(InvalidArgumentError, match="name"):
        hello(name="")


def test_updates_carry_the_typed_meta_in_the_assigned_codec() -> None:
    encoder = UpdateEncoder()
    update = np.linspace(-1, 1, 50, dtype=np.float32)
    meta = UpdateMeta(samples=32, loss=0.5, steps=4, compute_s=0.1, wall_s=0.2, version=7)
    raw = wire(encoder.message(update, Assignment(batch_size=8, local_steps=4), meta, 3))
    assert raw.codec == "raw" and raw.round == 3
    assert parse_meta(UpdateMeta, raw) == meta
    np.testing.assert_array_equal(raw.sections["update"], update)

    topk = Assignment(batch_size=8, local_steps=4, codec="topk", codec_ratio=0.1)
    sent = wire(encoder.message(update, topk, meta, 4))
    assert sent.codec == "topk" and parse_meta(UpdateMeta, sent).samples == 32
    assert encoder.residual is not None and np.count_nonzero(encoder.residual) > 0


def test_an_ack_and_a_control_built_from_their_schemas_read_back() -> None:
    ack = Ack(round=2, accepted=False, reason="invalid")
    assert parse_meta(Ack, wire(Message("ack", ack.as_meta()))) == ack
    with pytest.raises(FrameError, match="control meta refused: type"):
        parse_meta(Control, wire(Message("control", {"type": "dance"})))
