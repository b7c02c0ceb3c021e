"""A coordinator killed with SIGKILL and restarted with --resume: the same join
string (its identity is kept beside the checkpoints), and the running nodes
reconnect by themselves and train on."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from hypergpu.coordinator.identity import join_strings, kept_identity

from cli_processes import free_port, hypergpu_cli, log_field, spawn, stop, wait_for

pytestmark = pytest.mark.timeout(300)

TOKEN = "resume-test-token"


def test_the_identity_is_kept_private_and_reused(tmp_path: Path) -> None:
    first = kept_identity(tmp_path / "identity")
    assert kept_identity(tmp_path / "identity") == first
    for name in ("cert.der", "key.der"):
        assert (tmp_path / "identity" / name).stat().st_mode & 0o777 == 0o600


def test_join_strings_name_a_reachable_address() -> None:
    fp = "ab" * 32
    assert join_strings("10.0.0.5", 7070, fp, None) == [f"quic://10.0.0.5:7070#{fp}"]
    assert join_strings("0.0.0.0", 7070, fp, "coord.example") == [f"quic://coord.example:7070#{fp}"]
    assert join_strings("0.0.0.0", 7070, fp, "coord.example:9000") == [f"quic://coord.example:9000#{fp}"]
    assert join_strings("::", 7070, fp, "[fd00::1]:9000") == [f"quic://[fd00::1]:9000#{fp}"]
    every = join_strings("0.0.0.0", 7070, fp, None)
    assert every and all(j.endswith(f":7070#{fp}") for j in every)
    assert "quic://127.0.0.1:7070#" + fp in every  # loopback is one interface (listed last)


def _hypergpu(*args: str, log: Path) -> subprocess.Popen[bytes]:
    return spawn(hypergpu_cli(*args), log, token=TOKEN)


@pytest.mark.slow
def test_a_killed_coordinator_resumes_and_its_nodes_reconnect_on_their_own(tmp_path: Path) -> None:
    port, ckpt = free_port(), tmp_path / "ckpt"
    config = tmp_path / "run.toml"
    config.write_text(f"""
[training]
model = "mlp"
hidden_sizes = [32]
rounds = 12
local_steps = 10
lr = 0.003
[nodes]
count = 2
device = "cpu"
[coordinator]
port = {port}
checkpoint_every = 1
checkpoint_dir = "{ckpt}"
round_timeout_s = 20.0
[rewards]
enabled = false
""")
    logs = tmp_path / "logs"
    logs.mkdir()
    coordinator = _hypergpu("coordinator", str(config), "--token", TOKEN, log=logs / "coordinator-1.log")
    wait_for("the join string", lambda: "join: " in (logs / "coordinator-1.log").read_text())
    join = (logs / "coordinator-1.log").read_text().split("join: ")[1].split()[0]
    nodes = [_hypergpu("node", "--join", join, "--name", f"node-{i}", "--index", str(i), "--device", "cpu",
                       log=logs / f"node-{i}.log") for i in range(2)]
    try:
        wait_for("round 4's checkpoint", lambda: (ckpt / "ckpt-00000004.safetensors").exists())
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(timeout=10)
        killed_at = time.monotonic()
        assert all(n.poll() is None for n in nodes)  # the nodes keep knocking
        coordinator = _hypergpu("coordinator", str(config), "--token", TOKEN, "--resume",
                                log=logs / "coordinator-2.log")
        wait_for("the second join string", lambda: "join: " in (logs / "coordinator-2.log").read_text())
        assert (logs / "coordinator-2.log").read_text().split("join: ")[1].split()[0] == join
        # The round it resumed from, as it says: by the time the join string is read, a quick run
        # may have checkpointed later rounds already (and pruned the one just after the resume).
        wait_for("the resumed round", lambda: log_field(logs / "coordinator-2.log", "resumed:") is not None)
        resumed_from = int(str(log_field(logs / "coordinator-2.log", "resumed:")).split()[1])
        wait_for("a round after the restart",
                 lambda: any(int(p.stem[5:]) > resumed_from for p in ckpt.glob("ckpt-*.safetensors")))
        rejoin_s = time.monotonic() - killed_at
        assert coordinator.wait(timeout=240) == 0
        codes = [n.wait(timeout=60) for n in nodes]
    finally:
        stop(coordinator, *nodes)
    out = (logs / "coordinator-2.log").read_text()
    print(f"killed after round >= 4, resumed from round {resumed_from}; first round after the restart "
          f"{rejoin_s:.1f} s after the kill")
    assert codes == [0, 0]
    assert "resumed" in out or "rounds 12" in out
    assert (ckpt / "ckpt-00000012.safetensors").exists()
    for i in range(2):
        assert "reconnect" in (logs / f"node-{i}.log").read_text().lower() or "link lost" in (
            logs / f"node-{i}.log").read_text()
