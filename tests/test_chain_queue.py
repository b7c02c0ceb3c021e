"""The durable settlement queue, config and key handling, on the embedded chain."""

from __future__ import annotations

import logging
import time

import pytest
from eth_account import Account
from pydantic import ValidationError

from hypergpu.chain import ChainClient, ContributionEntry, SettlementQueue, Signer, load_signer
from hypergpu.chain.rpc import retry
from hypergpu.config.chain import ChainConfig
from hypergpu.errors import ChainUnavailableError, ConfigError


@pytest.fixture(scope="module")
def coord() -> ChainClient:
    client = ChainClient.connect()
    client.deploy()
    return client


def recorded_events(client: ChainClient, session: int) -> list[tuple[int, int]]:
    return [
        (h["args"]["epoch"], h["args"]["nodeId"]) for h in client.history(session) if h["event"] == "ContributionRecorded"
    ]


def test_queue_sends_in_order_and_dedupes(coord: ChainClient, tmp_path) -> None:
    accounts = [Account.create().address for _ in range(3)]
    with SettlementQueue(tmp_path / "q.sqlite3", coord) as q:
        t0 = time.perf_counter()
        assert q.enqueue_session(101, b"\x01" * 32)
        assert q.enqueue_nodes(accounts)
        assert q.enqueue_contributions(101, 0, [ContributionEntry(1, 10, 1, 1, 10_000)])
        assert not q.enqueue_contributions(101, 0, [ContributionEntry(1, 99, 1, 1, 10_000)])  # same key
        enqueue_s = time.perf_counter() - t0
        assert q.pending_count() == 3 and enqueue_s < 5  # no chain call happened yet
        q.start()
        assert q.drain(60), q.last_error
        ops = q.ops()
        assert [o.kind for o in ops] == ["create_session", "register_nodes", "record"]
        assert all(o.status == "done" and o.tx_hash for o in ops)
    assert coord.get_contribution(101, 1).compute_credit == 10
    assert recorded_events(coord, 101) == [(0, 1)]


def test_crash_after_send_does_not_double_record(coord: ChainClient, tmp_path) -> None:
    """The coordinator sent epoch 0 and crashed before marking it done: on
    restart the queue sees the epoch on chain and sends nothing."""
    coord.create_session(102, b"\x02" * 32)
    nid = coord.register_nodes([Account.create().address])
    (node_id,) = nid.values()
    batch = [ContributionEntry(node_id, 7, 1, 1, 10_000)]
    path = tmp_path / "q.sqlite3"
    q = SettlementQueue(path, coord)
    q.enqueue_contributions(102, 0, batch)
    q.enqueue_contributions(102, 1, batch)
    coord.record_contributions(102, 0, batch)  # went out just before the "crash"
    q._db.close()  # the process dies: no stop, no flush beyond what SQLite committed

    sent_before = len(coord.transactions)
    with SettlementQueue(path, coord) as resumed:
        assert resumed.pending_count() == 2
        resumed.start()
        assert resumed.drain(60), resumed.last_error
        ops = {o.key: o for o in resumed.ops()}
    assert ops["record:102:0"].tx_hash is None and ops["record:102:0"].status == "done"
    assert ops["record:102:1"].tx_hash is not None
    assert len(coord.transactions) == sent_before + 1
    assert recorded_events(coord, 102) == [(0, node_id), (1, node_id)]
    assert coord.get_contribution(102, node_id).compute_credit == 14


def test_refused_operation_fails_without_blocking(coord: ChainClient, tmp_path) -> None:
    """A refusal that no later event can lift fails; one that can (an inactive
    session) waits; neither holds up the operations behind it."""
    with SettlementQueue(tmp_path / "q.sqlite3", coord, retry_s=0.05) as q:
        q.enqueue_session(103, b"\x03" * 32)
        q.enqueue_contributions(103, 0, [ContributionEntry(10**6, 1, 1, 1, 10_000)])  # no such node
        q.enqueue_contributions(10**9, 0, [ContributionEntry(1, 1, 1, 1, 10_000)])  # no such session (yet)
        q.enqueue_session(104, b"\x04" * 32)
        q.start()
        assert not q.drain(2)  # the inactive session's batch is still waiting
        by_key = {o.key: o for o in q.ops()}
    assert by_key["record:103:0"].status == "failed" and "UnknownNode" in by_key["record:103:0"].error
    assert by_key["record:1000000000:0"].status == "waiting" and "SessionNotActive" in by_key["record:1000000000:0"].error
    assert by_key["record:1000000000:0"].attempts >= 2  # retried, not given up
    assert by_key["session:104"].status == "done" and coord.session_status(104) == "active"


def test_an_unexpected_error_in_a_send_does_not_stop_the_queue(coord: ChainClient, tmp_path, monkeypatch) -> None:
    """Seen in a soak run: a SystemError out of the embedded chain's C extensions killed the
    settlement thread, and nothing settled after it. The worker outlives such an error: the
    operation is counted as tried, stays due, and lands on the next try."""
    real, calls = coord.create_session, []

    def flaky(*args, **kwargs):  # the CPython-internal error cannot be caused on demand
        calls.append(args)
        if len(calls) == 1:
            raise SystemError("Objects/tupleobject.c:927: bad argument to internal function")
        return real(*args, **kwargs)

    monkeypatch.setattr(coord, "create_session", flaky)
    with SettlementQueue(tmp_path / "q.sqlite3", coord, retry_s=0.05) as q:
        q.enqueue_session(105, b"\x05" * 32)
        q.start()
        assert q.drain(60), q.last_error
        (op,) = q.ops()
    assert len(calls) == 2 and op.status == "done" and op.attempts == 2, (calls, op)
    assert coord.session_status(105) == "active"


def test_unreachable_rpc_retries_then_raises() -> None:
    config = ChainConfig(kind="anvil", anvil_port=1, retries=2, backoff_s=0.01)
    calls = []

    def down() -> None:
        calls.append(1)
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(ChainUnavailableError, match="after 3 tries"):
        retry(config, "eth_chainId", down)
    assert len(calls) == 3
    with pytest.raises(ChainUnavailableError):
        ChainClient.connect(config)


def test_config_refuses_secrets_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="must not contain 'private_key'"):
        ChainConfig.model_validate({"private_key": "0x" + "11" * 32})
    with pytest.raises(ValidationError, match="rpc_url"):
        ChainConfig(kind="monad-testnet")
    with pytest.raises(ValidationError, match="10143"):
        ChainConfig(kind="monad-testnet", rpc_url="http://127.0.0.1:1", chain_id=1)
    with pytest.raises(ValidationError):
        ChainConfig(gas_margin=-0.1)
    cfg = ChainConfig(kind="monad-testnet", rpc_url="http://127.0.0.1:1")
    assert cfg.expected_chain_id == 10143
    assert ChainConfig(kind="anvil", anvil_port=9999).effective_rpc_url == "http://127.0.0.1:9999"


def test_key_from_env_never_shown(monkeypatch, caplog, tmp_path) -> None:
    account = Account.create()
    key = account.key.hex()
    config = ChainConfig(key_env="TEST_HYPERGPU_KEY")
    monkeypatch.delenv("TEST_HYPERGPU_KEY", raising=False)
    with pytest.raises(ConfigError, match="TEST_HYPERGPU_KEY"):
        load_signer(config, required=True)
    assert load_signer(config, required=False) is None
    monkeypatch.setenv("TEST_HYPERGPU_KEY", key)
    signer = load_signer(config, required=True)
    assert signer.address == account.address
    client = ChainClient.connect(config, signer=signer)
    with caplog.at_level(logging.DEBUG):
        client.deploy()
    shown = repr(signer) + str(signer) + repr(client) + caplog.text
    assert key.removeprefix("0x") not in shown and account.address in repr(signer)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(signer)
    monkeypatch.setenv("TEST_HYPERGPU_KEY", "0xnot-a-key-" + "z" * 50)
    with pytest.raises(ConfigError) as info:
        load_signer(config, required=True)
    assert "z" * 50 not in str(info.value)


def test_key_from_keystore(monkeypatch, tmp_path) -> None:
    account = Account.create()
    path = tmp_path / "key.json"
    import json

    path.write_text(json.dumps(Account.encrypt(account.key, "pw", iterations=2)))
    config = ChainConfig(key_env="TEST_HYPERGPU_NO_KEY", keystore_path=path, keystore_password_env="TEST_KS_PW")
    monkeypatch.delenv("TEST_HYPERGPU_NO_KEY", raising=False)
    monkeypatch.delenv("TEST_KS_PW", raising=False)
    with pytest.raises(ConfigError, match="TEST_KS_PW"):
        load_signer(config, required=True)
    monkeypatch.setenv("TEST_KS_PW", "wrong")
    with pytest.raises(ConfigError, match="cannot decrypt"):
        load_signer(config, required=True)
    monkeypatch.setenv("TEST_KS_PW", "pw")
    assert load_signer(config, required=True).address == account.address
    assert isinstance(Signer.create(), Signer)
