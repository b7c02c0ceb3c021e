"""Adaptation in real runs: node processes over the real shaped QUIC transport."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import pytest

from hypergpu.adapt import AdaptivePlanner
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
        tmp_path, "nodes.count=3", "training.rounds=12", "coordinator.round_timeout_s=6", "coordinator.quorum=0.6",
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
    # 12 rounds, not 10: after 10, 9 runs here read 0.86-0.94 and one CI run 0.84 (the unstable
    # link's drops differ from run to run); after 12, 6 runs read 0.90-0.95.
    assert result.accuracy is not None and result.accuracy > 0.85
    assert planner.status()["links"][2]["quality"] != "excellent"
