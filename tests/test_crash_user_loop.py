"""A user's own loop (``DistributedOptimizer``) through two SIGKILLs of its coordinator
(issue 15): the coordinator dies while aggregating round 3 and while writing round 6's
checkpoint, and is restarted with ``--resume`` each time; the node processes are never
restarted.

Each node runs ``user_loop_crash_node.py``, which records every update it trained and
what each message carried (int8, with error feedback). An update the coordinator lost
must give back its change to the residual, so at the end, over the rounds the final
round book's ledger holds for that node (the last send of each), what the node trained
minus what its messages carried equals the residual it still holds. Rounds sent and
then lost are checked to matter: their own residual change is far above the tolerance.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hypergpu.model.checkpoint import CheckpointManager

from cli_processes import free_port, log_field, spawn, stop, wait_for
from test_crash_exact import _hypergpu

pytestmark = pytest.mark.timeout(900)

TOKEN = "crash-exact-token"  # the one _hypergpu passes
NODES = 2
ROUNDS = 8
CRASHES = ["aggregate:3", "checkpoint:6"]
SCRIPT = Path(__file__).with_name("user_loop_crash_node.py")


def _config(path: Path, ckpt: Path) -> Path:
    path.write_text(f"""
[training]
model = "mlp"
hidden_sizes = [32]
rounds = {ROUNDS}
local_steps = 5
seed = 7
[nodes]
count = {NODES}
device = "cpu"
[adapt]
enabled = true
strategy = "all"
codecs = ["int8"]
[coordinator]
port = {free_port()}
checkpoint_every = 1
checkpoint_dir = "{ckpt}"
quorum = 1.0
late_updates = "drop"
round_timeout_s = 120.0
heartbeat_interval_s = 1.0
[rewards]
enabled = false
""")
    return path


def _user_node(join: str, name: str, out: Path, key: Path, log: Path) -> subprocess.Popen[bytes]:
    return spawn([sys.executable, str(SCRIPT), join, TOKEN, name, str(out)], log, key=key)


@pytest.mark.slow
def test_a_user_loop_node_folds_back_what_a_killed_coordinator_lost(tmp_path: Path) -> None:
    ckpt, logs = tmp_path / "ckpt", tmp_path / "logs"
    logs.mkdir()
    config = _config(tmp_path / "run.toml", ckpt)
    coordinator = _hypergpu("coordinator", str(config), "--token", TOKEN, log=logs / "coordinator-0.log",
                            crash=CRASHES[0])
    wait_for("the join string", lambda: log_field(logs / "coordinator-0.log", "join:") is not None)
    join = log_field(logs / "coordinator-0.log", "join:")
    assert join is not None
    nodes = [_user_node(join, f"user-{i}", tmp_path / f"user-{i}", tmp_path / "keys" / f"user-{i}.key",
                        logs / f"user-{i}.log") for i in range(NODES)]
    figures = []
    try:
        for life, crash in enumerate(CRASHES):
            assert coordinator.wait(timeout=600) == -signal.SIGKILL, f"life {life} did not die at {crash}"
            killed = time.monotonic()
            newest = CheckpointManager(ckpt).latest()
            assert newest is not None
            assert all(n.poll() is None for n in nodes), "a user-loop node died with the coordinator"
            following = CRASHES[life + 1] if life + 1 < len(CRASHES) else None
            coordinator = _hypergpu("coordinator", str(config), "--token", TOKEN, "--resume",
                                    log=logs / f"coordinator-{life + 1}.log", crash=following)
            wait_for("a round after the restart",
                      lambda: (ckpt / f"ckpt-{newest.round + 1:08d}.safetensors").exists())
            figures.append((crash, newest.round, time.monotonic() - killed))
        assert coordinator.wait(timeout=600) == 0
        assert [n.wait(timeout=120) for n in nodes] == [0] * NODES  # the same processes, through both kills
    finally:
        stop(coordinator, *nodes)
    final = CheckpointManager(ckpt).latest()
    assert final is not None and final.round == ROUNDS
    ledger = [tuple(e) for e in final.extra["book"]["ledger"]]
    for i in range(NODES):
        report = json.loads((tmp_path / f"user-{i}.json").read_text())
        assert report["links_lost"] >= len(CRASHES), report
        kept = np.load(tmp_path / f"user-{i}.npz")
        rounds, trained, carried = kept["rounds"], kept["trained"].astype(np.float64), kept["carried"]
        applied = sorted({r for (_, node, r) in ledger if node == report["node_id"]})
        last = {int(r): k for k, r in enumerate(rounds)}  # a round sent again: its last send is the one applied
        assert applied and set(applied) <= set(last), (applied, rounds)
        owed = sum((trained[last[r]] - carried[last[r]] for r in applied), np.zeros(trained.shape[1]))
        # what it trained = what its applied messages carried + the residual it still holds
        np.testing.assert_allclose(kept["residual"], owed, rtol=0, atol=2e-5)
        lost = [k for k in range(len(rounds)) if k not in {last[r] for r in applied}]
        assert lost, f"node {i}: no update was lost, so nothing was checked: {rounds}"
        for k in lost:  # had one of these stayed in the residual, the check above would have failed
            assert np.abs(trained[k] - carried[k]).max() > 1e-4, (k, rounds)
    for crash, checkpoint, first_round_s in figures:
        print(f"killed at {crash}: resumed from round {checkpoint}; first round closed {first_round_s:.1f} s after the kill")
