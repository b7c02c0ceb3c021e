"""Elastic membership: nodes beyond ``nodes.count`` join a run under way and take part;
``coordinator.max_nodes`` refuses the excess clearly; a node that leaves with ``bye`` has its shards lent on."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator, NodeStatus
from hypergpu.launch.local import LocalNodes
from hypergpu.round import RoundRecord

pytestmark = pytest.mark.timeout(240)


@pytest.mark.slow
async def test_three_nodes_join_after_round_five_and_take_part(tmp_path: Path) -> None:
    cfg = load_config(None, [
        "nodes.count=2", "training.rounds=8", "training.model=mlp", "training.local_steps=5", "coordinator.port=0",
        "coordinator.checkpoint_every=0", "rewards.enabled=false", f"coordinator.checkpoint_dir='{tmp_path}'",
    ])
    coord = Coordinator(cfg)
    join = await coord.start()
    nodes = LocalNodes(cfg, join, coord.token, tmp_path / "logs")

    async def more_nodes_after_round_5(c: Coordinator, record: RoundRecord) -> None:
        if record.round == 5:
            for index in (2, 3, 4):  # beyond nodes.count: it says how many a local run starts
                nodes.start(index)
            await c.members.wait_for(5, 120.0, asyncio.Event())

    coord.observers.append(more_nodes_after_round_5)
    nodes.start(0)
    nodes.start(1)
    try:
        summary = await coord.run(join_timeout_s=120)
    finally:
        await coord.close()
        codes = await asyncio.to_thread(nodes.stop, 30.0)  # exiting takes a few seconds on a loaded machine
    history = list(coord.history)
    assert all(r.participants == [0, 1] for r in history[:5])
    assert all(r.reported == [0, 1, 2, 3, 4] for r in history[5:]), [r.reported for r in history]
    assert summary.rounds == 8 and codes == {i: 0 for i in range(5)}
    # The newcomers trained on samples dealt to them from the two shards there are (one per
    # node of nodes.count): the work follows the data, not the node count.
    assert all(r.answers[n].samples > 0 for r in history[5:] for n in (2, 3, 4))


@pytest.mark.slow
async def test_a_node_beyond_max_nodes_is_refused_with_a_clear_error_and_a_leaver_s_shard_is_lent_on(
        tmp_path: Path) -> None:
    cfg = load_config(None, [
        "nodes.count=3", "training.rounds=6", "training.model=mlp", "training.local_steps=5", "coordinator.port=0",
        "coordinator.max_nodes=3", "coordinator.checkpoint_every=0", "rewards.enabled=false",
        f"coordinator.checkpoint_dir='{tmp_path}'", "coordinator.round_timeout_s=20",
    ])
    coord = Coordinator(cfg)
    join = await coord.start()
    nodes = LocalNodes(cfg, join, coord.token, tmp_path / "logs")
    left_after: list[int] = []

    async def crowd_then_leave(c: Coordinator, record: RoundRecord) -> None:
        if record.round == 2:
            # a fourth node: the run is full (coordinator.max_nodes = 3), and it is told so
            extra = await asyncio.to_thread(nodes.start, 3)
            code = await asyncio.to_thread(extra.wait, 120)
            assert code == 1, code
            # node 2 leaves (SIGTERM: it says bye once its round is sent)
            nodes.procs[2].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(nodes.procs[2].wait, 60) == 0
            left_after.append(record.round)
            while c.registry.get(2).status is not NodeStatus.LEFT:
                await asyncio.sleep(0.05)

    coord.observers.append(crowd_then_leave)
    for i in range(3):
        nodes.start(i)
    try:
        summary = await coord.run(join_timeout_s=120)
    finally:
        await coord.close()
        codes = await asyncio.to_thread(nodes.stop, 30.0)
    refused = (tmp_path / "logs" / "node-3.log").read_text()
    assert "the coordinator refused this node: the run is full" in refused
    assert "coordinator.max_nodes is 3" in refused and "Traceback" not in refused
    assert coord.registry.get(2).status is NodeStatus.LEFT and 3 not in coord.registry
    # node 2's shard is lent to a node still in the run, and the rounds after go on without it
    held = coord.shards.assignment()
    assert 2 not in held and sorted(s for ids in held.values() for s in ids) == [0, 1, 2]
    history = list(coord.history)
    assert left_after == [2] and all(r.reported == [0, 1] for r in history[2:]), [r.reported for r in history]
    assert summary.rounds == 6 and codes[0] == codes[1] == 0


def test_a_node_late_every_round_is_not_retired_one_that_sends_nothing_is() -> None:
    from hypergpu.coordinator.membership import Membership
    from hypergpu.coordinator.registry import NodeRegistry
    from hypergpu.data.shards import ShardManager
    from hypergpu.events import EventBus
    from hypergpu.round import NodeAnswer

    registry = NodeRegistry(max_failures=2)
    members = Membership(registry, ShardManager([0, 1, 2]), EventBus())
    late, silent = registry.join("late").node_id, registry.join("silent").node_id
    for r in range(1, 5):
        # Each round the late node's update for the round before comes in: it misses every round, in time.
        answers = {late: NodeAnswer(node_id=late, round=r - 1, samples=8, loss=None, compute_s=1.0, wall_s=1.0,
                                    turnaround_s=None, update_bytes=64, params_bytes=None, codec="raw",
                                    weight=0.5)} if r > 1 else {}
        record = RoundRecord(round=r, applied=True, participants=[late, silent], reported=[],
                             missing=[late, silent], excluded={}, train_loss=None, samples=8, duration_s=1.0,
                             model_version=r, assignments={}, answers={}, late=answers)
        asyncio.run(members.after_round(record))
    assert registry.get(late).status is NodeStatus.ACTIVE and registry.get(late).rounds_missed == 4
    assert registry.get(silent).status is NodeStatus.DEAD
