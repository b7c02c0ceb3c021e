"""End to end on a real JSON-RPC node (anvil): an RPC outage in the middle of
the settlement queue, and a coordinator killed mid-queue, both without loss
and without double-recording."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from eth_account import Account

import hypergpu
from hypergpu.chain import AnvilProcess, ChainClient, ContributionEntry, SettlementQueue, chain_up
from hypergpu.chain.anvil import _group_alive
from hypergpu.chain.testing import anvil_unavailable_reason, free_port
from hypergpu.config.chain import ChainConfig

SESSION = 7


@pytest.fixture(scope="module")
def anvil_ready() -> None:
    reason = anvil_unavailable_reason()
    if reason:
        pytest.skip(f"anvil unavailable: {reason}")


def recorded(client: ChainClient) -> list[int]:
    return sorted(h["args"]["epoch"] for h in client.history(SESSION) if h["event"] == "ContributionRecorded")


def test_outage_and_crash_resume(anvil_ready, tmp_path: Path, monkeypatch) -> None:
    # one scripted outage and crash on one chain, checked step by step as it happens
    key = Account.create()
    monkeypatch.setenv("HG_TEST_CHAIN_KEY", key.key.hex())
    config = ChainConfig(
        kind="anvil",
        anvil_port=free_port(),
        anvil_state_path=tmp_path / "anvil-state.json",
        key_env="HG_TEST_CHAIN_KEY",
        backoff_s=0.05,
        backoff_max_s=0.5,
        retries=2,
    )
    anvil, coord, deployment = chain_up(config)
    try:
        assert coord.address == key.address
        node = Account.create().address
        queue_path = tmp_path / "queue.sqlite3"
        entry = lambda nid: [ContributionEntry(nid, 1000, 8, 1, 11_000)]  # noqa: E731

        q = SettlementQueue(queue_path, coord, retry_s=0.05).start()
        q.enqueue_session(SESSION, b"\x07" * 32)
        q.enqueue_nodes([node])
        assert q.drain(30), q.last_error
        nid = coord.node_id(node)
        for epoch in range(3):
            q.enqueue_contributions(SESSION, epoch, entry(nid))
        assert q.drain(30), q.last_error

        # --- RPC outage: the node goes away with writes still queued ----------------
        group = anvil._proc.pid if anvil._proc is not None else None
        anvil.stop()  # graceful: anvil dumps its state to anvil_state_path
        # the npm package's wrapper and the real anvil it started are both gone
        assert group is not None and not _group_alive(group)
        for epoch in range(3, 6):
            assert q.enqueue_contributions(SESSION, epoch, entry(nid))  # never blocks on the chain
        deadline = time.monotonic() + 10
        while q.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert q.last_error is not None and q.pending_count() == 3
        restarted = AnvilProcess(config.anvil_port, config.anvil_state_path).start()
        anvil = restarted
        assert q.drain(60), q.last_error
        q.close()
        assert recorded(coord) == [0, 1, 2, 3, 4, 5]

        # --- coordinator crash: a separate process killed in the middle of the queue ----
        script = textwrap.dedent(
            f"""
            import time
            from hypergpu.chain import ChainClient, ContributionEntry, SettlementQueue
            from hypergpu.config.chain import ChainConfig
            config = ChainConfig(kind="anvil", anvil_port={config.anvil_port}, key_env="HG_TEST_CHAIN_KEY",
                                 registry_address="{deployment.registry}", tracker_address="{deployment.tracker}",
                                 distributor_address="{deployment.distributor}")
            q = SettlementQueue({str(queue_path)!r}, ChainClient.connect(config))
            for epoch in range(6, 46):
                q.enqueue_contributions({SESSION}, epoch, [ContributionEntry({nid}, 1000, 8, 1, 11_000)])
            print("queued", flush=True)
            q.start()
            time.sleep(120)
            """
        )
        env = {**os.environ, "PYTHONPATH": str(Path(hypergpu.__file__).parents[1])}
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "queued"
            deadline = time.monotonic() + 60
            while not coord.is_epoch_recorded(SESSION, 8) and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
        with SettlementQueue(queue_path, coord, retry_s=0.05) as resumed:
            left = resumed.pending_count()
            assert 0 < left < 40, f"the kill should land mid-queue, {left} pending"
            resumed.start()
            assert resumed.drain(60), resumed.last_error
            assert resumed.ops("failed") == []
        assert recorded(coord) == list(range(46))  # every epoch exactly once
        record = coord.get_contribution(SESSION, nid)
        assert (record.compute_credit, record.updates_accepted, record.successful_rounds) == (46_000, 368, 46)
    finally:
        anvil.stop()
