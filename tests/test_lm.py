"""Language models end to end: a GPT trained on the standard library's source by
node processes over QUIC, evaluated in the task's units, stopped at a target
loss; and every bad corpus refused with a DataError naming the problem."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest

from hypergpu.config import load_config
from hypergpu.config.schema import DataConfig
from hypergpu.coordinator import Coordinator
from hypergpu.data.corpus import load_corpus
from hypergpu.data.run_data import CorpusRunData, prepare_run_data
from hypergpu.errors import ConfigError, DataError
from hypergpu.launch import local_run
from hypergpu.node.data import CorpusReader, ensure_shards
from hypergpu.data.samples import ShardSet

TINY_GPT = [
    "training.model='gpt'",
    "training.optimizer='adamw'",
    "training.lr=0.003",
    "training.batch_size=16",
    "training.local_steps=10",
    "training.gpt.n_layer=2",
    "training.gpt.n_head=2",
    "training.gpt.n_embd=64",
    "training.gpt.block_size=64",
    "data.eval_samples=64",
    "coordinator.checkpoint_every=0",
    "coordinator.quorum=1.0",
    "coordinator.round_timeout_s=60.0",
    "rewards.enabled=false",
]


def lm_config(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY_GPT, "data.dataset='stdlib'", f"data.cache_dir='{tmp_path / 'cache'}'", *extra])


@pytest.mark.slow
def test_gpt_on_the_stdlib_corpus_learns_and_stops_at_its_target_loss(tmp_path: Path) -> None:
    cfg = lm_config(tmp_path, "nodes.count=2", "training.rounds=10", "training.local_steps=20", "training.target_loss=3.0")

    async def train():
        async with local_run(cfg, log_dir=tmp_path / "logs") as run:
            return run.coordinator, await run.train(join_timeout_s=120)

    coord, summary = asyncio.run(train())
    first, last = coord.history[0], coord.history[-1]
    assert summary.task == "lm" and all(r.applied for r in coord.history)
    # Byte-level tokens start near ln(256) = 5.55 nats; the run must get well below.
    assert first.test_loss is not None and last.test_loss is not None
    assert last.test_loss < first.test_loss and last.test_loss <= 3.0
    assert summary.reached_target and summary.rounds < 10
    assert last.test_perplexity == pytest.approx(math.exp(last.test_loss), rel=1e-6)
    assert last.test_bits_per_byte == pytest.approx(last.test_loss / math.log(2), rel=1e-6)
    assert summary.perplexity == last.test_perplexity
    # Nodes read their shards themselves: the welcome and params carried no token data.
    sent = sum(n.bytes_sent for n in coord.registry.all())
    assert sent < 2 * (summary.rounds + 1) * coord.model.layout.total * 4 + 1_000_000
    assert coord.status()["data"]["name"] == "stdlib"


def test_a_corpus_run_describes_its_data_and_evaluates_a_fixed_stride(tmp_path: Path) -> None:
    data = prepare_run_data(lm_config(tmp_path, "nodes.count=3"))
    assert isinstance(data, CorpusRunData)
    assert data.input_shape == (64,) and data.num_classes == 256
    assert len(data.manager.shards) == 3 and data.eval_indices.size == 64
    meta = data.node_meta()
    assert meta is not None and meta["url"].startswith("file://") and len(meta["shards"]) == 3
    info = data.describe()
    assert info["files"] > 1000 and info["source_bytes"] > 10_000_000


def test_nodes_read_corpus_shards_from_a_url_template(tmp_path: Path) -> None:
    corpus_dir = tmp_path / "text"
    corpus_dir.mkdir()
    for i in range(6):
        (corpus_dir / f"doc{i}.txt").write_text(f"document {i} " * 400)
    cfg = load_config(None, [*TINY_GPT, "data.dataset='text'", f"data.path='{corpus_dir}'",
                             f"data.cache_dir='{tmp_path / 'cache'}'", "nodes.count=2",
                             f"data.source_url='file://{tmp_path / 'cache'}/corpora/{{file}}'"])
    data = prepare_run_data(cfg)
    assert isinstance(data, CorpusRunData)
    meta = data.node_meta()
    assert meta is not None and meta["url"].endswith(data.corpus.path.name)
    reader = CorpusReader(meta, "node-7")
    held = ShardSet()
    ensure_shards(held, reader, np.array([[1, 0], [1, 2]]))
    assert held.ids() == [1]
    x, y = held.batch_of(np.array([[1, 0]]))
    tokens = np.asarray(data.corpus.tokens)
    start = data.manager.shards[1].start
    assert x[0].tolist() == tokens[start : start + 64].tolist()
    assert y[0].tolist() == tokens[start + 1 : start + 65].tolist()


def test_a_node_local_corpus_must_match_the_coordinators(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for root, text in ((mine, "the same words " * 300), (theirs, "other words " * 300)):
        root.mkdir()
        for i in range(4):
            (root / f"f{i}.txt").write_text(text + str(i))
    cfg = load_config(None, [*TINY_GPT, "data.dataset='text'", f"data.path='{mine}'",
                             f"data.cache_dir='{tmp_path / 'cache'}'", "data.source_url='node-local'",
                             "training.gpt.block_size=16"])
    data = prepare_run_data(cfg)
    meta = data.node_meta()
    assert meta is not None and meta["url"] is None
    CorpusReader(meta, "node-1").read(0)  # the same files: the same fingerprint
    elsewhere = {**meta, "data": {**meta["data"], "path": str(theirs)}}
    with pytest.raises(DataError, match="node-2: corpus fingerprint mismatch"):
        CorpusReader(elsewhere, "node-2")


def test_bad_corpora_are_refused_naming_the_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        Coordinator(load_config(None, [*TINY_GPT, "data.dataset='text'", f"data.path='{empty}'"]))
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError, match="odd.bin"):
        load_corpus(DataConfig(dataset="tokens", path=odd))
    tokens = tmp_path / "train.bin"
    np.arange(0, 600, dtype=np.uint16).tofile(tokens)
    with pytest.raises(DataError, match="vocab"):
        load_corpus(DataConfig(dataset="tokens", path=tokens), vocab_size=300)
    small = tmp_path / "small"
    small.mkdir()
    (small / "a.txt").write_text("x" * 500)
    (small / "b.txt").write_text("y" * 500)
    with pytest.raises(DataError, match="block_size"):
        prepare_run_data(load_config(None, [*TINY_GPT, "data.dataset='text'", f"data.path='{small}'",
                                            f"data.cache_dir='{tmp_path / 'cache'}'", "nodes.count=4",
                                            "training.gpt.block_size=512"]))


def test_the_task_must_fit_the_data_and_model() -> None:
    with pytest.raises(ConfigError, match="gpt"):
        load_config(None, ["training.model='gpt'"])
    with pytest.raises(ConfigError, match="cannot model language"):
        load_config(None, ["data.dataset='stdlib'", "training.model='cnn'"])
    with pytest.raises(ConfigError, match="target_loss"):
        load_config(None, [*TINY_GPT, "data.dataset='stdlib'", "training.target_accuracy=0.5"])
    with pytest.raises(ConfigError, match="multiple of n_head"):
        load_config(None, [*TINY_GPT, "data.dataset='stdlib'", "training.gpt.n_embd=65"])


def test_evaluation_strides_evenly_over_the_held_out_samples() -> None:
    from hypergpu.data.run_data import even_stride

    assert even_stride(6, 4).tolist() == [0, 2, 3, 5]
    assert even_stride(3, 10).tolist() == [0, 1, 2] and even_stride(5, None).tolist() == list(range(5))
