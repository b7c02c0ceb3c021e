"""Elastic membership: nodes beyond ``nodes.count`` join a run under way and take part."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator
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
