"""Parameters going down as compressed deltas: both ends agree to the bit,
the node's copy never drifts, and a node that lost its state gets the
whole vector again (over the real transport, with a real coordinator)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hypergpu import protocol
from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator
from hypergpu.errors import CodecError, ParamsOutOfSyncError, UpdateError
from hypergpu.identity import NodeKey
from hypergpu.model import build_model
from hypergpu.model.layout import ParamLayout
from hypergpu.node.protocol import NodeProtocol, Reply, RoundOpened, Welcome
from hypergpu.node.session import Session
from hypergpu.protocol import Hello, Message
from hypergpu.round import StaticPlanner
from hypergpu.update.codec import Codec
from hypergpu.update.downlink import ParamsDecoder, ParamsEncoder, params_digest

from engine_helpers import run_with_nodes


def _training_like(rounds: int, size: int, seed: int = 0) -> list[np.ndarray]:
    """Parameters over rounds: a random start, then shrinking random steps."""
    rng = np.random.default_rng(seed)
    params = rng.normal(0, 0.1, size).astype(np.float32)
    out = [params.copy()]
    for r in range(rounds - 1):
        params += rng.normal(0, 0.01 / (1 + r), size).astype(np.float32)
        out.append(params.copy())
    return out


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_node_copy_matches_the_mirror_bit_for_bit_and_never_drifts(codec: str) -> None:
    encoder, decoder = ParamsEncoder(), ParamsDecoder()
    states = _training_like(40, 10_000)
    sizes = []
    for params in states:
        meta, sections = encoder.parts(7, params, Codec(codec))
        held = decoder.apply(meta, sections)
        sizes.append(sum(s.nbytes for s in sections.values()))
        # The coordinator's mirror is exactly what the node holds.
        assert np.array_equal(held, encoder._held[7].params)
        # One encoding's error at most, whatever came before: what a delta
        # dropped travels in the next one.
        step = np.abs(params - held).max()
        assert step <= np.abs(params).max() / 250, step
    # Even the first message (the whole vector, against zeros) is compressed.
    assert max(sizes) < (0.55 if codec == "fp16" else 0.3) * 4 * 10_000


def test_nodes_that_hold_the_same_share_one_encoding_and_each_still_matches_bit_for_bit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Encoding a delta is the coordinator's per-round work for every node: nodes that hold the
    # same parameters and are sent the same ones with the same codec cost one encoding.
    encoded: list[str] = []
    real = Codec.encode
    monkeypatch.setattr(Codec, "encode", lambda self, x: encoded.append(self.name) or real(self, x))
    encoder = ParamsEncoder()
    decoders = {n: ParamsDecoder() for n in range(5)}
    codecs = {0: "int8", 1: "int8", 2: "int8", 3: "fp16", 4: "int8"}
    first_mirror = None
    for r, params in enumerate(_training_like(6, 5_000)):
        if r == 1:
            first_mirror = weakref.ref(encoder._held[0].mirror)
        encoded.clear()
        if r == 3:
            # a mirror no node holds any more is freed: the steps between them keep no chain alive
            gc.collect()
            assert first_mirror is not None and first_mirror() is None
            encoder.forget(4)  # node 4 lost its state: it goes its own way from zeros
        for n, decoder in decoders.items():
            held = decoder.apply(*encoder.parts(n, params, Codec(codecs[n])))
            assert np.array_equal(held, encoder._held[n].params)
        # nodes 0-2 share each round's int8 delta; fp16 node 3 has its own; node 4 shares
        # until it is forgotten, then encodes on its own
        assert sorted(encoded) == (["fp16", "int8"] if r < 3 else ["fp16", "int8", "int8"]), (r, encoded)
        assert encoder._held[0].mirror is encoder._held[2].mirror is not encoder._held[3].mirror
    # parameters that are a new array (even if equal) are encoded anew: only the same object is shared
    encoded.clear()
    encoder.parts(0, params.copy(), Codec("int8"))
    encoder.parts(1, params.copy(), Codec("int8"))
    assert encoded == ["int8", "int8"]


def test_a_message_that_keeps_the_parameters_carries_none_and_the_next_delta_still_applies() -> None:
    encoder, decoder = ParamsEncoder(), ParamsDecoder()
    first, second = _training_like(2, 1000)
    assert encoder.kept(1) is None  # nothing framed for node 1 yet: it needs them sent
    held = decoder.apply(*encoder.parts(1, first, Codec("int8")))
    frame = encoder.frame(1, first, "int8", {"round": 2}, kept=True)
    msg = protocol.decode(frame)
    assert msg.meta["params_kept"] is True and not msg.sections and len(frame) < 1000
    assert np.array_equal(decoder.apply(msg.meta, msg.sections), held)
    # The state (and so the next delta's base) is the one the last parameters left.
    assert np.array_equal(decoder.apply(*encoder.parts(1, second, Codec("int8"))), encoder._held[1].params)
    # A node whose state was lost is sent the parameters whatever the message asks.
    encoder.forget(1)
    assert protocol.decode(encoder.frame(1, second, "int8", {"round": 3}, kept=True)).meta.get("params_kept") is None
    with pytest.raises(ParamsOutOfSyncError, match="holds none"):
        ParamsDecoder().apply({"params_kept": True}, {})


@pytest.mark.parametrize("codec", ["int8", "raw"])
def test_initial_parameters_the_node_built_go_by_digest_and_the_next_delta_applies(codec: str) -> None:
    first, second, third = _training_like(3, 1000)
    encoder = ParamsEncoder(initial=first)
    decoder = ParamsDecoder()
    decoder.initial = first.copy()  # what the node built from the same config and seed
    frame = encoder.frame(1, first, codec, {"round": 1})
    msg = protocol.decode(frame)
    assert msg.meta["params_init"] == params_digest(first) and not msg.sections and len(frame) < 1000
    assert np.array_equal(decoder.apply(msg.meta, msg.sections), first)
    # A second node too, while the coordinator's parameters are still the initial ones.
    assert "params_init" in protocol.decode(encoder.frame(2, first, codec, {"round": 1})).meta
    for params in (second, third):  # trained: deltas against what the node holds, or whole
        msg = protocol.decode(encoder.frame(1, params, codec, {"round": 2}))
        assert "params_init" not in msg.meta and msg.sections
        held = decoder.apply(msg.meta, msg.sections)
        np.testing.assert_allclose(held, params, atol=np.abs(params).max() / 250)
    # Once past them the initial parameters are not named again, even to a new node.
    assert "params_init" not in protocol.decode(encoder.frame(3, third, codec, {"round": 3})).meta


def test_a_node_whose_initial_parameters_differ_asks_for_them_and_gets_them_whole() -> None:
    first, other = _training_like(2, 1000)
    encoder = ParamsEncoder(initial=first)
    msg = protocol.decode(encoder.frame(1, first, "int8", {"round": 1}))
    decoder = ParamsDecoder()
    with pytest.raises(ParamsOutOfSyncError, match="built none"):
        decoder.apply(msg.meta, msg.sections)
    decoder.initial = other  # another seed, another model
    with pytest.raises(ParamsOutOfSyncError, match="digest .* this node built"):
        decoder.apply(msg.meta, msg.sections)
    encoder.forget(1, resync=True)  # the node asked for them (a resync)
    msg = protocol.decode(encoder.frame(1, first, "int8", {"round": 1}))
    assert "params_init" not in msg.meta and msg.sections
    np.testing.assert_allclose(decoder.apply(msg.meta, msg.sections), first, atol=np.abs(first).max() / 250)


def test_raw_sends_everything_and_drops_the_mirror() -> None:
    encoder, decoder = ParamsEncoder(), ParamsDecoder()
    first, *rest = _training_like(4, 100)
    decoder.apply(*encoder.parts(1, first, Codec("int8")))
    mirrored = len(encoder._held)
    for params in rest:
        meta, sections = encoder.parts(1, params, Codec("raw"))
        assert set(sections) == {"params"}
        assert np.array_equal(decoder.apply(meta, sections), params)
    # A node switched to raw costs no memory on the coordinator any more.
    assert (mirrored, len(encoder._held)) == (1, 0)


def test_a_delta_against_another_state_is_refused_by_name() -> None:
    encoder, decoder = ParamsEncoder(), ParamsDecoder()
    first, second, third = _training_like(3, 500)
    decoder.apply(*encoder.parts(1, first, Codec("int8")))
    lost = encoder.parts(1, second, Codec("int8"))  # never arrives
    assert "params_delta" in lost[1]
    with pytest.raises(ParamsOutOfSyncError, match="against state .* holds"):
        decoder.apply(*encoder.parts(1, third, Codec("int8")))
    # A fresh decoder (a node that restarted) cannot take a delta either.
    with pytest.raises(ParamsOutOfSyncError):
        ParamsDecoder().apply(*lost)
    # After forget() the whole vector goes again (against zeros: any node can
    # take it) and the two ends agree once more.
    encoder.forget(1)
    meta, sections = encoder.parts(1, third, Codec("int8"))
    assert meta["params_base"] == 0
    held = decoder.apply(meta, sections)
    assert np.array_equal(held, encoder._held[1].params)
    assert np.abs(held - third).max() <= np.abs(third).max() / 250


def test_corrupt_or_missing_sections_are_named() -> None:
    encoder, decoder = ParamsEncoder(), ParamsDecoder()
    first, second = _training_like(2, 1000)
    decoder.apply(*encoder.parts(1, first, Codec("int8")))
    meta, sections = encoder.parts(1, second, Codec("int8"))
    with pytest.raises(CodecError):
        decoder.apply(meta, {"params_delta": sections["params_delta"][:-5]})
    with pytest.raises(UpdateError, match="neither 'params' nor 'params_delta'"):
        decoder.apply(meta, {})
    with pytest.raises(UpdateError, match="params_numel"):
        decoder.apply({**meta, "params_base": 0, "params_numel": -1}, sections)
    # Nothing refused was taken: the node still holds its first state, so the
    # lost delta is resent against it and applies.
    assert decoder.seq == meta["params_base"]
    assert np.array_equal(decoder.apply(meta, sections), encoder._held[1].params)


async def _forgetful(join: str, token: str, seen: dict[str, Any]) -> None:
    """A node that answers each round, but loses the parameters it holds before round 3."""
    session = Session(join, token=token, name="forgetful", hello=Hello(name="forgetful", index=1),
                      key=NodeKey.generate())
    def initial(welcome: Welcome) -> np.ndarray:  # the model the node builds from the run's config and seed
        model = build_model(welcome.training, *welcome.model_io())
        return ParamLayout.from_model(model).flatten(model)

    proto = NodeProtocol(initial=initial)
    await session.connect()
    welcome = await session.recv(timeout=30)
    proto.handle(welcome)
    size = int(welcome.meta["num_params"])
    received: list[tuple[int, str]] = seen.setdefault("received", [])
    held: dict[int, np.ndarray] = seen.setdefault("held", {})
    while True:
        msg = await session.recv(timeout=60)
        if msg.kind == "bye":
            break
        if msg.kind != "params":
            continue
        received.append((msg.round, "init" if "params_init" in msg.meta
                         else "delta" if msg.meta.get("params_base") else "whole"))
        if msg.round == 3 and not any(r == 3 for r, _ in received[:-1]):
            proto.held = ParamsDecoder()  # as if it had restarted
        opened = None
        for event in proto.handle(msg):
            if isinstance(event, Reply):
                await session.send(event.message)
            elif isinstance(event, RoundOpened):
                opened = event
        if opened is None:
            continue
        held[msg.round] = opened.params
        update = np.zeros(size, dtype=np.float32)
        await session.send(Message("update", {"samples": 50}, {"update": update}, round=msg.round))
    await session.close("done")


@pytest.mark.timeout(180)
def test_a_node_that_lost_its_state_gets_the_whole_vector_and_stays_in_the_round(tmp_path: Path) -> None:
    cfg = load_config(None, [
        "nodes.count=2", "training.rounds=4", "training.local_steps=5", "training.model='mlp'",
        "training.hidden_sizes=[32]", "data.cache_dir=null", "coordinator.port=0", "coordinator.round_timeout_s=20",
        "coordinator.checkpoint_every=0", f"coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'",
    ])
    coord = Coordinator(cfg, planner=StaticPlanner(cfg, down_codec="int8"))
    seen: dict[str, Any] = {}
    after: dict[int, np.ndarray] = {}
    coord.observers.append(lambda c, record: after.__setitem__(record.round, c.model.flat_parameters().copy()))

    async def forgetful(join: str, token: str) -> None:
        await _forgetful(join, token, seen)

    summary, _ = asyncio.run(run_with_nodes(coord, cfg, tmp_path, [0], forgetful))
    # Round 1's parameters are the initial ones the node built itself: named by their digest.
    assert seen["received"] == [(1, "init"), (2, "delta"), (3, "delta"), (3, "whole"), (4, "delta")]
    resyncs = [e.data for e in coord.events.since(0) if e.kind == "node" and e.data.get("type") == "resync"]
    assert len(resyncs) == 1 and resyncs[0]["node"] == 1 and "against state" in resyncs[0]["reason"]
    # Every round had both nodes' updates, round 3 included.
    assert all(r.reported == [0, 1] for r in coord.history), list(coord.history)
    assert summary.rounds == 4
    # What the node trained from is the coordinator's model within one int8
    # encoding of what was sent: the change since the node's last state, or
    # the whole vector where it had none.
    last = dict(seen["received"])
    for r in (2, 3, 4):
        base = 0.0 if last[r] == "whole" else seen["held"][r - 1]
        sent = np.abs(after[r - 1] - base).max()
        assert np.abs(seen["held"][r] - after[r - 1]).max() <= sent / 250 + 1e-7
