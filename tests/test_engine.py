"""The training engine end to end: a coordinator and real node processes over QUIC.

Each test runs a small real training (digits, a few rounds) with node
processes started by :class:`hypergpu.launch.local.LocalNodes`; faults are real
too: a node process is killed, a rogue peer sends bad updates over the
transport, a checkpoint file is corrupted, a coordinator gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hypergpu import protocol
from hypergpu.launch.local import LocalNodes
from hypergpu.config import load_config
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator import Coordinator, NodeStatus
from hypergpu.protocol import Message
from hypergpu.transport import connect
from hypergpu.wire import TensorSpec, encode_frame

from engine_helpers import run_with_nodes
from identity_helpers import say_hello

pytestmark = pytest.mark.timeout(240)


def make_config(tmp_path: Path, *overrides: str) -> HyperGPUConfig:
    return load_config(
        None,
        [
            "nodes.count=3",
            "training.rounds=5",
            "training.local_steps=15",
            "training.lr=0.003",
            f"data.cache_dir='{tmp_path / 'cache'}'",
            f"coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'",
            "coordinator.port=0",
            "coordinator.round_timeout_s=15",
            "coordinator.heartbeat_interval_s=0.5",
            *overrides,
        ],
    )


def test_training_converges_and_accounts_for_every_node(tmp_path):
    cfg = make_config(tmp_path, "coordinator.checkpoint_every=2")
    coord = Coordinator(cfg)
    summary, nodes = asyncio.run(run_with_nodes(coord, cfg, tmp_path))

    assert summary.rounds == 5 and not summary.stopped_early
    assert summary.accuracy is not None and summary.accuracy >= 0.93
    assert all(code == 0 for code in nodes.stop().values())
    by_id = {n["node_id"]: n for n in summary.nodes}
    assert sorted(by_id) == [0, 1, 2]
    for n in by_id.values():
        assert n["rounds_ok"] == 5 and n["updates_accepted"] == 5 and not n["refusals"]
        # Four parameter broadcasts: round 1's are the initial ones, which each node built itself.
        raw = coord.model.layout.total * 4
        assert 4 * raw < n["bytes_sent"] < 5 * raw
    assert summary.samples == sum(n["samples"] for n in by_id.values())
    assert [r.round for r in coord.history] == [1, 2, 3, 4, 5]
    assert all(r.applied for r in coord.history)
    assert coord.model.version == 5
    assert [p.name for p in sorted((tmp_path / "ckpt").glob("ckpt-*"))] == [
        "ckpt-00000002.safetensors",
        "ckpt-00000004.safetensors",
    ]
    # The outer optimizer (Nesterov: nodes take 15 local steps) is checkpointed with the model.
    last = coord.checkpoints.load(tmp_path / "ckpt" / "ckpt-00000004.safetensors")
    # With it: the planner and sampler (run.state), and the book and shard ledger (extra).
    assert set(last.arrays) == {"outer.velocity", "outer.steps", "run.state"}
    assert last.arrays["outer.velocity"].shape == (coord.model.layout.total,)
    assert last.arrays["outer.steps"].tolist() == [4]  # its step count (the momentum warm-up's clock)
    assert {"book", "shards", "nodes", "closed"} <= set(last.extra)


def test_the_same_seeds_train_the_same_rounds(tmp_path):
    """Node processes seed what dropout draws (a fresh process seeds torch at random), so two runs
    of one config train the same updates; two nodes' mean is the same in either arrival order."""
    runs = []
    for run in ("a", "b"):
        cfg = make_config(tmp_path / run, "nodes.count=2", "training.rounds=2")
        coord = Coordinator(cfg)
        asyncio.run(run_with_nodes(coord, cfg, tmp_path / run))
        runs.append([{n: (a.loss, a.norm) for n, a in sorted(r.answers.items())} for r in coord.history])
    print(f"\nrun a {runs[0]}\nrun b {runs[1]}")
    assert len(runs[0]) == 2 and all(len(r) == 2 for r in runs[0])
    assert runs[0] == runs[1]


def test_crashed_node_is_retired_and_its_shard_handed_on(tmp_path):
    cfg = make_config(
        tmp_path,
        "training.rounds=6",
        "coordinator.round_timeout_s=8",
        "coordinator.max_consecutive_failures=2",
        "coordinator.quorum=0.5",
    )
    coord = Coordinator(cfg)
    holder: dict[str, LocalNodes] = {}

    def crash_after_round_2(c: Coordinator, record: dict[str, Any]) -> None:
        if record.round == 2:
            holder["nodes"].kill(2)

    coord.observers.append(crash_after_round_2)

    async def main() -> Any:
        join = await coord.start()
        nodes = holder["nodes"] = LocalNodes(cfg, join, coord.token, tmp_path / "logs")
        nodes.start_all()
        try:
            return await coord.run(join_timeout_s=90)
        finally:
            await coord.close()
            await asyncio.to_thread(nodes.stop)

    summary = asyncio.run(main())
    assert summary.rounds == 6
    assert coord.registry.get(2).status is NodeStatus.DEAD
    # Every round still applied an update: the survivors made the quorum.
    assert all(r.applied for r in coord.history)
    assert all(r.reported == [0, 1] for r in list(coord.history)[3:])
    # The dead node's shard went to a survivor; no sample was lost.
    held = coord.shards.assignment()
    assert 2 not in held and sorted(s for shards in held.values() for s in shards) == [0, 1, 2]
    assert summary.accuracy is not None and summary.accuracy >= 0.9


async def _rogue(join: str, token: str, seen: dict[str, Any]) -> None:
    """A peer that joins properly, then answers each round with a bad update."""
    link = await connect(join, token=token, name="rogue")
    await say_hello(link, join, name="rogue", index=2)
    welcome = protocol.decode(await link.recv(timeout=30))
    size = int(welcome.meta["num_params"])
    good = np.zeros(size, dtype=np.float32)
    bad_updates = [
        ("nan", lambda r: Message("update", {"samples": 10}, {"update": np.full(size, np.nan, np.float32)}, round=r)),
        ("shape", lambda r: Message("update", {"samples": 10}, {"update": np.zeros(size + 3, np.float32)}, round=r)),
        ("future", lambda r: Message("update", {"samples": 10}, {"update": good}, round=r + 5)),
        ("samples", lambda r: Message("update", {"samples": -4}, {"update": good}, round=r)),
        ("duplicate", lambda r: Message("update", {"samples": 10}, {"update": good}, round=r)),
        # Weighted by its claim, this would become the whole mean: refused, it changes nothing.
        ("overclaim", lambda r: Message("update", {"samples": 10**15}, {"update": np.full(size, 5.0, np.float32)},
                                        round=r)),
    ]
    acks: list[dict[str, Any]] = seen.setdefault("acks", [])
    while True:
        msg = protocol.decode(await link.recv(timeout=60))
        if msg.kind == "bye":
            return
        if msg.kind == "ack":
            acks.append(msg.meta)
        if msg.kind != "params" or not bad_updates:
            continue
        label, make = bad_updates.pop(0)
        await link.send(protocol.encode(make(msg.round)))
        if label == "duplicate":  # the same (node, round) twice: applied once
            await link.send(protocol.encode(make(msg.round)))
        if label == "nan":
            # A well-formed frame whose message is not: its meta is not JSON.
            await link.send(encode_frame("metrics", b"{x", tensors=[TensorSpec("meta", "u8", [2], 2)]))


def test_bad_updates_are_refused_counted_and_training_goes_on(tmp_path):
    cfg = make_config(
        tmp_path,
        "training.rounds=6",
        "coordinator.round_timeout_s=6",
        "coordinator.quorum=0.6",
        "coordinator.max_consecutive_failures=10",  # keep the rogue around for every round
    )
    coord = Coordinator(cfg)
    seen: dict[str, Any] = {}

    async def peers(join: str, token: str) -> None:
        # A peer with the right token that never says hello is turned away.
        stranger = await connect(join, token=token, name="stranger")
        await stranger.send(protocol.encode(Message("update", {"samples": 1}, {"update": np.zeros(4, np.float32)})))
        await _rogue(join, token, seen)

    summary, _ = asyncio.run(run_with_nodes(coord, cfg, tmp_path, [0, 1], peers))
    rogue = coord.registry.get(2)
    assert rogue.name == "rogue"
    # nan + shape + negative samples are invalid; the future round and the
    # second copy of the duplicate are refused by the round book.
    assert rogue.refusals["invalid"] == 3
    assert rogue.refusals["future"] == 1
    assert rogue.updates_accepted == 1 and rogue.refusals["duplicate"] == 1
    assert rogue.refusals["malformed"] == 1
    assert rogue.refusals["overclaim"] == 1 and summary.refusals["overclaim"] == 1
    assert summary.refusals["bad-hello"] == 1
    refused = [a for a in seen["acks"] if not a["accepted"]]
    assert {a["reason"] for a in refused} == {"invalid", "future", "duplicate", "overclaim"}
    # The honest nodes were never refused, and training still converged.
    for i in (0, 1):
        assert not coord.registry.get(i).refusals and coord.registry.get(i).rounds_ok == 6
    assert summary.accuracy is not None and summary.accuracy >= 0.9


def test_resume_skips_a_corrupted_checkpoint(tmp_path):
    cfg = make_config(tmp_path, "nodes.count=2", "training.rounds=4", "coordinator.checkpoint_every=2")
    first = Coordinator(cfg)
    asyncio.run(run_with_nodes(first, cfg, tmp_path))
    newest = tmp_path / "ckpt" / "ckpt-00000004.safetensors"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))

    cfg2 = cfg.model_copy(update={"training": cfg.training.model_copy(update={"rounds": 5})})
    second = Coordinator(cfg2)
    summary, _ = asyncio.run(run_with_nodes(second, cfg2, tmp_path, resume=True))
    # Round 4's checkpoint was refused; training went on from round 2's.
    assert [p for p, _ in second.checkpoints.skipped] == [newest]
    assert [r.round for r in second.history] == [3, 4, 5]
    assert summary.accuracy is not None and summary.accuracy >= 0.9


def test_sigterm_checkpoints_before_exit(tmp_path):
    cfg = make_config(tmp_path, "nodes.count=2", "training.rounds=200", "coordinator.checkpoint_every=0")
    env = dict(os.environ, PYTHONPATH=str(Path(protocol.__file__).resolve().parents[1]), HYPERGPU_TOKEN="t0ken-for-test")
    args = ["--set=nodes.count=2", "--set=training.rounds=200", "--set=coordinator.checkpoint_every=0",
            f"--set=coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'", f"--set=data.cache_dir='{tmp_path / 'cache'}'",
            "--set=coordinator.port=0", "--set=rewards.enabled=false"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypergpu.cli", "coordinator", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )
    assert proc.stdout is not None
    join = proc.stdout.readline().strip().removeprefix("join: ")
    nodes = LocalNodes(cfg, join, "t0ken-for-test", tmp_path / "logs")
    nodes.start_all()
    try:
        ckpt = tmp_path / "ckpt"
        # Let it train a little, then ask it to stop.
        deadline = asyncio.run(_wait_for_round(nodes, tmp_path / "logs", 2))
        assert deadline, "no round finished in time"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        nodes.stop()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "stopped early" in out
    saved = sorted(ckpt.glob("ckpt-*.safetensors"))
    assert saved, f"no checkpoint written on SIGTERM; output:\n{out}"


async def _wait_for_round(nodes: LocalNodes, logs: Path, rounds: int, timeout_s: float = 90) -> bool:
    """True once every node has sent ``rounds`` updates (read from their logs)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while loop.time() < end:
        counts = []
        for i in nodes.procs:
            log = logs / f"node-{i}.log"
            counts.append(log.read_text().count("sent update") if log.exists() else 0)
        if counts and min(counts) >= rounds:
            return True
        await asyncio.sleep(0.2)
    return False


def test_invalid_config_is_refused_with_the_field_named(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(protocol.__file__).resolve().parents[1]))
    out = subprocess.run(
        [sys.executable, "-m", "hypergpu.cli", "train", "--set", "training.lr=-1", "--set", "nodes.count=0"],
        env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )
    assert out.returncode == 2
    assert "training.lr" in out.stderr and "nodes.count" in out.stderr
