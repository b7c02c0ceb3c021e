"""Two poisoners of ten can neither stop the run nor take its pool (issue 12's poisoning test).

Real parts throughout: a coordinator with the chain recorder on the embedded
chain, eight real node processes training digits over the real QUIC
transport, and two scripted peers (``test_trust._poisoner``) that answer
every round with the last global step sign-flipped and scaled x100 (5.0 per
coordinate in round 1), each first claiming 10**15 samples. Under the
default aggregation the run still reaches the target a clean run of this
configuration reaches (0.95; ten honest nodes are at 0.97 after round 2),
and the two poisoners together earn at most 1% of the pool. Measured here
(busy 2-core host, about 4 minutes): 0.217, 0.908, 0.983 in rounds 1-3, both
poisoners clipped and judged harmful every round, 0.0 of the pool to them,
0.125 to each honest node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hypergpu.chain.recorder import ChainRecorder
from hypergpu.coordinator import Coordinator

from engine_helpers import run_with_nodes
from test_trust import _poisoner, make_config

pytestmark = pytest.mark.timeout(480)

POOL = 10**18
HONEST = tuple(range(8))
POISONERS = (8, 9)


@pytest.mark.slow
def test_two_poisoners_of_ten_neither_stop_the_run_nor_earn_more_than_a_hundredth_of_the_pool(
        tmp_path: Path) -> None:
    cfg = make_config(tmp_path, "nodes.count=10", "training.rounds=8", "training.target_accuracy=0.95",
                      "coordinator.round_timeout_s=120", "rewards.epoch_rounds=2", f"rewards.pool_wei={POOL}",
                      f"chain.queue_path='{tmp_path / 'chain' / 'queue.sqlite3'}'")
    assert cfg.coordinator.aggregation == "clipped-mean"  # the default is what is tested
    coord = Coordinator(cfg)
    recorder = ChainRecorder(cfg).start(coord)
    coord.observers.append(recorder)

    async def peers(join: str, token: str) -> None:
        await asyncio.gather(*(_poisoner(join, token, i) for i in POISONERS))

    try:
        # Every node joins before round 1 (node processes start slowly on a busy machine; a round
        # the scripted poisoners were most of would be theirs whatever the rule).
        summary, _ = asyncio.run(run_with_nodes(coord, cfg, tmp_path, list(HONEST), peers, join_timeout_s=600))
        assert recorder.finish(coord, timeout_s=120), recorder.queue.last_error if recorder.queue else None
        history = list(coord.history)
        names = {n.node_id: n.name for n in coord.registry.all()}
        totals = {k: int(v) for k, v in recorder.rewards()["totals"].items()}
        shares = {names[i]: totals.get(names[i], 0) / POOL for i in (*HONEST, *POISONERS)}
        effects = [[r.effects.get(p) for p in POISONERS if p in r.answers] for r in history if r.effects]
        print(f"\npoisoned run with the chain: accuracy {[round(r.test_accuracy or 0, 3) for r in history]}, "
              f"target reached: {summary.reached_target} after {summary.rounds} rounds; "
              f"clipped per round {[r.clipped for r in history]}; poisoners' effects {effects}; "
              f"shares of the pool {shares}; refusals {dict(summary.refusals)}")

        assert summary.reached_target and summary.accuracy is not None and summary.accuracy >= 0.95
        # The poisoners did take part: their updates were accepted (at the weight of their assigned
        # work; the 10**15 claims refused) and aggregated, clipped, in every round.
        # Each round one of a poisoner's two claims was refused: the 10**15 one as an overclaim, or — when
        # the assigned claim overtook it on the way (each message is a stream) — as a duplicate.
        for p in POISONERS:
            refused = coord.registry.get(p).refusals
            assert set(refused) <= {"overclaim", "duplicate", "closed", "late"}
            assert sum(refused.values()) >= sum(p in r.answers for r in history)
            assert all(r.answers[p].samples == r.assignments[p].local_steps * r.assignments[p].batch_size
                       for r in history if p in r.answers)
        assert summary.refusals.get("overclaim", 0) >= 1
        assert sum(p in r.answers for r in history for p in POISONERS) >= len(history)
        # Every round was applied (a round the honest nodes all miss leaves the model as it was, and the
        # poisoners' flipped step is then zero: a free ride this test is not about; hence the long timeout).
        assert history[0].participants == list(range(10))
        for r in history:
            assert r.applied and r.aggregation == "clipped-mean", (r.round, r.reported, r.not_applied)
            assert all(r.answers[p].clipped for p in POISONERS if p in r.answers)
        # Every epoch was posted, <= 1% of the pool to the two poisoners — and of what was paid out (a run
        # that stops at its target on an epoch's last round pays only the epochs it ran).
        paid = sum(totals.values())
        assert 0 < paid <= POOL
        assert sum(shares[names[p]] for p in POISONERS) <= 0.01
        assert sum(totals.get(names[p], 0) for p in POISONERS) <= 0.01 * paid
        assert all(shares[names[i]] > 0 for i in HONEST)
    finally:
        recorder.close()
