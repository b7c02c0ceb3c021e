"""Training across network namespaces (issue 15): real coordinator and node processes, each
host its own namespace behind a bridge (``benches/netns_hosts.py``).

- a full run with the coordinator in one namespace, bound to 0.0.0.0 and advertising its
  address, and nodes in four others joining by the join string it prints;
- a 30 s partition of one node (nftables drops everything in its namespace) that heals:
  the node rejoins by itself and trains again.

Needs root, ``ip`` and ``nft``; skipped with the reason printed otherwise.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hypergpu.model.checkpoint import CheckpointManager

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benches"))
from cli_processes import hypergpu_cli, log_field, spawn, stop, wait_for  # noqa: E402
from netns_hosts import Host, Link, NetnsUnavailable, Topology, hosts, why_unavailable  # noqa: E402

pytestmark = [pytest.mark.timeout(900), pytest.mark.netns, pytest.mark.slow]

TOKEN = "netns-run-token"
PORT = 7070


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Iterator[Topology]:
    reason = why_unavailable()
    if reason:
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)
    try:
        with hosts([Link()] * request.param, subnet="10.79.15") as topo:
            yield topo
    except NetnsUnavailable as exc:
        print(f"SKIPPED: {exc}")
        pytest.skip(str(exc))


def _config(tmp: Path, coordinator: Host, nodes: int, rounds: int, extra: str = "") -> Path:
    path = tmp / "run.toml"
    path.write_text(f"""
[training]
model = "mlp"
hidden_sizes = [32]
rounds = {rounds}
local_steps = 5
lr = 0.003
[nodes]
count = {nodes}
device = "cpu"
[coordinator]
host = "0.0.0.0"
advertise = "{coordinator.ip}"
port = {PORT}
checkpoint_dir = "{tmp / 'ckpt'}"
heartbeat_interval_s = 1.0
{extra}
[rewards]
enabled = false
""")
    return path


def _spawn(host: Host, log: Path, *args: str, key: Path | None = None) -> subprocess.Popen[bytes]:
    return spawn(host.exec(*hypergpu_cli(*args)), log, token=TOKEN, key=key)


def _start(topo: Topology, tmp: Path, rounds: int, extra: str = "") -> tuple[subprocess.Popen[bytes], list[
        subprocess.Popen[bytes]], str]:
    coordinator_host, node_hosts = topo.hosts[0], topo.hosts[1:]
    config = _config(tmp, coordinator_host, len(node_hosts), rounds, extra)
    logs = tmp / "logs"
    logs.mkdir()
    coordinator = _spawn(coordinator_host, logs / "coordinator.log", "coordinator", str(config), "--token", TOKEN)
    wait_for("the join string", lambda: log_field(logs / "coordinator.log", "join: ") is not None, 120)
    join = log_field(logs / "coordinator.log", "join: ")
    assert join is not None
    nodes = [_spawn(h, logs / f"node-{i}.log", "node", "--join", join, "--name", f"node-{i}", "--index", str(i),
                    "--device", "cpu", key=tmp / "keys" / f"node-{i}.key") for i, h in enumerate(node_hosts)]
    return coordinator, nodes, join


def _ledger(ckpt: Path) -> list[tuple[int, int, int]]:
    latest = CheckpointManager(ckpt).latest()
    return [] if latest is None else [tuple(e) for e in latest.extra["book"]["ledger"]]  # type: ignore[misc]


@pytest.mark.parametrize("topology", [5], indirect=True)
def test_a_run_across_five_namespaces_joins_by_the_advertised_address(topology: Topology, tmp_path: Path) -> None:
    coordinator, nodes, join = _start(topology, tmp_path, rounds=6)
    try:
        assert coordinator.wait(timeout=600) == 0
        codes = [n.wait(timeout=120) for n in nodes]
    finally:
        stop(coordinator, *nodes)
    # bound to 0.0.0.0, the join string names the advertised address, which the nodes used
    assert join.startswith(f"quic://{topology.hosts[0].ip}:{PORT}#")
    assert codes == [0, 0, 0, 0]
    ledger = _ledger(tmp_path / "ckpt")
    assert sorted(ledger) == [(r, n, r) for r in range(1, 7) for n in range(4)]


def _partition(host: Host, on: bool) -> None:
    """Drop everything in and out of ``host``'s namespace (``on``), or stop dropping."""
    if on:
        rules = ("table inet partition {\n"
                 "  chain in { type filter hook input priority -10; policy drop; }\n"
                 "  chain out { type filter hook output priority -10; policy drop; }\n}\n")
        subprocess.run(host.exec("nft", "-f", "-"), input=rules, text=True, check=True, timeout=30)
    else:
        subprocess.run(host.exec("nft", "delete", "table", "inet", "partition"), check=True, timeout=30)


@pytest.mark.parametrize("topology", [3], indirect=True)
def test_a_node_partitioned_for_30_s_rejoins_and_trains(topology: Topology, tmp_path: Path) -> None:
    # Rounds close at their deadline without the cut-off node (quorum: one of two).
    coordinator, nodes, _ = _start(topology, tmp_path, rounds=100_000,
                                   extra="quorum = 0.5\nround_timeout_s = 4.0\nmax_consecutive_failures = 1000")
    ckpt, logs, cut = tmp_path / "ckpt", tmp_path / "logs", topology.hosts[2]  # node 1's host
    try:
        wait_for("round 3", lambda: any(r >= 3 for r, _, _ in _ledger(ckpt)), 300, logs=logs)
        _partition(cut, True)
        cut_at = max(r for r, _, _ in _ledger(ckpt))
        time.sleep(30.0)
        _partition(cut, False)
        healed = time.monotonic()
        healed_at = max(r for r, _, _ in _ledger(ckpt))
        wait_for("node 1 to train again", lambda: any(n == 1 and r > healed_at for r, n, _ in _ledger(ckpt)), 300,
                 logs=logs)
        rejoin_s = time.monotonic() - healed
        coordinator.send_signal(signal.SIGTERM)  # finish the round, checkpoint, say bye
        assert coordinator.wait(timeout=120) == 0
        codes = [n.wait(timeout=120) for n in nodes]
    finally:
        stop(coordinator, *nodes)
    ledger = _ledger(ckpt)
    during = {r for r, n, _ in ledger if n == 1 and cut_at + 1 < r <= healed_at}
    assert not during, f"node 1 was applied while cut off: rounds {sorted(during)}"
    assert any(n == 0 and cut_at < r <= healed_at for r, n, _ in ledger)  # the run went on without it
    assert codes == [0, 0]
    print(f"partitioned after round {cut_at} for 30 s ({healed_at - cut_at} rounds without it); "
          f"node 1 trained again {rejoin_s:.1f} s after the heal")
