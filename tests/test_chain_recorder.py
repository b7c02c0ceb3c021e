"""Pieces of the chain wiring that need no training run: the rewards config,
the agreement measure the coordinator adds to round records, the recorder's
epoch budget, and the ``hypergpu chain`` commands."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from hypergpu.chain.recorder import ChainRecorder
from hypergpu.cli import main
from hypergpu.config import load_config
from hypergpu.coordinator.registry import NodeRegistry
from hypergpu.errors import ChainError, ConfigError
from hypergpu.events import EventBus
from hypergpu.round import NodeAnswer, RoundRecord
from hypergpu.update.aggregate import cosines


def test_rewards_config_defaults_and_validation() -> None:
    cfg = load_config(None, [])
    assert cfg.rewards.enabled and cfg.rewards.settlement == "per-node" and cfg.rewards.pool_wei > 0
    for bad, field in (
        ("rewards.epoch_rounds=0", "epoch_rounds"),
        ("rewards.settlement='both'", "settlement"),
        ("rewards.pool_wei=0", "pool_wei"),
        ("nodes.allow={n='0x12'}", "allow"),
    ):
        with pytest.raises(ConfigError, match=field):
            load_config(None, [bad])


def test_cosines_measure_agreement_with_the_mean() -> None:
    mean = np.array([1.0, 0.0, 0.0], dtype=np.float32)
    updates = {
        0: np.array([2.0, 0.0, 0.0], dtype=np.float32),  # same direction
        1: np.array([0.0, 3.0, 0.0], dtype=np.float32),  # orthogonal
        2: np.array([-1.0, 0.0, 0.0], dtype=np.float32),  # opposed
        3: np.zeros(3, dtype=np.float32),  # no direction: no figure
    }
    got = cosines(list(updates.values()), mean)
    assert got[:3] == pytest.approx([1.0, 0.0, -1.0])
    assert np.isnan(got[3])


def fake_coordinator() -> SimpleNamespace:
    registry = NodeRegistry()
    for i in range(2):  # each paid at the address its (here imagined) signed hello named
        registry.join(f"node-{i}", preferred_id=i).payout = f"0x{0xA11CE0 + i:040x}"
    return SimpleNamespace(registry=registry, events=EventBus(), model=SimpleNamespace(hash="cd" * 32))


def record(round_id: int, samples: tuple[int, int] = (10, 30)) -> RoundRecord:
    answers = {
        i: NodeAnswer(node_id=i, round=round_id, samples=s, loss=0.5, compute_s=1.0, wall_s=1.0, turnaround_s=1.2,
                      update_bytes=100, params_bytes=100, codec="raw", weight=float(s), cosine=0.5)
        for i, s in enumerate(samples)
    }
    return RoundRecord(round=round_id, applied=True, participants=[0, 1], reported=[0, 1], missing=[], excluded={},
                       train_loss=0.5, samples=sum(samples), duration_s=1.2, model_version=round_id, answers=answers)


def test_recorder_needs_start_and_splits_the_pool_exactly(tmp_path: Path) -> None:
    pool = 10**18 + 3
    cfg = load_config(None, [
        f"chain.queue_path='{tmp_path / 'q.sqlite3'}'", "training.rounds=7", "rewards.epoch_rounds=3",
        f"rewards.pool_wei={pool}",
    ])
    coord = fake_coordinator()
    recorder = ChainRecorder(cfg)
    with pytest.raises(ChainError, match="start"):
        recorder(coord, record(1))
    recorder.start(coord)
    try:
        assert recorder.planned_epochs == 3

        async def rounds() -> None:
            for r in range(1, 5):  # epoch 0 closes at round 3; round 4 opens epoch 1
                pending = recorder(coord, record(r))
                if pending is not None:
                    await pending

        asyncio.run(rounds())
        assert sorted(recorder.book.epochs) == [0]
        # the run stops early after round 4: the partial epoch takes the rest of the pool
        assert recorder.finish(coord, timeout_s=60), recorder.queue.last_error
        rewards = recorder.rewards()
        amounts = [int(v) for e in rewards["epochs"] for v in e["amounts"].values()]
        assert sum(amounts) == pool and rewards["allocated_wei"] == str(pool)
        # node-1 did three times node-0's samples at the same time and agreement: it earns more
        totals = {k: int(v) for k, v in rewards["totals"].items()}
        assert totals["node-1"] > totals["node-0"] > 0
        assert recorder.status()["queue_depth"] == 0
    finally:
        recorder.close()


def test_chain_status_command_reads_the_session_state(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["chain", "status", "--set", f"chain.queue_path='{tmp_path / 'q.sqlite3'}'"])
    assert result.exit_code == 0, result.output
    assert '"kind": "embedded"' in result.output
    result = runner.invoke(main, ["chain", "up", "--set", "chain.kind='monad-testnet'"])
    assert result.exit_code == 2 and "rpc_url" in result.output
