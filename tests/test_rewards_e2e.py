"""A real training run (coordinator here, node processes over QUIC) with the
chain recorder on the embedded chain: what the chain recorded matches the
coordinator's own scores, rewards add up to the pool, every node claims once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hypergpu.chain.keys import Signer
from hypergpu.chain.reconcile import compare_with_chain
from hypergpu.chain.rpc import fund_from_dev_account
from hypergpu.chain.recorder import ChainRecorder
from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator
from hypergpu.errors import ContractRevertError
from hypergpu.identity import NodeKey
from hypergpu.launch import local_run
from hypergpu.launch.local import local_key_dir

POOL = 3 * 10**18 + 7  # an odd pool: the split must still be exact


def small_config(tmp_path: Path, *extra: str):
    return load_config(None, [
        "nodes.count=3",
        "training.model='mlp'",
        "training.rounds=5",
        "training.local_steps=3",
        "data.cache_dir=null",
        "coordinator.round_timeout_s=20.0",
        "coordinator.quorum=0.6",
        f"coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'",
        f"chain.queue_path='{tmp_path / 'chain' / 'queue.sqlite3'}'",
        "rewards.epoch_rounds=2",
        f"rewards.pool_wei={POOL}",
        *extra,
    ])


async def train_with_recorders(cfg, tmp_path: Path) -> tuple[Coordinator, dict[str, ChainRecorder], object]:
    """One training run watched by two recorders, each on its own embedded chain:
    one settles per node, the other by Merkle root."""
    recorders = {}
    async with local_run(cfg, chain=False) as run:
        coord = run.coordinator
        for settlement in ("per-node", "merkle"):
            rcfg = cfg.model_copy(update={
                "rewards": cfg.rewards.model_copy(update={"settlement": settlement}),
                "chain": cfg.chain.model_copy(update={"queue_path": tmp_path / settlement / "queue.sqlite3"}),
            })
            recorders[settlement] = await asyncio.to_thread(ChainRecorder(rcfg).start, coord)
            coord.observers.append(recorders[settlement])
        summary = await run.train(join_timeout_s=60)
    for recorder in recorders.values():
        assert await asyncio.to_thread(recorder.finish, coord, timeout_s=60), recorder.queue.last_error
    return coord, recorders, summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("e2e")
    coord, recorders, summary = asyncio.run(train_with_recorders(small_config(tmp_path), tmp_path))
    yield coord, recorders, summary
    for recorder in recorders.values():
        recorder.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("settlement", ["per-node", "merkle"])
def test_training_run_settles_on_chain(trained, settlement: str) -> None:
    # every check reads the one settled run of the module fixture, in the order settlement happens
    coord, recorders, summary = trained
    recorder = recorders[settlement]
    assert summary.rounds == 5
    client = recorder.client
    session = recorder.session_id
    # Five rounds in epochs of two: epochs 0, 1 and the partial epoch 2.
    assert sorted(recorder.book.epochs) == [0, 1, 2]
    assert all(op.status == "done" for op in recorder.queue.ops()), recorder.transactions()

    # Agreement is measured: every reporting node's round figures carry a cosine.
    cosines = [a.cosine for r in coord.history for a in r.answers.values()]
    assert cosines and all(c is not None and -1.0 <= c <= 1.0 for c in cosines)

    # The chain's records equal the coordinator's local score book, node by node.
    contributions = recorder.contributions()
    assert {c["name"] for c in contributions} == {"node-0", "node-1", "node-2"}
    ids = {c["name"]: c["chain_node_id"] for c in contributions}
    assert compare_with_chain(recorder.book, client, ids) == []
    for c in contributions:
        for key in ("compute_credit", "updates_accepted", "successful_rounds"):
            assert c["chain"][key] == c["local"][key]
        assert c["chain"]["last_epoch"] == 2
    # ... and the local book agrees with the coordinator's own counters.
    for node in coord.registry.all():
        local = next(c["local"] for c in contributions if c["name"] == node.name)
        assert local["successful_rounds"] == sum(
            1 for r in coord.history if r.applied and node.node_id in r.reported
        )
        assert local["updates_accepted"] == sum(
            r.answers[node.node_id].samples for r in coord.history if r.applied and node.node_id in r.answers
        )

    # Rewards add up to exactly the pool, locally and on chain.
    rewards = recorder.rewards()
    assert sum(int(v) for v in rewards["totals"].values()) == POOL
    assert rewards["funded_wei"] == rewards["allocated_wei"] == str(POOL)

    # Each node claims its reward once (pull payment) with its own key, whose address its
    # signed hello proved; a second claim is refused.
    for c in contributions:
        key = NodeKey.load_or_create(local_key_dir(coord.config) / f"{c['name']}.key")
        assert c["account"] == key.address == coord.registry.get(int(c["name"][5:])).payout
        signer = Signer(key.account)
        fund_from_dev_account(client.w3, signer.address, 10**17)  # gas money
        node_client = client.with_signer(signer)
        owed = int(rewards["totals"][c["name"]])
        assert owed > 0
        if settlement == "per-node":
            assert node_client.pending_reward(signer.address) == owed
            node_client.claim()
            with pytest.raises(ContractRevertError, match="NothingToClaim"):
                node_client.claim()
        else:
            for epoch in sorted(recorder.book.rewards):
                account, amount, proof = recorder.merkle_claim(c["name"], epoch)
                node_client.claim_merkle(session, epoch, account, amount, proof)
                with pytest.raises(ContractRevertError, match="AlreadyClaimed"):
                    node_client.claim_merkle(session, epoch, account, amount, proof)
        assert client.claimed_reward(signer.address) == owed

    # The views the API serves are plain data, and the chain events were published.
    status = recorder.status()
    assert status["connected"] and status["queue_depth"] == 0 and status["session_id"] == session
    txs = recorder.transactions()
    assert all(t["status"] == "done" for t in txs)
    assert any(t["kind"] == "record_accounts" and t["gas_used"] for t in txs)
    kinds = {e.data["type"] for e in coord.events.since(0) if e.kind == "chain"}
    assert {"session", "epoch-queued", "tx", "flushed"} <= kinds
    assert client.session_status(session) == "completed"
