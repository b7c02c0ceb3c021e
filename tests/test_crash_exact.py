"""Crash-exact resume (issue 15): ten node processes, a coordinator process killed with
SIGKILL three times — while sending parameters, while aggregating, while writing a
checkpoint — and restarted with ``--resume`` at once each time.

The coordinator kills itself at the named moment (``HYPERGPU_CRASH_AT``, see
``hypergpu.coordinator.crashpoints``), so the moment is exact rather than timed.
The nodes are never restarted: they reconnect to each new life on their own.
Checked: training completes; every node process lives through all of it and
exits 0; the parameters each life resumes from hash to the newest checkpoint on
disk at the kill; the final round book's ledger holds every (node, round)
exactly once; and, with ``coordinator.deterministic``, the final parameters hash
the same as an uninterrupted run's with the same seed and nodes.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from hypergpu.model.checkpoint import CheckpointManager

from cli_processes import free_port, hypergpu_cli, log_field, spawn, stop, wait_for

pytestmark = pytest.mark.timeout(1500)

TOKEN = "crash-exact-token"
NODES = 10
ROUNDS = 14
#: where each life of the coordinator dies: the first while sending round 4's parameters, the
#: second while aggregating round 8, the third while writing round 11's checkpoint
CRASHES = ["send:4", "aggregate:8", "checkpoint:11"]


def _config(path: Path, ckpt: Path) -> Path:
    path.write_text(f"""
[training]
model = "mlp"
hidden_sizes = [32]
rounds = {ROUNDS}
local_steps = 5
lr = 0.003
seed = 7
[nodes]
count = {NODES}
device = "cpu"
[coordinator]
port = {free_port()}
checkpoint_every = 1
checkpoint_dir = "{ckpt}"
deterministic = true
quorum = 1.0
late_updates = "drop"
round_timeout_s = 120.0
heartbeat_interval_s = 1.0
[rewards]
enabled = false
""")
    return path


def _hypergpu(*args: str, log: Path, crash: str | None = None, key: Path | None = None) -> subprocess.Popen[bytes]:
    return spawn(hypergpu_cli(*args), log, token=TOKEN, crash=crash, key=key)


def _run(tmp: Path, crashes: list[str]) -> dict[str, object]:
    """One run: a coordinator life per crash point (and a last one that finishes), ten nodes throughout."""
    ckpt, logs = tmp / "ckpt", tmp / "logs"
    logs.mkdir(parents=True)
    config = _config(tmp / "run.toml", ckpt)
    lives: list[dict[str, object]] = []
    coordinator = _hypergpu("coordinator", str(config), "--token", TOKEN, log=logs / "coordinator-0.log",
                            crash=crashes[0] if crashes else None)
    wait_for("the join string", lambda: log_field(logs / "coordinator-0.log", "join:") is not None)
    join = log_field(logs / "coordinator-0.log", "join:")
    assert join is not None
    nodes = [_hypergpu("node", "--join", join, "--name", f"node-{i}", "--index", str(i), "--device", "cpu",
                       log=logs / f"node-{i}.log", key=tmp / "keys" / f"node-{i}.key") for i in range(NODES)]
    try:
        for life, crash in enumerate(crashes):
            assert coordinator.wait(timeout=900) == -signal.SIGKILL, f"life {life} did not die at {crash}"
            killed = time.monotonic()
            assert f"crash point {crash}" in (logs / f"coordinator-{life}.log").read_text()
            newest = CheckpointManager(ckpt).latest()
            assert newest is not None
            if crash.startswith("checkpoint:"):  # killed mid-write: the torn file never took a checkpoint's name
                assert newest.round < int(crash.split(":")[1])
            assert all(n.poll() is None for n in nodes), "a node died with the coordinator"
            log = logs / f"coordinator-{life + 1}.log"
            following = crashes[life + 1] if life + 1 < len(crashes) else None
            coordinator = _hypergpu("coordinator", str(config), "--token", TOKEN, "--resume", log=log, crash=following)
            restarted_s = time.monotonic() - killed
            wait_for("the resumed hash", lambda: log_field(log, "resumed:") is not None)
            resumed = log_field(log, "resumed:")
            assert resumed is not None
            wait_for("a round after the restart",
                      lambda: (ckpt / f"ckpt-{newest.round + 1:08d}.safetensors").exists())
            lives.append({"crash": crash, "checkpoint": newest.round, "checkpoint_hash": newest.model_hash,
                          "resumed": resumed, "restart_s": restarted_s,
                          "first_round_s": time.monotonic() - killed,
                          "lost": int(crash.split(":")[1]) - newest.round,
                          "join": log_field(log, "join:")})
        assert coordinator.wait(timeout=900) == 0
        codes = [n.wait(timeout=120) for n in nodes]
    finally:
        stop(coordinator, *nodes)
    final = CheckpointManager(ckpt).latest()
    assert final is not None and final.round == ROUNDS
    reconnects = [(logs / f"node-{i}.log").read_text().count("link lost") for i in range(NODES)]
    return {"lives": lives, "final": final, "codes": codes, "join": join, "reconnects": reconnects}


@pytest.mark.slow
def test_three_kills_of_the_coordinator_lose_nothing_and_end_where_an_unbroken_run_ends(tmp_path: Path) -> None:
    broken = _run(tmp_path / "broken", CRASHES)
    unbroken = _run(tmp_path / "unbroken", [])

    assert broken["codes"] == [0] * NODES  # every node lived through the three kills and finished
    assert all(n >= len(CRASHES) for n in broken["reconnects"]), broken["reconnects"]  # type: ignore[attr-defined]
    lives = broken["lives"]
    assert isinstance(lives, list) and len(lives) == 3
    for life in lives:
        # each life resumed from exactly the parameters of the newest checkpoint on disk at the kill
        assert life["resumed"] == f"round {life['checkpoint']} parameters {life['checkpoint_hash']}", life
        assert life["join"] == broken["join"]  # the kept identity: the same join string
        assert life["restart_s"] < 5.0
    final = broken["final"]
    # No update applied twice: the book's ledger (checkpointed with each round) holds every
    # node's update for every round once, in the round it was for.
    ledger = [tuple(e) for e in final.extra["book"]["ledger"]]
    assert sorted(ledger) == [(r, n, r) for r in range(1, ROUNDS + 1) for n in range(NODES)]
    assert final.model_hash == unbroken["final"].model_hash, "the killed run ended elsewhere"
    for life in lives:
        print(f"killed at {life['crash']}: resumed from round {life['checkpoint']} ({life['lost']} round(s) "
              f"run again), restarted {life['restart_s']:.1f} s and first round closed "
              f"{life['first_round_s']:.1f} s after the kill")
    print(f"links lost and found again, per node: {broken['reconnects']}")
