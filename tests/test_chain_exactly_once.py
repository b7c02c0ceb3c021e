"""Chain writes happen exactly once (issue 12, item 6).

On the embedded EVM, receipt timeouts are real: automine is switched off, so a
sent transaction sits unmined until the test mines a block. On anvil, blocks
come on an interval while the settlement queue runs with a 1 s receipt timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from eth_account import Account

from hypergpu.chain import AnvilProcess, ChainClient, ContributionEntry, SettlementQueue
from hypergpu.chain import session_state
from hypergpu.chain.queue import requeue_file
from hypergpu.chain.recorder import ChainRecorder
from hypergpu.chain.testing import anvil_unavailable_reason, free_port, funded_signer
from hypergpu.cli import main
from hypergpu.config import load_config
from hypergpu.config.chain import ChainConfig
from hypergpu.coordinator.registry import NodeRegistry
from hypergpu.errors import ChainError, ChainUnavailableError
from hypergpu.events import EventBus

ETH = 10**18
_sessions = itertools.count(1)
# Short enough that a test waits little, long enough for the embedded EVM to answer a poll.
SLOW = {"receipt_timeout_s": 0.3, "retries": 1, "backoff_s": 0.02, "backoff_max_s": 0.1, "replace_after": 0}


@pytest.fixture(scope="module")
def dev() -> ChainClient:
    """The embedded chain, as its dev-funded deployer (only used to fund fresh accounts)."""
    return ChainClient.connect()


@pytest.fixture
def coord(dev: ChainClient) -> ChainClient:
    """Fresh contracts whose admin and coordinator is a fresh account, so no other
    client shares its nonce; a short receipt timeout."""
    client = ChainClient(dev.w3, funded_signer(dev, 100 * ETH), ChainConfig(**SLOW))
    client.deploy()
    return client


def new_session(client: ChainClient) -> int:
    sid = next(_sessions)
    client.create_session(sid, sid.to_bytes(32, "big"))
    return sid


@contextlib.contextmanager
def not_mining(client: ChainClient) -> Iterator[object]:
    """Sent transactions wait in the pending block until ``tester.mine_blocks()``."""
    tester = client.w3.provider.ethereum_tester  # type: ignore[attr-defined]
    tester.disable_auto_mine_transactions()
    try:
        yield tester
    finally:
        tester.enable_auto_mine_transactions()


def events(client: ChainClient, session: int, name: str) -> list[dict]:
    return [h["args"] for h in client.history(session) if h["event"] == name]


def nonce(client: ChainClient) -> int:
    return client.w3.eth.get_transaction_count(client.address, "latest")


def test_timeout_resumes_the_stored_transaction_even_after_a_restart(coord: ChainClient, tmp_path: Path) -> None:
    sid = new_session(coord)
    path = tmp_path / "q.sqlite3"
    before = nonce(coord)
    with not_mining(coord) as tester:
        q = SettlementQueue(path, coord)
        q.enqueue_funding(sid, ETH)
        with pytest.raises(ChainUnavailableError, match="not mined within 0.3s"):
            q.process_one()  # sent, then rebroadcast once within the retries; nothing is mined
        (sent,) = q.sent()
        assert sent.state == "open" and sent.nonce == before and sent.rebroadcasts == 1 and len(sent.hashes) == 1
        q._db.close()  # the coordinator dies with the transaction unmined

        # A new process: a new client (no nonce in memory) and the same queue file.
        restarted = ChainClient(coord.w3, coord._signer, coord.config, coord.deployment)
        q = SettlementQueue(path, restarted)
        with pytest.raises(ChainUnavailableError):
            q.process_one()
        (again,) = q.sent()  # the same signed bytes, rebroadcast: no second transaction was signed
        assert (again.id, again.raw, again.nonce, again.hashes) == (sent.id, sent.raw, sent.nonce, sent.hashes)
        assert again.rebroadcasts == 3 and again.timeouts == 4
        tester.mine_blocks(1)
    assert q.process_one()
    (op,) = q.ops()
    assert op.status == "done" and op.tx_hash == sent.hashes[0]
    assert [s.state for s in q.sent()] == ["mined"]
    assert [e["amount"] for e in events(coord, sid, "PoolFunded")] == [ETH]
    assert coord.pool(sid) == (ETH, 0) and nonce(coord) == before + 1
    q.close()


def test_stuck_transaction_is_replaced_at_its_own_nonce(coord: ChainClient, tmp_path: Path) -> None:
    bumping = ChainClient(coord.w3, coord._signer, ChainConfig(**{**SLOW, "replace_after": 1}), coord.deployment)
    sid = new_session(bumping)
    before = nonce(bumping)
    with not_mining(bumping) as tester, SettlementQueue(tmp_path / "q.sqlite3", bumping) as q:
        q.enqueue_funding(sid, 2 * ETH)
        with pytest.raises(ChainUnavailableError):
            q.process_one()
        (sent,) = q.sent()
        assert sent.replacements == 1 and len(set(sent.hashes)) == 2 and sent.nonce == before
        tester.mine_blocks(1)
        assert q.process_one()
        (mined,) = q.sent()
        assert mined.state == "mined" and q.ops()[0].tx_hash in mined.hashes
    assert [e["amount"] for e in events(bumping, sid, "PoolFunded")] == [2 * ETH]
    assert nonce(bumping) == before + 1  # one nonce, one of its two signings mined


def test_fund_twice_funds_once(coord: ChainClient, tmp_path: Path) -> None:
    sid = new_session(coord)
    assert coord.top_up_pool(sid, ETH) is not None
    assert coord.top_up_pool(sid, ETH) is None  # already funded: nothing is sent
    with SettlementQueue(tmp_path / "q.sqlite3", coord) as q:
        assert q.enqueue_funding(sid, 3 * ETH)
        assert not q.enqueue_funding(sid, 3 * ETH)  # the same funding, queued once
        q.start()
        assert q.drain(30), q.last_error
    # Funded so far counts: the queue added the difference, once.
    assert [e["amount"] for e in events(coord, sid, "PoolFunded")] == [ETH, 2 * ETH]
    assert coord.pool(sid) == (3 * ETH, 0)


def test_insufficient_pool_waits_with_an_alert_and_lands_after_funding(coord: ChainClient, tmp_path: Path) -> None:
    sid = new_session(coord)
    node = Account.create().address
    (node_id,) = coord.register_nodes([node]).values()
    alerts: list[str] = []
    with SettlementQueue(tmp_path / "q.sqlite3", coord, retry_s=0.05,
                         on_alert=lambda op, message: alerts.append(message)) as q:
        q.enqueue_rewards(sid, 0, {node: ETH})  # nothing funded yet
        q.enqueue_contributions(sid, 0, [ContributionEntry(node_id, 5, 1, 1, 10_000)])
        q.enqueue_complete(sid)
        q.start()
        assert not q.drain(1.5)
        status = {o.key: o.status for o in q.ops()}
        # The posting waits, the batch behind it went through, the completion waits for the posting.
        assert status == {f"rewards:{sid}:0": "waiting", f"record:{sid}:0": "done", f"complete:{sid}": "pending"}
        assert alerts and "InsufficientPool" in alerts[0] and "InsufficientPool" in (q.last_alert or "")
        assert coord.session_status(sid) == "active"
        q.enqueue_funding(sid, ETH)
        assert q.drain(30), q.last_error
        assert q.last_alert is None and q.ops("failed") == []
    assert [e["epoch"] for e in events(coord, sid, "RewardsCalculated")] == [0]
    assert coord.pending_reward(node) == ETH and coord.pool(sid) == (ETH, ETH)
    assert coord.session_status(sid) == "completed"


def test_paused_distributor_waits_then_lands(coord: ChainClient, tmp_path: Path) -> None:
    sid = new_session(coord)
    coord._transact("pause", coord.distributor.functions.pause())
    with SettlementQueue(tmp_path / "q.sqlite3", coord, retry_s=0.05) as q:
        q.enqueue_funding(sid, ETH)
        q.start()
        assert not q.drain(1)
        (op,) = q.ops()
        assert op.status == "waiting" and "EnforcedPause" in op.error
        coord._transact("unpause", coord.distributor.functions.unpause())
        assert q.drain(30), q.last_error
    assert coord.pool(sid) == (ETH, 0) and len(events(coord, sid, "PoolFunded")) == 1


def send_unmined(client: ChainClient, fn) -> None:
    """Signs and sends ``fn`` as ``client`` without waiting for it (automine is off)."""
    fields = fn.build_transaction({"from": client.address, "nonce": nonce(client), "gas": 200_000})
    client.w3.eth.send_raw_transaction(client._signer.sign_transaction(fields))
    client._nonce = None  # sent behind the client's back: it asks the node next time


def test_revert_on_chain_is_named_and_retried_at_a_new_nonce(coord: ChainClient, dev: ChainClient,
                                                              tmp_path: Path) -> None:
    """The distributor is paused in the block that mines the queue's funding: the
    funding reverts on chain, the queue names the revert (EnforcedPause), waits, and
    funds once after the unpause."""
    coordinator = ChainClient(dev.w3, funded_signer(dev, 10 * ETH), ChainConfig(**SLOW))
    admin = coord
    admin.deploy(coordinator=coordinator.address)
    coordinator.attach(admin.deployment)
    sid = new_session(coordinator)
    with SettlementQueue(tmp_path / "q.sqlite3", coordinator, retry_s=0.05) as q:
        q.enqueue_funding(sid, ETH)
        with not_mining(coord) as tester:
            send_unmined(admin, admin.distributor.functions.pause())  # first in the next block
            with pytest.raises(ChainUnavailableError):
                q.process_one()  # estimated before the pause, so sent; not mined yet
            tester.mine_blocks(1)
            assert q.process_one()
        (op,) = q.ops()
        assert op.status == "waiting" and "EnforcedPause" in op.error and "block" in op.error
        assert [s.state for s in q.sent()] == ["reverted"]
        admin._transact("unpause", admin.distributor.functions.unpause())
        q.start()
        assert q.drain(30), q.last_error
        first, second = q.sent()
    assert second.state == "mined" and second.nonce == first.nonce + 1
    assert coordinator.pool(sid) == (ETH, 0) and len(events(coordinator, sid, "PoolFunded")) == 1


def fake_coordinator() -> SimpleNamespace:
    registry = NodeRegistry()
    registry.join("node-0", preferred_id=0).payout = f"0x{0xA11CE0:040x}"
    return SimpleNamespace(registry=registry, events=EventBus(), model=SimpleNamespace(hash="ef" * 32))


def test_session_b_never_overwrites_session_a_state(tmp_path: Path) -> None:
    cfg = load_config(None, [f"chain.queue_path='{tmp_path / 'q.sqlite3'}'", "training.rounds=2"])
    first = ChainRecorder(cfg).start(fake_coordinator())
    first.close()
    assert first.state_path is not None
    a_bytes = first.state_path.read_bytes()
    assert "salt" not in json.loads(a_bytes)  # nodes hold their own keys: no payout key is derived here
    second = ChainRecorder(cfg).start(fake_coordinator())  # a new run, not resumed
    second.close()
    assert second.state_path is not None and second.state_path != first.state_path
    assert first.state_path.read_bytes() == a_bytes  # session A's state (its contracts, its dev key) survives
    assert oct(first.state_path.stat().st_mode & 0o777) == "0o600"
    ids = [s["session_id"] for s in session_state.list_states(cfg.chain)]
    assert ids == [first.session_id, second.session_id]
    with pytest.raises(ChainError, match="never overwritten"):
        session_state.save_state(cfg.chain, json.loads(a_bytes))
    assert first.state_path.read_bytes() == a_bytes


def test_resume_reads_the_newest_state_and_the_legacy_file(tmp_path: Path) -> None:
    chain = ChainConfig(kind="anvil", anvil_port=free_port(), queue_path=tmp_path / "q.sqlite3")
    legacy = {"kind": "anvil", "rpc_url": chain.effective_rpc_url, "session_id": 5, "salt": "00" * 32,
              "deployment": None, "created_at": 1.0}
    session_state.legacy_state_path(chain).write_text(json.dumps(legacy))
    assert session_state.load_state(chain)["session_id"] == 5  # written by an earlier version: still resumable
    for sid in (7, 6):
        session_state.save_state(chain, {**legacy, "session_id": sid, "created_at": time.time()})
        time.sleep(0.01)
    assert session_state.load_state(chain)["session_id"] == 6  # the newest, whatever its id
    assert session_state.load_state(chain, 7)["session_id"] == 7
    other = chain.model_copy(update={"anvil_port": chain.anvil_port + 1})
    assert session_state.load_state(other) is None  # another endpoint's sessions are not this chain's
    assert session_state.load_state(chain.model_copy(update={"kind": "embedded"})) is None


def test_chain_requeue_command_requeues_failed_items(coord: ChainClient, tmp_path: Path) -> None:
    chain = ChainConfig(queue_path=tmp_path / "q.sqlite3")
    sid = new_session(coord)
    session_state.save_state(chain, {"kind": "embedded", "rpc_url": None, "session_id": sid, "salt": "00" * 32,
                                     "deployment": coord.deployment.to_dict()})
    with SettlementQueue(session_state.session_file(chain, sid, ".sqlite3"), coord) as q:
        q.enqueue_contributions(sid, 0, [ContributionEntry(10**6, 1, 1, 1, 10_000)])  # no such node: fails
        q.enqueue_contributions(sid, 1, [ContributionEntry(10**6, 1, 1, 1, 10_000)])
        while q.process_one():
            pass
        assert [o.status for o in q.ops()] == ["failed", "failed"]
    runner = CliRunner()
    args = ["chain", "requeue", "--set", f"chain.queue_path='{chain.queue_path}'"]
    result = runner.invoke(main, [*args, "--key", f"record:{sid}:1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"session_id": sid, "requeued": [f"record:{sid}:1"]}
    result = runner.invoke(main, args)  # the rest of the failed ones, of the newest session
    assert json.loads(result.output)["requeued"] == [f"record:{sid}:0"]
    with SettlementQueue(session_state.session_file(chain, sid, ".sqlite3"), coord) as q:
        assert [o.status for o in q.ops()] == ["pending", "pending"]
        assert all(o.error for o in q.ops())  # why each failed stays readable
    result = runner.invoke(main, [*args, "--session", "999999"])
    assert result.exit_code == 1 and "session 999999" in result.output
    result = runner.invoke(main, [*args, "--send"])
    assert result.exit_code == 1 and "embedded chain ended" in result.output


def test_requeue_upgrades_a_queue_file_from_before_waiting(coord: ChainClient, tmp_path: Path) -> None:
    """A posting an earlier version marked failed for InsufficientPool can be put back."""
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE ops (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, "
                   "kind TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending', "
                   "attempts INTEGER NOT NULL DEFAULT 0, tx_hash TEXT, gas_used INTEGER, error TEXT, "
                   "created_at REAL NOT NULL, updated_at REAL NOT NULL)")
        db.execute("INSERT INTO ops(key, kind, payload, status, attempts, error, created_at, updated_at) "
                   "VALUES ('rewards:9:0', 'rewards', '{}', 'failed', 1, 'InsufficientPool', 0, 0)")
    assert requeue_file(path) == ["rewards:9:0"]
    with SettlementQueue(path, coord) as q:
        (op,) = q.ops()
        assert (op.status, op.not_before, op.error) == ("pending", 0.0, "InsufficientPool") and q.sent() == []


# --- on anvil ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def anvil_ready() -> None:
    reason = anvil_unavailable_reason()
    if reason:
        pytest.skip(f"anvil unavailable: {reason}")


def rpc(client: ChainClient, method: str, *params: object) -> object:
    answer = client.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in answer, answer
    return answer.get("result")


class JitteryMiner:
    """Automine off; a block every 0.5-3 s (seeded), so transactions wait past a 1 s receipt timeout."""

    def __init__(self, client: ChainClient, seed: int = 12):
        import random
        import threading

        self._client = client
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jittery-miner", daemon=True)
        self.blocks = 0

    def _run(self) -> None:
        while not self._stop.wait(self._rng.uniform(0.5, 3.0)):
            rpc(self._client, "evm_mine")
            self.blocks += 1

    def __enter__(self) -> JitteryMiner:
        rpc(self._client, "evm_setAutomine", False)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        rpc(self._client, "evm_setAutomine", True)


SID = 4242
PER_NODE = 10**15
PRODUCE_S = 48.0  # epochs are queued for this long; with the drain the whole test takes about 60 s


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_slow_chain_every_write_lands_exactly_once(anvil_ready, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HG_EXACTLY_ONCE_KEY", Account.create().key.hex())
    port = free_port()
    cfg = ChainConfig(kind="anvil", anvil_port=port, key_env="HG_EXACTLY_ONCE_KEY", receipt_timeout_s=1.0,
                      retries=3, backoff_s=0.05, backoff_max_s=0.5, replace_after=2, max_replacements=2,
                      refused_retry_max_s=2.0)
    nodes = [Account.create().address for _ in range(4)]
    pool = 40 * len(nodes) * PER_NODE  # more than the run posts: the rest is withdrawn at the end
    alerts: list[str] = []
    started = time.monotonic()
    with AnvilProcess(port):
        coord = ChainClient.connect(cfg)
        coord.deploy()  # automine is still on
        before = nonce(coord)
        with JitteryMiner(coord) as miner, SettlementQueue(tmp_path / "q.sqlite3", coord, retry_s=0.1,
                                                           on_alert=lambda op, m: alerts.append(m)) as q:
            q.enqueue_session(SID, b"\x42" * 32)
            q.start()
            epochs = 0
            while time.monotonic() - started < PRODUCE_S:
                q.enqueue_account_contributions(SID, epochs, [(a, 1000 + epochs, 10, 1, 10_000) for a in nodes])
                q.enqueue_rewards(SID, epochs, {a: PER_NODE for a in nodes})
                epochs += 1
                if epochs in (3, 6):  # the pool arrives after three epochs' postings; the second is the same funding
                    q.enqueue_funding(SID, pool)
                time.sleep(3.5)
            q.enqueue_complete(SID)
            drained = q.drain(180 - 30 - (time.monotonic() - started))
            sent, ops = q.sent(), q.ops()
            blocks = miner.blocks
        run_s = time.monotonic() - started
        history = coord.history(SID)
        used = nonce(coord) - before
        tx = coord.withdraw_unallocated(SID)  # the surplus comes back to the admin
        status = coord.session_status(SID)
        withdrawn, (funded, allocated) = coord.withdrawn(SID), coord.pool(SID)
    figures = {
        "run_s": round(run_s, 1), "blocks": blocks, "epochs": epochs, "operations": len(ops),
        "transactions_signed": sum(len(s.hashes) for s in sent), "nonces_used": used,
        "mined": sum(s.state == "mined" for s in sent), "timeouts": sum(s.timeouts for s in sent),
        "rebroadcasts": sum(s.rebroadcasts for s in sent), "replacements": sum(s.replacements for s in sent),
        "fund_events": sum(h["event"] == "PoolFunded" for h in history), "alerts": len(alerts),
    }
    print("\nslow chain figures:", json.dumps(figures))
    assert drained and [o for o in ops if o.status != "done"] == []
    assert figures["fund_events"] == 1 and funded == pool
    recorded = Counter(h["args"]["epoch"] for h in history if h["event"] == "EpochRecorded")
    posted = Counter(h["args"]["epoch"] for h in history if h["event"] == "RewardsCalculated")
    assert recorded == posted == Counter(range(epochs))  # every epoch recorded and posted exactly once
    # One nonce per mined journal entry: nothing was sent outside the journal, nothing twice.
    assert used == figures["mined"] == len(sent) and len({s.nonce for s in sent}) == len(sent)
    assert figures["timeouts"] > 0 and figures["rebroadcasts"] + figures["replacements"] > 0
    assert any("InsufficientPool" in a for a in alerts)  # the postings before the funding waited, then landed
    assert allocated == epochs * len(nodes) * PER_NODE and status == "completed"
    assert withdrawn == pool - allocated and tx.gas_used > 0


def test_underfunded_pool_funded_later_lands_with_requeue_send(anvil_ready, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HG_REQUEUE_KEY", Account.create().key.hex())
    port = free_port()
    overrides = ["chain.kind='anvil'", f"chain.anvil_port={port}", "chain.key_env='HG_REQUEUE_KEY'",
                 f"chain.queue_path='{tmp_path / 'q.sqlite3'}'", "chain.backoff_s=0.05"]
    chain = load_config(None, overrides).chain
    node = Account.create().address
    with AnvilProcess(port):
        coord = ChainClient.connect(chain)
        deployment = coord.deploy()
        session_state.save_state(chain, {"kind": "anvil", "rpc_url": chain.effective_rpc_url, "session_id": SID,
                                         "salt": "00" * 32, "deployment": deployment.to_dict()})
        with SettlementQueue(session_state.session_file(chain, SID, ".sqlite3"), coord, retry_s=0.05) as q:
            q.enqueue_session(SID, b"\x01" * 32)
            q.enqueue_funding(SID, ETH)
            q.enqueue_rewards(SID, 0, {node: ETH})
            q.enqueue_rewards(SID, 1, {node: ETH})  # the pool is one epoch short
            q.enqueue_complete(SID)
            q.start()
            assert not q.drain(2)
            assert q.counts() == {"done": 3, "waiting": 1, "pending": 1}
        # The run ended with a posting waiting. Anyone may add to a pool; then the operator sends the rest.
        coord.with_signer(funded_signer(coord)).fund_pool(SID, ETH + ETH // 2)
        args = ["chain", "requeue", "--send", "--timeout", "30"] + [a for o in overrides for a in ("--set", o)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["requeued"] == [f"rewards:{SID}:1"] and out["drained"] and out["queue"] == {"done": 5}
        posted = [h["args"]["epoch"] for h in coord.history(SID) if h["event"] == "RewardsCalculated"]
        assert posted == [0, 1] and coord.pending_reward(node) == 2 * ETH
        assert coord.pool(SID) == (5 * ETH // 2, 2 * ETH) and coord.session_status(SID) == "completed"
        # What the posting did not need goes back, through the admin's key (the coordinator's here).
        back = Account.create().address
        args = ["chain", "withdraw", "--to", back] + [a for o in overrides for a in ("--set", o)]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["withdrawn_wei"] == str(ETH // 2)
        assert coord.w3.eth.get_balance(back) == ETH // 2
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "NothingToWithdraw" in result.output
