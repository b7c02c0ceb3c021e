"""A coordinator process killed in the middle of settlement, on a real JSON-RPC
chain (anvil), then restarted with resume: no epoch is recorded or paid twice.

The killed process runs the real ChainRecorder and settlement queue; the
training rounds it observes are scripted (a full training run per process
start would take minutes on a small machine). The scripted coordinator holds
the real NodeRegistry and EventBus.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

import hypergpu
from hypergpu.chain import ChainClient
from hypergpu.chain.anvil import ANVIL_ENV, AnvilProcess, contracts_dir
from hypergpu.chain.testing import free_port
from hypergpu.config.chain import ChainConfig
from hypergpu.errors import ChainError

POOL = 10**18 + 1

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from types import SimpleNamespace
    from hypergpu.chain.queue import SettlementQueue
    from hypergpu.chain.recorder import ChainRecorder
    from hypergpu.config import load_config
    from hypergpu.coordinator.registry import NodeRegistry
    from hypergpu.events import EventBus
    from hypergpu.round import NodeAnswer, RoundRecord

    port, queue_path, resume, last_round, stall = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), sys.argv[5] == "1"
    cfg = load_config(None, [
        "chain.kind='anvil'", f"chain.anvil_port={port}", f"chain.queue_path='{queue_path}'",
        "chain.backoff_s=0.05", "training.rounds=6", "rewards.epoch_rounds=2", "rewards.pool_wei=%d",
    ])
    if stall:
        # Widen the window between "the chain accepted epoch 0's batch" and "the
        # queue marked it done", so the kill lands inside it.
        mark = SettlementQueue._mark
        def slow_mark(self, op_id, status, **kw):
            if any(o.id == op_id and o.key.endswith(":0") and o.kind == "record_accounts" for o in self.ops()):
                print("SENT-EPOCH-0", flush=True)
                time.sleep(60)
            return mark(self, op_id, status, **kw)
        SettlementQueue._mark = slow_mark
    registry = NodeRegistry()
    for i in range(3):  # each paid at the address its (here imagined) signed hello named
        registry.join(f"node-{i}", preferred_id=i).payout = f"0x{0xA11CE0 + i:040x}"
    coord = SimpleNamespace(registry=registry, events=EventBus(), model=SimpleNamespace(hash="ab" * 32))
    recorder = ChainRecorder(cfg, resume=resume).start(coord)
    print("SESSION", recorder.session_id, flush=True)
    import asyncio
    async def rounds():
        for r in range(1, last_round + 1):
            # a replayed round after the restart reports other figures: the first score must stand
            jitter = 0.5 if resume else 0.0
            answers = {i: NodeAnswer(node_id=i, round=r, samples=32 * (i + 1), loss=None, compute_s=0.5 + i + jitter,
                                     wall_s=0.5 + i + jitter, turnaround_s=0.6 + i + jitter, update_bytes=0,
                                     params_bytes=None, codec="raw", weight=1.0, cosine=0.9 - 0.1 * i)
                       for i in range(3)}
            record = RoundRecord(round=r, applied=True, participants=[0, 1, 2], reported=[0, 1, 2], missing=[],
                                 excluded={}, train_loss=None, samples=sum(a.samples for a in answers.values()),
                                 duration_s=1.0, model_version=r, answers=answers)
            pending = recorder(coord, record)
            if pending is not None:
                await pending
                print("ENQUEUED", (r - 1) // 2, flush=True)
    asyncio.run(rounds())
    if last_round == 6:
        print("DRAINED", recorder.finish(coord, timeout_s=60), flush=True)
        print("TOTALS", json.dumps(recorder.rewards()["totals"]), flush=True)
    else:
        time.sleep(120)
    """
    % POOL
)


def anvil_or_skip() -> None:
    if os.environ.get(ANVIL_ENV):
        return
    try:
        if (contracts_dir() / "node_modules" / ".bin" / "anvil").exists():
            return
    except ChainError as exc:
        pytest.skip(f"anvil unavailable: {exc}")
    pytest.skip(f"anvil not installed: run `npm ci` in contracts/ or set ${ANVIL_ENV}")


def start(script: Path, port: int, queue: Path, resume: bool, last_round: int, stall: bool) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(hypergpu.__file__).resolve().parent.parent))
    env.pop("HYPERGPU_CHAIN_KEY", None)  # the recorder keeps its own dev key for this local chain
    args = [sys.executable, str(script), str(port), str(queue), "1" if resume else "0", str(last_round), "1" if stall else "0"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen[str], marker: str, timeout_s: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout_s
    lines: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before {marker!r}:\n" + "".join(lines))
        lines.append(line)
        if line.startswith(marker):
            return lines
    raise AssertionError(f"no {marker!r} within {timeout_s}s:\n" + "".join(lines))


@pytest.mark.timeout(150)
def test_kill_mid_settlement_then_resume(tmp_path: Path) -> None:
    anvil_or_skip()
    port = free_port()
    script = tmp_path / "coordinator.py"
    script.write_text(SCRIPT)
    queue = tmp_path / "chain" / "queue.sqlite3"
    with AnvilProcess(port):
        first = start(script, port, queue, resume=False, last_round=4, stall=True)
        try:
            session = int(wait_for(first, "SESSION")[-1].split()[1])
            wait_for(first, "SENT-EPOCH-0")  # epoch 0 is on chain, not yet marked done
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
            assert first.stdout is not None
            first.stdout.close()

        second = start(script, port, queue, resume=True, last_round=6, stall=False)
        out, _ = second.communicate(timeout=120)
        assert second.returncode == 0, out
        assert f"SESSION {session}" in out  # the same session resumed
        assert "DRAINED True" in out, out

        state = json.loads(queue.with_name(f"{queue.stem}-{session}.session.json").read_text())
        client = ChainClient.connect(
            ChainConfig(kind="anvil", anvil_port=port, registry_address=state["deployment"]["registry"],
                        tracker_address=state["deployment"]["tracker"],
                        distributor_address=state["deployment"]["distributor"])
        )
        history = client.history(session)
        recorded = Counter(h["args"]["epoch"] for h in history if h["event"] == "EpochRecorded")
        paid = Counter(h["args"]["epoch"] for h in history if h["event"] == "RewardsCalculated")
        assert recorded == {0: 1, 1: 1, 2: 1}
        assert paid == {0: 1, 1: 1, 2: 1}
        assert client.pool(session) == (POOL, POOL)
        totals = json.loads(out.split("TOTALS ", 1)[1].splitlines()[0])
        assert sum(int(v) for v in totals.values()) == POOL
        assert sum(client.pending_reward(state_account) for state_account in _accounts(client.history())) == POOL
        assert client.session_status(session) == "completed"


def _accounts(history: list[dict]) -> set[str]:
    return {h["args"]["account"] for h in history if h["event"] == "NodeRegistered"}
