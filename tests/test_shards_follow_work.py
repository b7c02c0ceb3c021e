"""Shards belong to the run: whoever the planner leaves out, every epoch covers
the training set. Unit tests drive the WorkSampler; the end-to-end test runs
10 real node processes with the three slowest left out for the whole run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from hypergpu.config import load_config
from hypergpu.data.sampler import WorkSampler
from hypergpu.errors import DataError
from hypergpu.launch import local_run
from hypergpu.round import PlanView, RoundPlan, StaticPlanner


def test_each_epoch_hands_out_every_sample_once_across_shards() -> None:
    sizes = [50, 40, 60]
    sampler = WorkSampler(sizes, seed=1)
    seen: list[tuple[int, int]] = []
    for r in range(15):  # 15 * 10 = 150 = one epoch
        drawn = sampler.take((r, 0), 10, prefer=[0])
        seen += [tuple(p) for p in drawn.pairs.tolist()]
        sampler.confirm((r, 0))
    assert sorted(seen) == sorted((s, i) for s, n in enumerate(sizes) for i in range(n))
    # The node's own shard came first, then the shards nobody holds.
    assert {s for s, _ in seen[:50]} == {0}
    sampler.take((99, 0), 1)  # rolls into the next epoch
    assert [(c.epoch, c.trained, c.complete) for c in sampler.coverage()] == [(0, 150, True), (1, 0, False)]


def test_samples_of_a_lost_update_are_handed_out_again() -> None:
    sampler = WorkSampler([30, 30], seed=0)
    lost = sampler.take(("r1", "slow"), 20, prefer=[1], avoid=[0])
    kept = sampler.take(("r1", "fast"), 20, prefer=[0], avoid=[1])
    assert sampler.give_back(("r1", "slow")) == 20
    sampler.confirm(("r1", "fast"))
    # The rest of the epoch: shard 0's last 10, then shard 1 — the given-back samples first.
    again = sampler.take(("r2", "fast"), 40, prefer=[0])
    sampler.confirm(("r2", "fast"))
    assert {tuple(p) for p in lost.pairs.tolist()} <= {tuple(p) for p in again.pairs.tolist()}
    assert set(map(tuple, kept.pairs.tolist())).isdisjoint(map(tuple, again.pairs.tolist()))
    sampler.take(("r3", "fast"), 1)  # the next epoch begins
    first = sampler.coverage()[0]
    assert first.complete and first.fraction == 1.0


def test_samples_of_an_update_the_aggregation_dropped_are_handed_out_again() -> None:
    # Krum leaves an update out of the model: its samples were not trained into it.
    from hypergpu.coordinator.work import WorkDealer
    from hypergpu.data.shards import ShardManager
    from hypergpu.protocol import Assignment
    from hypergpu.round import NodeAnswer, RoundRecord

    dealer = WorkDealer(ShardManager([list(range(40)), list(range(40))]), seed=0, epochs=1)
    plan = RoundPlan(1, {0: Assignment(batch_size=10, local_steps=1), 1: Assignment(batch_size=10, local_steps=1)})
    dealt = dealer.deal(1, dealer.assigned(plan), [0, 1])
    answers = {n: NodeAnswer(node_id=n, round=1, samples=10, loss=None, compute_s=0.1, wall_s=0.1,
                             turnaround_s=0.1, update_bytes=0, params_bytes=None, codec="raw", weight=10.0,
                             dropped=n == 1) for n in (0, 1)}
    dealer.settle(RoundRecord(round=1, applied=True, participants=[0, 1], reported=[0, 1], missing=[], excluded={},
                              train_loss=None, samples=10, duration_s=1.0, model_version=1, answers=answers))
    assert dealer.sampler.coverage()[0].trained == 10  # node 0's, not node 1's
    again = dealer.deal(2, {0: 70}, [0])[0]  # the rest of the epoch: node 1's dropped samples among it
    assert {tuple(p) for p in dealt[1].tolist()} <= {tuple(p) for p in again.tolist()}


def test_sampler_refuses_nonsense() -> None:
    with pytest.raises(DataError, match="non-empty shards"):
        WorkSampler([10, 0], seed=0)
    sampler = WorkSampler([10], seed=0)
    with pytest.raises(DataError, match="cannot hand out 0"):
        sampler.take("k", 0)
    sampler.take("k", 3)
    with pytest.raises(DataError, match="already handed out"):
        sampler.take("k", 3)
    assert sampler.confirm("unknown") == 0 and sampler.give_back("unknown") == 0


class SlowestLeftOut(StaticPlanner):
    """The baseline plan without the three slowest nodes, every round."""

    def plan(self, round_id: int, view: PlanView) -> RoundPlan:
        plan = super().plan(round_id, view)
        for node in sorted(view.nodes, key=lambda n: n.speed_factor)[:3]:
            plan.leave_out(node.node_id, "among the three slowest")
        return plan


@pytest.mark.slow
def test_three_slowest_of_ten_left_out_and_every_epoch_still_covered(tmp_path: Path) -> None:
    cfg = load_config(None, [
        "nodes.count=10",
        "nodes.speed_factors={7 = 0.5, 8 = 0.4, 9 = 0.3}",
        "training.model='mlp'",
        "training.hidden_sizes=[32]",
        "training.rounds=12",
        "training.local_steps=4",
        "training.batch_size=16",
        "data.cache_dir=null",
        "coordinator.round_timeout_s=30.0",
        "coordinator.quorum=1.0",
        "coordinator.checkpoint_every=0",
        "rewards.enabled=false",
    ])

    async def train():
        async with local_run(cfg, log_dir=tmp_path, planner=SlowestLeftOut(cfg)) as run:
            summary = await run.train(join_timeout_s=120)
            return run.coordinator, summary

    coord, summary = asyncio.run(train())
    assert all(set(r.participants).isdisjoint({7, 8, 9}) for r in coord.history)
    assert all(r.applied for r in coord.history)
    # 7 nodes x 4 steps x 16 = 448 samples a round over 1437 training samples: 3+ epochs.
    finished = [c for c in coord.work.sampler.coverage() if c.complete]
    assert len(finished) >= 3, coord.work.sampler.coverage()
    assert all(c.fraction >= 0.99 for c in finished), finished
    assert summary.coverage == [c.fraction for c in finished]
    # The left-out nodes' shards were lent to those that took part, so they were shipped.
    left_out_shards = {s for n in (7, 8, 9) for s in coord.shards.shard_ids_of(n)}
    lent = {s for n in range(7) for s in coord.members.delivered[n]}
    assert left_out_shards <= lent
    assert np.isclose(sum(c.trained for c in finished), len(finished) * coord.work.sampler.total)


def test_mixed_draws_span_every_shard_and_still_cover_each_epoch_once() -> None:
    sizes = [40, 40, 40, 40]
    sampler = WorkSampler(sizes, seed=3)
    first = sampler.take((1, 0), 32, mix=True)
    assert first.shards == [0, 1, 2, 3]  # not one contiguous stretch of the data
    seen = [tuple(p) for p in first.pairs.tolist()]
    sampler.confirm((1, 0))
    for r in range(2, 6):  # 32 + 4 * 32 = 160: the epoch
        seen += [tuple(p) for p in sampler.take((r, 0), 32, mix=True).pairs.tolist()]
        sampler.confirm((r, 0))
    assert sorted(seen) == sorted((s, i) for s in range(4) for i in range(40))
