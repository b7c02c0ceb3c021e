"""Issue 17: nothing the coordinator, the API service, the event bus or the chain
recorder keeps grows with the number of rounds — each per-round or per-event
structure is a window (the rest on disk), and the figures over a whole run are
running totals."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from hypergpu.api.sessions import MetricLog, Session, metric_point
from hypergpu.config import load_config
from hypergpu.coordinator.registry import NodeRegistry
from hypergpu.events import EventBus
from hypergpu.rewards import ScoreBook, score_epoch
from hypergpu.rewards.scoring import NodeEpochStats
from hypergpu.round import NodeAnswer, RoundRecord


def test_the_event_window_holds_the_latest_events_and_resumes_inside_it() -> None:
    bus = EventBus(window=5)
    for i in range(12):
        bus.publish("alert", message=f"m{i}")
    assert bus.last_seq == 12 and bus.oldest_seq == 8
    assert [e.seq for e in bus.since(0)] == [8, 9, 10, 11, 12]  # a client that fell out of the window
    assert [e.seq for e in bus.since(10)] == [11, 12]
    assert bus.since(12) == [] and bus.since(99) == []
    assert EventBus(window=3).oldest_seq == 1  # nothing held yet: the next event's
    with pytest.raises(ValueError):
        EventBus(window=0)


def test_events_published_from_threads_keep_consecutive_sequence_numbers() -> None:
    bus = EventBus(window=10_000)

    def publish() -> None:
        for _ in range(500):
            bus.publish("chain", type="tx")

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.seq for e in bus.since(0)] == list(range(1, 2001))


def test_a_subscriber_gets_every_event_after_its_seq() -> None:
    bus = EventBus(window=100)
    bus.publish("alert", message="before")

    async def follow() -> list[int]:
        seen: list[int] = []

        async def read() -> None:
            async for event in bus.subscribe(after=1):
                seen.append(event.seq)
                if len(seen) == 3:
                    return

        reader = asyncio.ensure_future(read())
        await asyncio.sleep(0)
        for i in range(3):
            bus.publish("alert", message=f"after {i}")
            await asyncio.sleep(0)
        await asyncio.wait_for(reader, 5)
        return seen

    assert asyncio.run(follow()) == [2, 3, 4]


def _stats(name: str, samples: int = 100) -> NodeEpochStats:
    return NodeEpochStats(node=name, samples_accepted=samples, compute_seconds=2.0, reported_seconds=2.0,
                          rounds_succeeded=5, effect_quality=1.2, uptime=1.0, exchanges_ok=5, exchanges_total=5)


def test_the_score_book_keeps_a_window_and_counts_every_epoch(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    book = ScoreBook(path, session_id=3, window=4)
    scores = [score_epoch(e, [_stats("a", 100 + e), _stats("b")]) for e in range(10)]
    for e, s in enumerate(scores):
        book.add_epoch(s)
        book.add_rewards(e, {"a": 10 + e, "b": 5})
    assert sorted(book.epochs) == sorted(book.rewards) == [6, 7, 8, 9]
    assert book.epochs_scored == 10 and book.allocated == sum(10 + e for e in range(10)) + 50
    assert book.totals()["a"]["updates_accepted"] == sum(100 + e for e in range(10))
    assert book.reward_totals() == {"a": sum(10 + e for e in range(10)), "b": 50}
    assert book.score_totals()["a"] == pytest.approx(sum(s.nodes["a"].score for s in scores))
    # an epoch that left the window is read back from the file, and a replay of it writes nothing
    assert book.scores_of(2) == scores[2] and book.rewards_of(2) == {"a": 12, "b": 5}
    lines = len(path.read_text().splitlines())
    book.add_epoch(score_epoch(2, [_stats("a", 1)]))
    book.add_rewards(2, {"a": 1})
    assert len(path.read_text().splitlines()) == lines and book.epochs_scored == 10
    assert book.scores_of(10) is None and book.rewards_of(10) is None
    reopened = ScoreBook(path, session_id=3, window=4)
    assert sorted(reopened.epochs) == [6, 7, 8, 9]
    assert reopened.totals() == book.totals() and reopened.reward_totals() == book.reward_totals()
    assert reopened.allocated == book.allocated and reopened.epochs_scored == 10


def _record(round_id: int, *, test_loss: float | None = None) -> RoundRecord:
    return RoundRecord(round=round_id, applied=True, participants=[0], reported=[0], missing=[], excluded={},
                       train_loss=1.0 / round_id, samples=8, duration_s=0.5 + round_id % 2, model_version=round_id,
                       test_loss=test_loss, test_accuracy=None if test_loss is None else 0.9)


def test_a_session_keeps_its_latest_points_and_pages_through_the_rest(tmp_path: Path) -> None:
    log = MetricLog(tmp_path / "session-1.jsonl", window=10)
    for r in range(1, 101):
        log.append(metric_point(_record(r, test_loss=0.5 if r == 40 else None)))
    assert len(log) == 100 and len(log.recent) == 10
    assert [p["round"] for p in log] == list(range(1, 101))  # every point, from the file
    assert [p["round"] for p in log.page(after=20, limit=3)] == [21, 22, 23]
    for after in range(0, 102):  # a page found in the file by bisection, wherever it starts
        assert [p["round"] for p in log.page(after=after, limit=2)] == [r for r in (after + 1, after + 2) if r <= 100]
    assert [p["round"] for p in log.page(after=95)] == [96, 97, 98, 99, 100]  # from memory
    assert log.last is not None and log.last["round"] == 100
    assert log.last_eval is not None and log.last_eval["round"] == 40
    assert log.mean_duration_s == pytest.approx(1.0)
    # a session built by hand (tests, a past session) holds its points in memory
    cfg = load_config(None, ["nodes.count=1", "data.cache_dir=null"])
    session = Session(1, "baseline", cfg)
    session.metrics = [metric_point(_record(1)), metric_point(_record(2))]
    assert [p["round"] for p in session.metrics] == [1, 2] and len(session.metrics) == 2


def test_the_api_pages_metrics_and_its_status_reads_running_figures(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from hypergpu.api import TrainingService, create_app
    from hypergpu.coordinator import Coordinator

    cfg = load_config(None, ["nodes.count=2", "data.cache_dir=null", "rewards.enabled=false"])
    service = TrainingService(cfg)
    service.coordinator = Coordinator(cfg)
    session = Session(1, "baseline", cfg, state="finished")
    session.metrics = MetricLog(tmp_path / "s.jsonl", window=5)
    for r in range(1, 31):
        session.metrics.append(metric_point(_record(r, test_loss=0.25 if r == 10 else None)))
    service.sessions.append(session)
    with TestClient(create_app(service, token="t" * 16, presets_dir=tmp_path / "presets"),
                    base_url="http://localhost") as c:
        assert [p["round"] for p in c.get("/api/metrics").json()["points"]] == list(range(1, 31))
        page = c.get("/api/metrics", params={"after": 12, "limit": 4}).json()["points"]
        assert [p["round"] for p in page] == [13, 14, 15, 16]
        assert len(c.get("/api/metrics.csv").text.splitlines()) == 31
        status = c.get("/api/status").json()
        assert status["round"] == 30 and status["test_loss"] == 0.25 and status["train_loss"] == pytest.approx(1 / 30)


def _answered(round_id: int) -> RoundRecord:
    answers = {i: NodeAnswer(node_id=i, round=round_id, samples=8 * (i + 1), loss=0.5, compute_s=0.1, wall_s=0.1,
                             turnaround_s=0.2, update_bytes=10, params_bytes=10, codec="raw", weight=8.0, cosine=0.5)
               for i in range(2)}
    return RoundRecord(round=round_id, applied=True, participants=[0, 1], reported=[0, 1], missing=[], excluded={},
                       train_loss=0.5, samples=24, duration_s=0.2, model_version=round_id, answers=answers)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("settlement", ["per-node", "merkle"])
def test_the_recorder_settles_a_long_session_in_bounded_memory(tmp_path: Path, settlement: str) -> None:
    from hypergpu.chain.recorder import SENT_KEPT, ChainRecorder

    pool, rounds = 10**18 + 7, 30
    cfg = load_config(None, [
        f"chain.queue_path='{tmp_path / 'q.sqlite3'}'", f"training.rounds={rounds}", "rewards.epoch_rounds=2",
        f"rewards.pool_wei={pool}", "rewards.history_epochs=3", f"rewards.settlement='{settlement}'",
    ])
    registry = NodeRegistry()
    for i in range(2):  # each paid at the address its (here imagined) signed hello named
        registry.join(f"node-{i}", preferred_id=i).payout = f"0x{0xA11CE0 + i:040x}"
    coord = SimpleNamespace(registry=registry, events=EventBus(), model=SimpleNamespace(hash="ab" * 32))
    recorder = ChainRecorder(cfg).start(coord)
    try:
        async def run() -> None:
            for r in range(1, rounds + 1):
                pending = recorder(coord, _answered(r))
                if pending is not None:
                    await pending

        asyncio.run(run())
        assert recorder.finish(coord, timeout_s=120), recorder.queue.last_error
        assert recorder.book is not None and recorder.queue is not None
        assert sorted(recorder.book.epochs) == [12, 13, 14] and recorder.book.epochs_scored == 15
        assert len(recorder._trees) <= 3 and len(recorder.client.transactions) <= 2 * SENT_KEPT
        # the pool is split exactly across all fifteen epochs, and the totals count them all
        assert recorder.book.allocated == pool == sum(recorder.book.reward_totals().values())
        assert recorder.status()["epochs_scored"] == 15
        rewards = recorder.rewards()
        assert [e["epoch"] for e in rewards["epochs"]] == [12, 13, 14]
        assert sum(int(v) for v in rewards["totals"].values()) == pool
        if settlement == "merkle":  # an epoch long out of the window can still be claimed
            account, amount, proof = recorder.merkle_claim("node-1", 0)
            assert amount == recorder.book.rewards_of(0)["node-1"] and proof
        # one event per operation and status reached, as the sender reached it
        # (an epoch folded into a later posting of a queue that fell behind is never sent itself)
        every = recorder.queue.ops()
        ops = [o for o in every if o.status != "merged"]
        tx = [e.data for e in coord.events.since(0) if e.kind == "chain" and e.data["type"] == "tx"]
        assert sorted((t["key"], t["status"]) for t in tx) == sorted((o.key, o.status) for o in ops)
        assert [o.key for o in recorder.queue.ops(last=4)] == [o.key for o in every[-4:]]
        assert len(recorder.transactions()) <= len(recorder._deploy_txs) + 200
    finally:
        recorder.close()
