"""A settlement queue that falls behind joins epochs' postings (``coalesce_after``):
a backlog of many epochs settles in a few transactions with the same on-chain
totals per node, and nothing already tried is ever joined into. On the embedded chain."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from eth_account import Account

from hypergpu.chain import ChainClient, SettlementQueue
from hypergpu.chain.queue_db import join

EPOCHS = 20


@pytest.fixture(scope="module")
def coord() -> ChainClient:
    client = ChainClient.connect()
    client.deploy()
    return client


def events(client: ChainClient, session: int, name: str) -> Counter[int]:
    return Counter(h["args"]["epoch"] for h in client.history(session) if h["event"] == name)


def test_a_backlog_of_epochs_settles_in_two_transactions_with_the_same_totals(coord: ChainClient,
                                                                               tmp_path: Path) -> None:
    sid = 701
    accounts = [Account.create().address for _ in range(3)]
    # epoch e: node i earns credit 100 * (i + 1) + e, reward 10**12 * (i + 1 + e); node 2 sits out odd epochs
    rows = {e: [(a, 100 * (i + 1) + e, 8, 1, 10_000 + 100 * e) for i, a in enumerate(accounts) if i < 2 or e % 2 == 0]
            for e in range(EPOCHS)}
    paid = {e: {r[0]: 10**12 * (accounts.index(r[0]) + 1 + e) for r in rows[e]} for e in range(EPOCHS)}
    total = sum(sum(p.values()) for p in paid.values())
    with SettlementQueue(tmp_path / "q.sqlite3", coord, coalesce_after=2) as q:
        q.enqueue_session(sid, b"\x07" * 32)
        q.enqueue_funding(sid, total)
        for e in range(EPOCHS):  # the sender is not started: the chain is "behind" by every epoch
            assert q.enqueue_account_contributions(sid, e, rows[e])
            assert q.enqueue_rewards(sid, e, paid[e])
        assert q.pending_count() == 4  # session, funding, one record, one posting: not 2 + 2 * EPOCHS
        assert not q.enqueue_rewards(sid, 7, paid[7])  # a joined epoch's key stays taken (a resumed run re-enqueues)
        sent_before = len(coord.transactions)
        q.start()
        assert q.drain(60), q.last_error
        counts = q.counts()
    assert counts == {"done": 4, "merged": 2 * EPOCHS - 2}
    assert len(coord.transactions) - sent_before <= 6  # session, fund, (registration), record, posting
    # each kind went out once, under the latest epoch's number
    assert events(coord, sid, "EpochRecorded") == events(coord, sid, "RewardsCalculated") == {EPOCHS - 1: 1}
    for i, account in enumerate(accounts):
        mine = [r for e in range(EPOCHS) for r in rows[e] if r[0] == account]
        record = coord.get_contribution(sid, coord.node_id(account))
        assert (record.compute_credit, record.updates_accepted, record.successful_rounds) == (
            sum(r[1] for r in mine), 8 * len(mine), len(mine))
        # the latest epoch's quality and number, as separate postings leave them
        assert (record.quality_bps, record.last_epoch) == (mine[-1][4], EPOCHS - 1)
        assert coord.pending_reward(account) == sum(p.get(account, 0) for p in paid.values())
    assert coord.pool(sid) == (total, total)


def test_an_operation_already_tried_is_never_joined_into(coord: ChainClient, tmp_path: Path) -> None:
    sid = 702
    account = Account.create().address
    with SettlementQueue(tmp_path / "q.sqlite3", coord, coalesce_after=1, retry_s=0.05) as q:
        q.enqueue_account_contributions(sid, 0, [(account, 5, 1, 1, 10_000)])
        assert q.process_one()  # the session does not exist yet: refused for now, it waits (tried once)
        assert q.ops()[0].status == "waiting"
        for e in (1, 2, 3):  # epoch 1 goes in line behind it (one unsent); 2 and 3 join epoch 1
            assert q.enqueue_account_contributions(sid, e, [(account, 10 * e, 1, 1, 10_000)])
        assert [o.status for o in q.ops()] == ["waiting", "pending", "merged", "merged"]
        q.enqueue_session(sid, b"\x08" * 32)
        q.requeue()
        q.start()
        assert q.drain(60), q.last_error
    assert events(coord, sid, "EpochRecorded") == {0: 1, 3: 1}
    record = coord.get_contribution(sid, coord.node_id(account))
    assert (record.compute_credit, record.successful_rounds) == (5 + 10 + 20 + 30, 4)


def test_join_adds_per_node_and_keeps_the_latest_quality() -> None:
    first = {"session_id": 1, "epoch": 4, "entries": [[1, 10, 2, 1, 9000], [2, 5, 1, 1, 11000]]}
    second = {"session_id": 1, "epoch": 5, "entries": [[2, 7, 3, 1, 12000], [3, 1, 1, 1, 10000]]}
    joined = join("record", first, second)
    assert joined == {"session_id": 1, "epoch": 5, "first_epoch": 4,
                      "entries": [[1, 10, 2, 1, 9000], [2, 12, 4, 2, 12000], [3, 1, 1, 1, 10000]]}
    rewards = join("rewards", {"session_id": 1, "epoch": 0, "amounts": {"0xa": 1}},
                   {"session_id": 1, "epoch": 1, "amounts": {"0xa": "2", "0xb": 3}})
    assert rewards["amounts"] == {"0xa": 3, "0xb": 3} and rewards["epoch"] == 1
