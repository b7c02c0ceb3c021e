"""The contracts on a real in-process EVM (eth-tester + py-evm)."""

from __future__ import annotations

import itertools

import pytest
from eth_account import Account

from hypergpu.chain import ChainClient, ContributionEntry, RewardTree
from hypergpu.chain.testing import funded_signer
from hypergpu.errors import ContractRevertError, InvalidArgumentError

ETH = 10**18
_session_ids = itertools.count(1)


@pytest.fixture(scope="module")
def coord() -> ChainClient:
    client = ChainClient.connect()
    client.deploy()
    return client


@pytest.fixture
def session(coord: ChainClient) -> int:
    sid = next(_session_ids)
    coord.create_session(sid, bytes([sid]) * 32)
    return sid


def nodes(coord: ChainClient, n: int) -> tuple[list[ChainClient], dict[str, int]]:
    clients = [coord.with_signer(funded_signer(coord, ETH)) for _ in range(n)]
    ids = coord.register_nodes([c.address for c in clients])
    return clients, ids


def entry(node_id: int, credit: int = 1000, quality: int = 10_000) -> ContributionEntry:
    return ContributionEntry(node_id, credit, 10, 1, quality)


def reverts(name: str):
    return pytest.raises(ContractRevertError, match=name)


def test_session_lifecycle(coord: ChainClient, session: int) -> None:
    info = coord.get_session(session)
    assert info.status == "active" and info.model_hash == bytes([session]) * 32 and info.start_time > 0
    coord.complete_session(session)
    info = coord.get_session(session)
    assert info.status == "completed" and info.end_time >= info.start_time
    with reverts("SessionNotActive"):
        coord._transact("cancel", coord.registry.functions.cancelSession(session))
    with reverts("UnknownSession"):
        coord.get_session(10**9)
    with reverts("SessionExists"):
        coord._transact("again", coord.registry.functions.createSession(session, b"\x00" * 32))
    # The client's own call is idempotent: the session exists, so nothing is sent.
    assert coord.create_session(session, b"\x00" * 32) is None


def test_contributions_accumulate_and_epochs_record_once(coord: ChainClient, session: int) -> None:
    clients, ids = nodes(coord, 3)
    id_list = list(ids.values())
    coord.record_contributions(session, 0, [entry(i, 1000 * k) for k, i in enumerate(id_list, 1)])
    coord.record_contributions(session, 1, [entry(id_list[0], 500, 12_000)])
    rec = coord.get_contribution(session, id_list[0])
    assert (rec.compute_credit, rec.updates_accepted, rec.successful_rounds) == (1500, 20, 2)
    assert rec.quality_bps == 12_000 and rec.last_epoch == 1
    assert coord.get_contribution(session, id_list[2]).compute_credit == 3000
    # A resend of epoch 1 through the client is a no-op; straight to the contract it reverts.
    assert coord.record_contributions(session, 1, [entry(id_list[0], 500)]) is None
    with reverts(r"EpochAlreadyRecorded\(sessionId=%d, epoch=1\)" % session):
        coord._transact("resend", coord.tracker.functions.recordBatch(session, 1, [entry(id_list[0]).as_tuple()]))
    assert coord.get_contribution(session, id_list[0]).compute_credit == 1500
    recorded = [h for h in coord.history(session) if h["event"] == "ContributionRecorded"]
    assert len(recorded) == 4


def test_contribution_batch_is_checked(coord: ChainClient, session: int) -> None:
    _, ids = nodes(coord, 1)
    (nid,) = ids.values()
    with reverts("UnknownNode"):
        coord.record_contributions(session, 0, [entry(10**6)])
    with reverts("QualityOutOfRange"):
        coord._transact("q", coord.tracker.functions.recordBatch(session, 0, [(nid, 1, 1, 1, 20_000)]))
    with pytest.raises(InvalidArgumentError, match="quality_bps"):
        entry(nid, quality=4000)
    with pytest.raises(InvalidArgumentError, match="repeat"):
        coord.record_contributions(session, 0, [entry(nid), entry(nid)])
    coord.complete_session(session)
    with reverts("SessionNotActive"):
        coord.record_contributions(session, 0, [entry(nid)])


def test_only_the_coordinator_writes(coord: ChainClient, session: int) -> None:
    stranger = coord.with_signer(funded_signer(coord))
    _, ids = nodes(coord, 1)
    for call in (
        lambda: stranger.create_session(10**8 + session, b"\x01" * 32),
        lambda: stranger.register_nodes([Account.create().address]),
        lambda: stranger.record_contributions(session, 0, [entry(next(iter(ids.values())))]),
        lambda: stranger.post_rewards(session, 0, {stranger.address: 1}),
        lambda: stranger.post_reward_root(session, 0, b"\x01" * 32, 1, 1),
        lambda: stranger._transact("pause", stranger.distributor.functions.pause()),
    ):
        with reverts("AccessControlUnauthorizedAccount"):
            call()


def test_node_registration_rules(coord: ChainClient) -> None:
    account = Account.create().address
    ids = coord.register_nodes([account, account.lower()])  # same account twice: registered once
    assert list(ids.values()) == [coord.node_id(account)] and coord.node_account(ids[account]) == account
    assert coord.register_nodes([account]) == ids  # idempotent
    with reverts("NodeAlreadyRegistered"):
        coord._transact("dup", coord.registry.functions.registerNodes([account]))
    with reverts("InvalidAddress"):
        coord._transact("zero", coord.registry.functions.registerNodes(["0x" + "00" * 20]))
    with pytest.raises(InvalidArgumentError, match="not a valid address"):
        coord.register_nodes(["0x1234"])
    events = [h for h in coord.history() if h["event"] == "NodeRegistered" and h["args"]["account"] == account]
    assert len(events) == 1


def test_per_node_rewards_partial_and_double_claims(coord: ChainClient, session: int) -> None:
    clients, _ = nodes(coord, 2)
    a, b = clients
    coord.fund_pool(session, 3 * ETH)
    coord.post_rewards(session, 0, {a.address: 2 * ETH, b.address: ETH})
    assert coord.pool(session) == (3 * ETH, 3 * ETH)
    assert coord.post_rewards(session, 0, {a.address: 1}) is None  # epoch already settled
    before = a.balance()
    tx = a.claim(ETH // 2)  # partial
    gas_cost = tx.gas_used * a.w3.eth.get_transaction(tx.tx_hash)["gasPrice"]
    assert a.balance() == before + ETH // 2 - gas_cost
    assert (a.pending_reward(a.address), a.claimed_reward(a.address)) == (3 * ETH // 2, ETH // 2)
    with reverts("ClaimExceedsPending"):
        a.claim(2 * ETH)
    a.claim()
    with reverts("NothingToClaim"):
        a.claim()  # claiming twice
    stranger = coord.with_signer(funded_signer(coord))
    with reverts("NothingToClaim"):
        stranger.claim()
    b.claim()
    assert b.claimed_reward(b.address) == ETH and coord.balance(coord.deployment.distributor) >= 0
    claims = [h for h in coord.history() if h["event"] == "RewardClaimed" and h["args"]["account"] == a.address]
    assert [c["args"]["amount"] for c in claims] == [ETH // 2, 3 * ETH // 2]


def test_pool_cannot_be_overdrawn(coord: ChainClient, session: int) -> None:
    clients, _ = nodes(coord, 2)
    coord.fund_pool(session, ETH)
    with reverts(r"InsufficientPool\(sessionId=%d, available=%d, requested=%d\)" % (session, ETH, ETH + 1)):
        coord.post_rewards(session, 0, {clients[0].address: ETH, clients[1].address: 1})
    coord.post_rewards(session, 0, {clients[0].address: ETH // 2})
    with reverts("InsufficientPool"):
        coord.post_reward_root(session, 1, b"\x01" * 32, ETH // 2 + 1, 1)
    with reverts("InvalidAddress"):
        coord._transact("zero", coord.distributor.functions.postRewards(session, 2, ["0x" + "00" * 20], [1]))
    with reverts("LengthMismatch"):
        coord._transact("len", coord.distributor.functions.postRewards(session, 2, [clients[0].address], [1, 2]))
    with reverts("WrongValue"):
        coord._transact("v", coord.distributor.functions.fund(session, 5), value=4)
    with reverts("UnknownSession"):
        coord.fund_pool(10**9, 1)


def test_reentrant_receiver_cannot_claim_twice(coord: ChainClient, session: int) -> None:
    attacker = coord.deploy_contract("ReentrantClaimer", coord.deployment.distributor)
    coord.register_nodes([attacker.address])
    coord.fund_pool(session, 2 * ETH)
    coord.post_rewards(session, 0, {attacker.address: ETH})
    # When paid, the receiver calls claimAll again; the guard reverts the whole claim.
    with reverts("ReentrancyGuardReentrantCall"):
        coord._transact("attack", attacker.functions.attack(ETH // 2))
    assert coord.pending_reward(attacker.address) == ETH
    assert coord.w3.eth.get_balance(attacker.address) == 0
    assert attacker.functions.reentries().call() == 0


def test_pause_stops_writes_and_claims(coord: ChainClient, session: int) -> None:
    clients, ids = nodes(coord, 1)
    coord.fund_pool(session, ETH)
    coord.post_rewards(session, 0, {clients[0].address: ETH})
    coord._transact("pause", coord.distributor.functions.pause())
    coord._transact("pause", coord.tracker.functions.pause())
    try:
        with reverts("EnforcedPause"):
            clients[0].claim()
        with reverts("EnforcedPause"):
            coord.record_contributions(session, 0, [entry(next(iter(ids.values())))])
    finally:
        coord._transact("unpause", coord.distributor.functions.unpause())
        coord._transact("unpause", coord.tracker.functions.unpause())
    clients[0].claim()
    assert clients[0].claimed_reward(clients[0].address) == ETH


def test_merkle_settlement_and_bad_proofs(coord: ChainClient, session: int) -> None:
    clients, _ = nodes(coord, 5)
    amounts = {c.address: (k + 1) * ETH // 10 for k, c in enumerate(clients)}
    tree = RewardTree.build(amounts)
    coord.fund_pool(session, 2 * ETH)
    coord.post_reward_root(session, 0, tree.root, tree.total, len(tree))
    assert coord.post_reward_root(session, 0, tree.root, tree.total, len(tree)) is None
    a, b = clients[0], clients[1]
    with reverts("InvalidProof"):  # right proof, inflated amount
        a.claim_merkle(session, 0, a.address, amounts[a.address] + 1, tree.proof(a.address))
    with reverts("InvalidProof"):  # someone else's proof
        a.claim_merkle(session, 0, a.address, amounts[a.address], tree.proof(b.address))
    with reverts("InvalidProof"):  # a stranger with a made-up leaf
        stranger = Account.create().address
        a.claim_merkle(session, 0, stranger, 1, tree.proof(a.address))
    with reverts("UnknownRoot"):
        a.claim_merkle(session, 7, a.address, amounts[a.address], tree.proof(a.address))
    before = a.w3.eth.get_balance(b.address)
    a.claim_merkle(session, 0, b.address, amounts[b.address], tree.proof(b.address))  # a relays for b
    assert a.w3.eth.get_balance(b.address) == before + amounts[b.address]
    with reverts("AlreadyClaimed"):
        b.claim_merkle(session, 0, b.address, amounts[b.address], tree.proof(b.address))
    for c in clients[2:]:
        c.claim_merkle(session, 0, c.address, amounts[c.address], tree.proof(c.address))
    assert coord.distributor.functions.merkleEpoch(session, 0).call()[2] == tree.total - amounts[a.address]


def test_merkle_root_cannot_pay_beyond_its_total(coord: ChainClient, session: int) -> None:
    clients, _ = nodes(coord, 2)
    amounts = {clients[0].address: ETH, clients[1].address: ETH}
    tree = RewardTree.build(amounts)
    coord.fund_pool(session, 3 * ETH)
    coord.post_reward_root(session, 0, tree.root, ETH, 2)  # a tree whose leaves exceed the posted total
    clients[0].claim_merkle(session, 0, clients[0].address, ETH, tree.proof(clients[0].address))
    with reverts("RootOverdrawn"):
        clients[1].claim_merkle(session, 0, clients[1].address, ETH, tree.proof(clients[1].address))


def test_erc20_pool(coord: ChainClient) -> None:
    token = coord.deploy_contract("TestToken")
    # Its own account: a second client on coord's key would leave coord's nonce behind.
    erc = ChainClient(coord.w3, funded_signer(coord), coord.config)
    erc.deploy(token=token.address)
    erc._transact("mint", token.functions.mint(erc.address, 10 * ETH))
    erc.create_session(1, b"\x02" * 32)
    with reverts("WrongValue"):
        erc._transact("native into token pool", erc.distributor.functions.fund(1, ETH), value=ETH)
    erc.fund_pool(1, 4 * ETH)
    node = erc.with_signer(funded_signer(erc))
    erc.post_rewards(1, 0, {node.address: 3 * ETH})
    node.claim(ETH)
    node.claim()
    assert node.balance() == 3 * ETH
    assert token.functions.balanceOf(erc.deployment.distributor).call() == ETH
    with reverts("NothingToClaim"):
        node.claim()


def test_withdraw_unallocated_only_by_the_admin_of_a_closed_session(coord: ChainClient, session: int) -> None:
    clients, _ = nodes(coord, 1)
    node = clients[0]
    coord.fund_pool(session, 3 * ETH)
    coord.post_rewards(session, 0, {node.address: ETH})
    admin_to = Account.create().address
    with reverts(r"SessionStillActive\(sessionId=%d\)" % session):
        coord.withdraw_unallocated(session, admin_to)  # the run may still post rewards
    coord.complete_session(session)
    stranger = coord.with_signer(funded_signer(coord))
    with reverts("AccessControlUnauthorizedAccount"):
        stranger.withdraw_unallocated(session, stranger.address)
    with reverts("InvalidAddress"):
        coord._transact("zero", coord.distributor.functions.withdrawUnallocated(session, "0x" + "00" * 20))
    tx = coord.withdraw_unallocated(session, admin_to)
    assert coord.w3.eth.get_balance(admin_to) == 2 * ETH and coord.withdrawn(session) == 2 * ETH
    assert [h["args"]["amount"] for h in coord.history(session) if h["event"] == "UnallocatedWithdrawn"] == [2 * ETH]
    assert tx.gas_used > 0 and coord.distributor.functions.available(session).call() == 0
    with reverts("NothingToWithdraw"):
        coord.withdraw_unallocated(session, admin_to)
    # What was withdrawn cannot be posted again; the allocated reward is still claimable.
    with reverts("InsufficientPool"):
        coord.post_rewards(session, 1, {node.address: 1})
    node.claim()
    assert node.claimed_reward(node.address) == ETH
    with reverts("UnknownSession"):
        coord.withdraw_unallocated(10**9, admin_to)


def test_withdraw_unallocated_needs_the_admin_role_not_the_coordinator_role(coord: ChainClient) -> None:
    coordinator = coord.with_signer(funded_signer(coord))
    split = coord.with_signer(funded_signer(coord))
    split.deploy(coordinator=coordinator.address)  # split's account: admin only
    coordinator.attach(split.deployment)
    coordinator.create_session(1, b"\x03" * 32)
    coordinator.fund_pool(1, ETH)
    coordinator.cancel_session(1)
    with reverts("AccessControlUnauthorizedAccount"):
        coordinator.withdraw_unallocated(1)
    to = Account.create().address
    split.withdraw_unallocated(1, to)  # cancelled sessions too
    assert split.w3.eth.get_balance(to) == ETH and split.pool(1) == (ETH, 0) and split.withdrawn(1) == ETH
