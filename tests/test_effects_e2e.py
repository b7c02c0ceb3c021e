"""A harmful node earns nothing; honest and noise-level nodes earn (issue 12, item 3), end to end.

A real coordinator with the chain recorder on the embedded chain; two real
node processes train digits over the real QUIC transport, while two scripted
peers join the same coordinator: a poisoner (5.0 per coordinate, its sign
flipped every other round, each first claiming 10**15 samples) and a peer
whose updates are at noise level. Every accepted update is scored by its
effect on held-out samples; the poisoner's are harmful every round, so its
credit and its share of the pool are zero, while the honest nodes and the
noise-level peer earn.

(``test_trust.py``'s poisoner, which sends the last global step sign-flipped
x100, is no fit here: once its own poison is in the global step, flipping that
step undoes it, and that update is measured — rightly — as helping.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from hypergpu import protocol
from hypergpu.chain.recorder import ChainRecorder
from hypergpu.coordinator import Coordinator
from hypergpu.protocol import Assignment, Message
from hypergpu.transport import connect

from engine_helpers import run_with_nodes
from identity_helpers import say_hello
from test_trust import make_config

pytestmark = pytest.mark.timeout(300)

POOL = 10**18
HONEST, POISONER, NOISY = (0, 1), 2, 3


async def _poisoner(join: str, token: str, index: int) -> None:
    """Joins as node ``index`` and answers round r with (-1)**(r+1) x 5.0 per coordinate,
    first claiming 10**15 samples, then all the work it was assigned."""
    link = await connect(join, token=token, name=f"poisoner-{index}")
    await say_hello(link, join, name=f"poisoner-{index}", index=index)
    welcome = protocol.decode(await link.recv(timeout=90))
    size = int(welcome.meta["num_params"])
    while True:
        msg = protocol.decode(await link.recv(timeout=90))
        if msg.kind == "bye":
            return
        if msg.kind != "params":
            continue
        poison = np.full(size, 5.0 if msg.round % 2 else -5.0, np.float32)
        a = Assignment.from_meta(msg.meta, 32)
        for claim in (10**15, a.local_steps * a.batch_size * a.accumulation):
            await link.send(protocol.encode(Message("update", {"samples": claim}, {"update": poison}, round=msg.round)))


async def _noise_level(join: str, token: str, index: int) -> None:
    """Joins as node ``index`` and answers every round with tiny random noise, claiming its assigned work."""
    link = await connect(join, token=token, name=f"noisy-{index}")
    await say_hello(link, join, name=f"noisy-{index}", index=index)
    welcome = protocol.decode(await link.recv(timeout=90))
    rng = np.random.default_rng(index)
    size = int(welcome.meta["num_params"])
    while True:
        msg = protocol.decode(await link.recv(timeout=90))
        if msg.kind == "bye":
            return
        if msg.kind != "params":
            continue
        a = Assignment.from_meta(msg.meta, 32)
        noise = rng.normal(0.0, 1e-7, size).astype(np.float32)
        meta = {"samples": a.local_steps * a.batch_size * a.accumulation}
        await link.send(protocol.encode(Message("update", meta, {"update": noise}, round=msg.round)))


@pytest.mark.slow
def test_a_harmful_node_earns_nothing_on_chain_while_honest_and_noise_level_nodes_earn(tmp_path: Path) -> None:
    rounds = 4
    cfg = make_config(tmp_path, "nodes.count=4", f"training.rounds={rounds}", "coordinator.round_timeout_s=20",
                      "rewards.epoch_rounds=2", f"rewards.pool_wei={POOL}", "rewards.effect_batch=256",
                      f"chain.queue_path='{tmp_path / 'chain' / 'queue.sqlite3'}'")
    coord = Coordinator(cfg)
    recorder = ChainRecorder(cfg).start(coord)
    coord.observers.append(recorder)

    async def peers(join: str, token: str) -> None:
        await asyncio.gather(_poisoner(join, token, POISONER), _noise_level(join, token, NOISY))

    try:
        summary, _ = asyncio.run(run_with_nodes(coord, cfg, tmp_path, list(HONEST), peers))
        assert recorder.finish(coord, timeout_s=60), recorder.queue.last_error if recorder.queue else None
        history = list(coord.history)
        effects = {r.round: {n: r.effects.get(n) for n in r.answers} for r in history if r.effects is not None}
        print("\neffects per round (node: effect / se / quality): " + " | ".join(
            f"r{r}: " + ", ".join(f"{n}: {e.effect:.3g}/{e.se:.2g}/{e.quality:.2f}" if e and e.effect is not None
                                  else f"{n}: {e}" for n, e in sorted(es.items()))
            for r, es in sorted(effects.items())))
        rewards = recorder.rewards()
        totals = {k: int(v) for k, v in rewards["totals"].items()}
        print(f"rewards (wei): {totals}; summary nodes: "
              f"{[(n['name'], n['effects_scored'], n['effects_harmful']) for n in summary.nodes]}")

        # Every applied round was scored, every update in it judged.
        assert summary.rounds == rounds and sorted(effects) == list(range(1, rounds + 1))
        for r in history:
            assert r.applied and r.effects is not None and r.effects.ready and r.effects.error is None
            for n in r.answers:
                e = r.effects.get(n)
                assert e is not None
                if n == POISONER:  # worse beyond noise: zero quality that round
                    assert e.harmful and e.quality == 0.0
                else:  # honest and noise-level updates are not punished
                    assert not e.harmful and e.quality >= 1.0
            if POISONER in r.answers:  # the API's and the events' form shows it too
                assert r.as_dict()["nodes"][str(POISONER)]["harmful"] is True
        # An honest node's update helps: in round 1, from the untrained model, beyond noise.
        for n in HONEST:
            e = effects[1][n]
            assert e is not None and e.effect is not None and e.se is not None and e.effect > 2 * e.se
        # The noise-level peer's effect is within noise: quality exactly neutral.
        assert all(es[NOISY] is not None and es[NOISY].quality == 1.0 for es in effects.values() if NOISY in es)
        assert sum(POISONER in r.answers for r in history) >= rounds - 1

        # On chain: the poisoner earned nothing, every other node earned.
        names = {n.node_id: n.name for n in coord.registry.all()}
        assert totals.get(names[POISONER], 0) == 0
        for n in (*HONEST, NOISY):
            assert totals[names[n]] > 0
        assert sum(totals.values()) == POOL
        chain = {c["name"]: c["chain"] for c in recorder.contributions()}
        assert chain[names[POISONER]]["updates_accepted"] == 0 and chain[names[POISONER]]["compute_credit"] == 0
        for epoch in recorder.book.epochs.values():
            poisoner = epoch.nodes[names[POISONER]]
            assert poisoner.score == 0.0 and poisoner.harmful_rounds >= 1 and poisoner.quality == 0.5
        # The summary shows each node's effects.
        by_name = {n["name"]: n for n in summary.nodes}
        assert by_name[names[POISONER]]["effects_harmful"] == by_name[names[POISONER]]["effects_scored"] >= rounds - 1
        assert all(by_name[names[n]]["effects_harmful"] == 0 and by_name[names[n]]["effects_scored"] == rounds
                   for n in HONEST)
    finally:
        recorder.close()
