"""What a hostile node, or a faulty round observer, can do to a run: no more than its share.

End to end over the real transport: real node processes (``LocalNodes``) train
digits while scripted peers in the test process join the same coordinator and
play the hostile parts — poisoned updates that claim every sample there is,
oversized and ill-keyed ``metrics`` messages, an oversized hello. The limits
themselves (the meta cap, the metrics allow-list) are checked directly first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hypergpu import protocol
from hypergpu.config import load_config
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator import Coordinator
from hypergpu.coordinator.trust import tell_observers
from hypergpu.errors import FrameError, MessageTooLargeError, TransportError
from hypergpu.events import EventBus
from hypergpu.node.metrics import SERIES, RollingMetrics
from hypergpu.protocol import MAX_META, Assignment, Message, NodeMetrics, parse_meta
from hypergpu.round import RoundRecord
from hypergpu.transport import connect
from hypergpu.wire import TensorSpec, encode_frame

from engine_helpers import run_with_nodes
from identity_helpers import say_hello

pytestmark = pytest.mark.timeout(240)


def make_config(tmp_path: Path, *overrides: str) -> HyperGPUConfig:
    return load_config(
        None,
        [
            "training.local_steps=15",
            "training.lr=0.003",
            f"data.cache_dir='{tmp_path / 'cache'}'",
            f"coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'",
            "coordinator.checkpoint_every=0",
            "coordinator.port=0",
            "coordinator.heartbeat_interval_s=0.5",
            *overrides,
        ],
    )


def meta_frame(kind: str, meta: bytes) -> bytes:
    """A well-formed frame whose meta section is ``meta`` as given (JSON or not)."""
    return encode_frame(kind, meta, tensors=[TensorSpec("meta", "u8", [len(meta)], len(meta))])


# --- the limits ------------------------------------------------------------------------------


def test_a_meta_over_the_cap_is_refused_by_its_size_before_it_is_parsed() -> None:
    not_json = b"{" * (MAX_META + 1)
    with pytest.raises(FrameError, match="not JSON"):
        protocol.decode(meta_frame("metrics", not_json))  # read, it would be parsed (and fail)
    with pytest.raises(MessageTooLargeError, match=f"metrics meta of {MAX_META + 1} bytes refused unread"):
        protocol.decode(meta_frame("metrics", not_json), max_meta=MAX_META)
    at_cap = json.dumps({"loss": 0.5}).encode().ljust(MAX_META)  # padding spaces, as the encoder writes them
    assert protocol.decode(meta_frame("metrics", at_cap), max_meta=MAX_META).meta == {"loss": 0.5}


def test_node_metrics_take_what_nodes_send_and_nothing_else() -> None:
    rolling = RollingMetrics()
    for name in SERIES:
        rolling.record(name, 0.5)
    snapshot = rolling.snapshot()  # what a node has to send: every series and total_retries
    assert parse_meta(NodeMetrics, Message("metrics", snapshot)).figures() == snapshot
    for meta in ({"type": "hijack"}, {"node": 7}, {"kind": "alert"}, {"loss": "0.5"}, {"loss": True},
                 {"loss": float("nan")}, {"comm_s": -1.0}, {"accuracy": 2.0}, {"loss": 0.5, "note": "x"}):
        with pytest.raises(FrameError, match="metrics meta refused"):
            parse_meta(NodeMetrics, Message("metrics", meta))


def test_every_observer_is_told_whatever_another_raises() -> None:
    told: list[str] = []

    def first(c: Any, record: RoundRecord) -> None:
        raise KeyError("missing")

    async def second(c: Any, record: RoundRecord) -> None:
        told.append("second")
        raise ValueError("bad value")

    def third(c: Any, record: RoundRecord) -> None:
        told.append("third")

    coord = SimpleNamespace(observers=[first, second, third], faults=Counter(), events=EventBus())
    record = RoundRecord(round=7, applied=True, participants=[], reported=[], missing=[], excluded={},
                         train_loss=None, samples=0, duration_s=0.0, model_version=7)
    asyncio.run(tell_observers(coord, record))  # type: ignore[arg-type]
    assert told == ["second", "third"]
    assert coord.faults == {first.__qualname__: 1, second.__qualname__: 1}
    alerts = [e.data for e in coord.events.since(0)]
    assert [(a["observer"], a["round"], a["level"]) for a in alerts] == [
        (first.__qualname__, 7, "error"), (second.__qualname__, 7, "error")]
    assert "KeyError" in alerts[0]["message"] and "ValueError: bad value" in alerts[1]["message"]


# --- hostile messages, end to end --------------------------------------------------------------


async def _intruder(join: str, token: str, seen: dict[str, Any]) -> None:
    """Joins as node 2. In round 1 it claims 2**64 samples, sends a 10 MB metrics message (over
    the transport's limit, which this model's size sets: refused unread), one whose meta is
    100 kB (over the meta cap), metrics keyed ``type`` and metrics that are no numbers, then
    figures it may send; every
    round it also sends an update it may send (zeros, claiming its assigned work)."""
    link = await connect(join, token=token, name="intruder")
    await say_hello(link, join, name="intruder", index=2)
    welcome = protocol.decode(await link.recv(timeout=60))
    zeros = np.zeros(int(welcome.meta["num_params"]), dtype=np.float32)
    acks: list[dict[str, Any]] = seen.setdefault("acks", [])
    while True:
        msg = protocol.decode(await link.recv(timeout=60))
        if msg.kind == "bye":
            return
        if msg.kind == "ack":
            acks.append(msg.meta)
        if msg.kind != "params":
            continue
        a = Assignment.from_meta(msg.meta, 32)
        if msg.round == 1:
            await link.send(protocol.encode(Message("update", {"samples": 2**64}, {"update": zeros}, round=1)))
            # Its ack first: an update sent next could otherwise overtake it (each message is a stream).
            while (reply := protocol.decode(await link.recv(timeout=60))).kind != "ack":
                pass
            acks.append(reply.meta)
            with contextlib.suppress(MessageTooLargeError):  # the coordinator stops the stream
                big = protocol.encode(Message("metrics", {"loss": 0.5, "pad": "x" * (10 << 20)}))
                await link._inner.send_unchecked(big, 30.0, acked=True)
            hostile = [
                Message("metrics", {"loss": 0.5, "pad": "x" * 100_000}),
                Message("metrics", {"type": "hijack", "node": 0, "loss": 0.5}),
                Message("metrics", {"loss": float("nan"), "comm_s": "fast"}),
                Message("metrics", {"loss": 0.25, "comm_s": 0.01}),
            ]
            for bad in hostile:
                await link.send(protocol.encode(bad))
        samples = a.local_steps * a.batch_size * a.accumulation
        await link.send(protocol.encode(Message("update", {"samples": samples}, {"update": zeros}, round=msg.round)))


async def _stranger(join: str, token: str) -> None:
    """Says a hello whose meta is 100 kB: over the 96 KiB an unknown peer may send, so the
    transport closes its link before the hello is read (counted as a bad hello)."""
    link = await connect(join, token=token, name="stranger")
    await link.send(protocol.encode(Message("hello", {"name": "stranger", "pad": "x" * 100_000})))
    # Held open until the coordinator closes it (a link dropped at once may end before it is accepted).
    with pytest.raises(TransportError):
        await link.recv(timeout=30)


def test_hostile_messages_and_a_failing_observer_are_counted_and_the_run_goes_on(tmp_path: Path) -> None:
    rounds = 4
    cfg = make_config(tmp_path, "nodes.count=3", f"training.rounds={rounds}", "coordinator.round_timeout_s=10",
                      "coordinator.quorum=0.6")
    coord = Coordinator(cfg)
    seen: dict[str, Any] = {}
    told: list[int] = []

    def explode(c: Coordinator, record: RoundRecord) -> None:
        raise RuntimeError(f"observer bug in round {record.round}")

    async def count(c: Coordinator, record: RoundRecord) -> None:
        told.append(record.round)

    coord.observers += [explode, count]

    async def peers(join: str, token: str) -> None:
        seen["server"] = coord._server  # its log outlives the run
        await _stranger(join, token)
        await _intruder(join, token, seen)

    summary, _ = asyncio.run(run_with_nodes(coord, cfg, tmp_path, [0, 1], peers))

    intruder = coord.registry.get(2)
    refusals = dict(intruder.refusals)
    print(f"\nintruder refusals: {refusals}; run refusals: {dict(summary.refusals)}; observer faults: "
          f"{dict(coord.faults)}; rounds {summary.rounds}, accuracy {summary.accuracy:.3f}")
    assert refusals == {"overclaim": 1, "meta-too-large": 1, "bad-metrics": 2}
    assert summary.refusals["bad-hello"] == 1
    # The 10 MB message never reached the reader: the transport refused it by its header.
    rejections = seen["server"].rejections()
    too_large = [r["reason"] for r in rejections if r["reason"].startswith("refused message")]
    assert len(too_large) == 1 and "10485" in too_large[0], rejections
    # The stranger's 100 kB hello is over what an unknown peer may send: cut off at the transport.
    assert any(r["name"] == "stranger" and "100028 bytes exceeds" in r["reason"] for r in rejections), rejections
    # Its reader kept reading: an update it may send was taken in every round.
    assert intruder.updates_accepted == rounds and intruder.rounds_ok == rounds
    assert [a["reason"] for a in seen["acks"] if not a["accepted"]] == ["overclaim"]
    events = coord.events.since(0)
    metrics = [e.data for e in events if e.kind == "node" and e.data.get("type") == "metrics"]
    assert metrics == [{"type": "metrics", "node": 2, "loss": 0.25, "comm_s": 0.01}]
    # The observer that raised was reported every round; the one after it was still told.
    alerts = [e.data for e in events if e.kind == "alert" and e.data.get("observer")]
    assert [a["round"] for a in alerts] == list(range(1, rounds + 1))
    assert "observer bug in round 1" in alerts[0]["message"] and alerts[0]["level"] == "error"
    assert coord.faults == {explode.__qualname__: rounds} and told == list(range(1, rounds + 1))
    assert summary.rounds == rounds and all(r.applied for r in coord.history)
    for i in (0, 1):
        assert not coord.registry.get(i).refusals
    assert summary.accuracy is not None and summary.accuracy >= 0.9


# --- poisoned updates, end to end ----------------------------------------------------------------


async def _poisoner(join: str, token: str, index: int) -> None:
    """Joins as node ``index`` and answers every round with the last global step sign-flipped
    and scaled 100x (in round 1, before there is one, 5.0 per coordinate), first claiming
    10**15 samples, then the most it may: all the work it was assigned."""
    link = await connect(join, token=token, name=f"poisoner-{index}")
    await say_hello(link, join, name=f"poisoner-{index}", index=index)
    welcome = protocol.decode(await link.recv(timeout=90))
    size = int(welcome.meta["num_params"])
    previous: np.ndarray | None = None
    held: list[Message] = []  # what came while it waited for an answer

    async def next_message() -> Message:
        return held.pop(0) if held else protocol.decode(await link.recv(timeout=90))

    while True:
        msg = await next_message()
        if msg.kind == "bye":
            return
        if msg.kind != "params":
            continue
        # Round 1 names the initial parameters by digest (it needs none to poison); then whole (raw).
        params = None if "params_init" in msg.meta else np.array(msg.sections["params"], dtype=np.float32)
        poison = np.full(size, 5.0, np.float32) if previous is None or params is None else -100.0 * (params - previous)
        previous = params
        a = Assignment.from_meta(msg.meta, 32)
        for claim in (10**15, a.local_steps * a.batch_size * a.accumulation):
            await link.send(protocol.encode(Message("update", {"samples": claim}, {"update": poison}, round=msg.round)))
            if claim == 10**15:
                # the honest claim only once the coordinator answered this one: each message
                # travels on its own stream, and the second could otherwise arrive first
                while (answer := protocol.decode(await link.recv(timeout=90))).kind != "ack":
                    held.append(answer)


@pytest.mark.slow
def test_two_poisoners_of_ten_are_clipped_and_the_run_reaches_the_clean_target(tmp_path: Path) -> None:
    # A clean run of this configuration (ten honest node processes) is at 0.97 after round 2;
    # with the plain mean these two poisoners hold it at 0.10 for all ten rounds.
    cfg = make_config(tmp_path, "nodes.count=10", "training.rounds=10", "training.target_accuracy=0.95",
                      "coordinator.round_timeout_s=20")
    assert cfg.coordinator.aggregation == "clipped-mean"  # the default is what is tested
    coord = Coordinator(cfg)
    poisoners = (8, 9)

    async def peers(join: str, token: str) -> None:
        await asyncio.gather(*(_poisoner(join, token, i) for i in poisoners))

    summary, _ = asyncio.run(run_with_nodes(coord, cfg, tmp_path, list(range(8)), peers))

    history = list(coord.history)
    print(f"\npoisoned run: accuracy {[round(r.test_accuracy or 0, 3) for r in history]}, "
          f"target reached: {summary.reached_target} after {summary.rounds} rounds; clipped per round "
          f"{[r.clipped for r in history]} at clip_norm {[round(r.clip_norm or 0, 3) for r in history]}; "
          f"poisoners' norms {[[round(r.answers[p].norm or 0, 1) for p in poisoners if p in r.answers] for r in history]}; "
          f"refusals {dict(summary.refusals)}")
    assert summary.reached_target and summary.accuracy is not None and summary.accuracy >= 0.95
    for r in history:
        answered = [r.answers[p] for p in poisoners if p in r.answers]
        # Every poisoned update that was taken was held to the bound...
        assert all(a.clipped and a.norm is not None and r.clip_norm is not None and a.norm > r.clip_norm
                   for a in answered)
        assert r.aggregation == "clipped-mean" and r.clipped >= len(answered)
    # ...at the weight of the work it was assigned: no 10**15 claim was taken. Each was refused as an
    # overclaim, or (when the assigned claim overtook it on the way) as a duplicate or too late.
    for p in poisoners:
        assert all(r.answers[p].samples == r.assignments[p].local_steps * r.assignments[p].batch_size
                   for r in history if p in r.answers)
        refused = coord.registry.get(p).refusals
        assert refused["overclaim"] >= 1 and set(refused) <= {"overclaim", "duplicate", "closed", "late"}
    assert sum(len([p for p in poisoners if p in r.answers]) for r in history) >= len(history)
