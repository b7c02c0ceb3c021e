"""Nodes that prepare labelled shards themselves (``data.source_url = "node-local"``):
nothing but the work travels, and a node whose copy differs is refused by checksum."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hypergpu.config import load_config
from hypergpu.data.run_data import ArrayRunData, prepare_run_data
from hypergpu.errors import DataError
from hypergpu.launch import local_run
from hypergpu.node.data import ArrayReader, reader_for

NODE_LOCAL = [
    "training.model='mlp'",
    "training.hidden_sizes=[32]",
    "training.local_steps=10",
    "training.lr=0.01",
    "coordinator.checkpoint_every=0",
    "coordinator.quorum=1.0",
    "rewards.enabled=false",
    "data.source_url='node-local'",
]


def test_node_local_shards_match_the_coordinators_or_are_refused(tmp_path: Path) -> None:
    cfg = load_config(None, [*NODE_LOCAL, f"data.cache_dir='{tmp_path}'", "nodes.count=3"])
    data = prepare_run_data(cfg)
    assert isinstance(data, ArrayRunData)
    assert data.shard_sections([0, 1]) == {}  # nothing is shipped
    meta = data.node_meta()
    assert meta is not None and meta["kind"] == "arrays"
    reader = reader_for(meta, "node-0")
    assert isinstance(reader, ArrayReader)
    x, y = reader.read(2).batch(__import__("numpy").arange(4))
    shard = data.manager.shards[2]
    assert x.numpy().tolist() == shard.x[:4].tolist() and y.tolist() == shard.y[:4].tolist()
    with pytest.raises(DataError, match="node-0: work names shard 7"):
        reader.read(7)
    other = {**meta, "seed": meta["seed"] + 1}  # a different split: every checksum differs
    with pytest.raises(DataError, match="node-5: shard 0 of digits prepared here hashes to"):
        ArrayReader(other, "node-5")


@pytest.mark.slow
def test_a_run_whose_nodes_prepare_their_own_shards(tmp_path: Path) -> None:
    cfg = load_config(None, [*NODE_LOCAL, f"data.cache_dir='{tmp_path / 'cache'}'", "nodes.count=2",
                             "training.rounds=3"])

    async def train():
        async with local_run(cfg, log_dir=tmp_path / "logs") as run:
            return run.coordinator, await run.train(join_timeout_s=120)

    coord, summary = asyncio.run(train())
    assert summary.rounds == 3 and all(r.applied for r in coord.history)
    assert summary.accuracy is not None and summary.accuracy > 0.5
    # Parameters and work only: far less than the shards' float32 bytes.
    shard_bytes = sum(s.x.nbytes for s in coord.shards.shards)
    assert all(n.bytes_sent < shard_bytes / 2 for n in coord.registry.all())
