"""Updates that arrive while a round closes: held for the next round, not refused."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator
from hypergpu.coordinator import intake
from hypergpu.round import Round

from test_round import N, keep, plan, update


def _coordinator(tmp_path) -> Coordinator:
    cfg = load_config(None, [
        "nodes.count=2", "training.model='mlp'", "training.hidden_sizes=[8]", "data.cache_dir=null",
        "coordinator.port=0", "coordinator.checkpoint_every=0", f"coordinator.checkpoint_dir='{tmp_path}'",
        "coordinator.late_updates='stale-weighted'",
    ])
    return Coordinator(cfg)


def _round(coord: Coordinator, round_id: int) -> Round:
    rnd = coord._open = Round(plan(round_id, 0, 1), np.zeros(N, dtype=np.float32), coord.book, now=0.0,
                              timeout_s=10.0, version=round_id - 1)
    return rnd


def test_an_update_that_comes_while_its_round_closes_counts_late_in_the_next(tmp_path) -> None:
    coord = _coordinator(tmp_path)
    node = coord.registry.join("node-1", preferred_id=1)
    first = _round(coord, 1)
    assert first.accept(0, update(1, 1.0, version=0), 64, now=1.0).accepted
    first.seal()  # closing: the aggregate and the outer step are under way

    async def scenario() -> Round:
        await coord.intake.arrived(node, update(1, 3.0, version=0), 64)  # node 1's, in the window
        first.close(2.0, keep, model_version=1)
        second = _round(coord, 2)
        await coord.intake.round_opened()
        return second

    second = asyncio.run(scenario())
    # Not refused as "closed" (its work lost): the next round took it, late and stale-weighted.
    assert not coord.refusals and node.bytes_received == 64
    late = second.late[1]
    assert late.round == 1 and late.samples == 10 and late.weight == 0.5 and late.update_bytes == 64
    # Nothing is held twice.
    asyncio.run(coord.intake.round_opened())
    assert list(second.late) == [1]


def test_updates_beyond_the_hold_are_refused_as_closed(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(intake, "MAX_HELD", 1)
    coord = _coordinator(tmp_path)
    nodes = [coord.registry.join(f"node-{i}") for i in range(2)]
    _round(coord, 1).seal()

    async def flood() -> None:
        for node in nodes:
            await coord.intake.arrived(node, update(1, 1.0, version=0), 64)

    asyncio.run(flood())
    assert coord.refusals == {"closed": 1} and nodes[1].refusals == {"closed": 1}
