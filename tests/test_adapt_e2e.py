"""Adaptation in real runs: node processes over the real shaped QUIC transport."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest

from hypergpu.adapt import AdaptivePlanner
from hypergpu.adapt.orchestrator import MIN_TIMED_BYTES
from hypergpu.config import load_config
from hypergpu.events import EventBus
from hypergpu.launch import run_trial

pytestmark = pytest.mark.timeout(240)


def small_run(tmp_path: Path, *extra: str):
    return load_config(None, [
        "data.dataset='digits'", "data.cache_dir=null", "training.model='mlp'", "training.hidden_sizes=[64]",
        "training.lr=0.005", "training.batch_size=32", "training.local_steps=10", "coordinator.checkpoint_every=0",
        f"coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'", "coordinator.heartbeat_interval_s=0.5",
        "adapt.enabled=true", *extra,
    ])


def test_adaptive_run_reaches_the_target(tmp_path: Path) -> None:
    cfg = small_run(
        tmp_path, "nodes.count=3", "training.rounds=15", "training.target_accuracy=0.95",
        "network.node_profiles={0='good', 1='average', 2='perfect'}",
    )
    events = EventBus()
    planner = AdaptivePlanner(cfg, publish=events.publish)
    result = asyncio.run(run_trial(cfg, planner, events=events))
    assert result.accuracy is not None and result.accuracy >= 0.95, result.rounds
    assert result.time_to(0.95) is not None
    # The planner did its work: every node's link was measured, settings were chosen per node.
    links = planner.status()["links"]
    assert set(links) == {0, 1, 2} and all(v["rtt_ms"] for v in links.values())
    assert links[1]["rtt_ms"] > links[2]["rtt_ms"]
    assert any(r.assignments for r in result.rounds)


def test_link_degrading_mid_run_is_handled(tmp_path: Path) -> None:
    cfg = small_run(
        tmp_path, "nodes.count=3", "training.rounds=10", "coordinator.round_timeout_s=6", "coordinator.quorum=0.6",
        "network.node_profiles={0='perfect', 1='perfect', 2='good'}",
        "network.events=[{node=2, profile='unstable', at_round=4}]",
        "adapt.strategy='all'",  # keep asking node 2, so its link is measured on real traffic
    )
    events = EventBus()
    planner = AdaptivePlanner(cfg, publish=events.publish)
    result = asyncio.run(run_trial(cfg, planner, events=events))
    shaped = [e["data"] for e in result.events if e["kind"] == "network" and e["data"].get("type") == "shape"]
    assert len(shaped) == 1 and shaped[0]["node"] == 2 and shaped[0]["profile"] == "unstable", result.rounds
    series = planner.monitor.series(2)
    before = [p for p in series if p["round"] <= 3 and p["rtt_ms"]]
    after = [p for p in series if p["round"] >= 6 and p["rtt_ms"]]
    assert before and after, series
    # The monitor saw the link get worse: RTT several times higher, a lower score at the end.
    assert max(p["rtt_ms"] for p in after) > 3 * statistics.median(p["rtt_ms"] for p in before), series
    assert after[-1]["score"] < before[0]["score"]
    # The planner reacted to node 2 after its link degraded: it was left out,
    # quarantined, or its settings changed (codec, local steps, batch).
    reactions = [d for d in planner.decisions if d["node"] == 2 and d["round"] >= 4]
    assert reactions, list(planner.decisions)
    assert any(r["knob"] in ("selection", "standing", "codec", "local_steps") for r in reactions)
    assert result.accuracy is not None and result.accuracy > 0.85
    assert planner.status()["links"][2]["quality"] != "excellent"


class _Watching(AdaptivePlanner):
    """The planner, noting each link's measured throughput right after each round it observed."""

    def observe(self, record):  # type: ignore[no-untyped-def]
        super().observe(record)
        self.measured = {**getattr(self, "measured", {}),
                         record.round: {n: self.monitor.link(n).throughput_Bps for n in record.answers}}


def test_the_first_work_message_measures_each_link_before_any_upload_does(tmp_path: Path) -> None:
    """The coordinator times its first message to each node (send -> the node's ack of every
    byte): round 1's answers carry it, before any node has measured an upload of its own, and
    the planner knows every link's bandwidth once round 1 closed (it deals round 3 from it)."""
    cfg = small_run(
        tmp_path, "nodes.count=2", "training.rounds=3", "training.overlap=true", "training.hidden_sizes=[4096, 512]",
        "network.node_profiles={0='good', 1='good'}", "adapt.codecs=['raw', 'fp16', 'int8', 'int4']",
    )
    events = EventBus()
    planner = _Watching(cfg, publish=events.publish)
    result = asyncio.run(run_trial(cfg, planner, events=events))
    first = next(e["data"]["nodes"] for e in result.events
                 if e["kind"] == "training" and e["data"].get("type") == "round" and e["data"]["round"] == 1)
    print(f"\nround 1 downloads {[(a['download_s'], a['params_bytes']) for a in first.values()]}; "
          f"measured after round 1 {planner.measured[1]}")
    assert sorted(first) == ["0", "1"]
    assert all(a["download_s"] and a["params_bytes"] >= MIN_TIMED_BYTES and a["upload_s"] is None
               for a in first.values())
    # 100 Mbit/s links: what a few MB show through slow start is less, but far from nothing.
    assert sorted(planner.measured[1]) == [0, 1] and all(v and v * 8 > 1e6 for v in planner.measured[1].values())
