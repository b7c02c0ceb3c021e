"""The data of a run as the coordinator holds it, whatever the task.

:func:`prepare_run_data` gives a :class:`RunData`: the training shards (in a
:class:`~hypergpu.data.shards.ShardManager`), the held-out samples the
coordinator evaluates on, the model's input shape and output size, and how
nodes get the shards. Labelled arrays (:class:`ArrayRunData`) travel to
nodes as checksummed shard bytes, unless ``data.source_url = "node-local"``:
then each node prepares the same shards from its own copy of the dataset
(Fashion-MNIST from Debian's package, say) and proves them by checksum. A
token corpus (:class:`CorpusRunData`) never travels: nodes read its shards
themselves by byte range from a URL (the coordinator's prepared file for a
local run, ``data.source_url`` for others) or prepare the same corpus from
their own files and prove it by fingerprint (``"node-local"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.data.corpus import Corpus, TokenShardInfo, TokenWindows, load_corpus, shard_url
from hypergpu.data.prepare import PreparedData, prepare_data
from hypergpu.data.samples import ArraySamples, SampleSource
from hypergpu.data.shards import Shard, ShardManager

#: Held-out blocks a language model is evaluated on when ``data.eval_samples`` is unset.
DEFAULT_LM_EVAL_SAMPLES = 256

#: ``data.source_url`` value: every node prepares the corpus from its own files.
NODE_LOCAL = "node-local"


class RunData(Protocol):
    manager: ShardManager[Any]
    #: held-out samples, and the ones evaluated each time (an even stride)
    test: SampleSource
    eval_indices: np.ndarray
    input_shape: tuple[int, ...]
    num_classes: int  # classes, or the vocabulary of a language model
    bytes_per_token: float

    def shard_sections(self, shard_ids: list[int]) -> dict[str, np.ndarray]:
        """Sections of a message carrying these shards to a node (none when nodes read them)."""
        ...

    def node_meta(self) -> dict[str, Any] | None:
        """What a node needs to read shards itself (None when they are shipped)."""
        ...

    def describe(self) -> dict[str, Any]: ...


def even_stride(total: int, cap: int | None) -> np.ndarray:
    """At most ``cap`` indices spread evenly over ``range(total)`` (all when cap is None)."""
    if cap is None or cap >= total:
        return np.arange(total, dtype=np.int64)
    return np.linspace(0, total - 1, cap).round().astype(np.int64)


@dataclass
class ArrayRunData:
    prepared: PreparedData
    test: ArraySamples
    eval_indices: np.ndarray
    data_config: dict[str, Any]
    seed: int
    node_local: bool = False  # nodes prepare the shards themselves
    bytes_per_token: float = 1.0

    @property
    def manager(self) -> ShardManager[Shard]:
        return self.prepared.manager

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.prepared.input_shape

    @property
    def num_classes(self) -> int:
        return self.prepared.num_classes

    def shard_sections(self, shard_ids: list[int]) -> dict[str, np.ndarray]:
        if self.node_local:
            return {}
        shards = self.manager.shards
        return {f"shard{i}": np.frombuffer(shards[i].to_bytes(), dtype=np.uint8) for i in shard_ids}

    def node_meta(self) -> dict[str, Any] | None:
        if not self.node_local:
            return None
        return {"kind": "arrays", "data": self.data_config, "seed": self.seed,
                "checksums": [s.checksum for s in self.manager.shards]}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.prepared.test.name,
            "train_samples": sum(len(s) for s in self.manager.shards),
            "test_samples": len(self.test),
            "shards": len(self.manager.shards),
            "cache": self.prepared.cache,
        }


@dataclass
class CorpusRunData:
    corpus: Corpus
    manager: ShardManager[TokenShardInfo]
    test: TokenWindows
    eval_indices: np.ndarray
    block_size: int
    url: str | None  # None: nodes prepare the corpus from their own files
    data_config: dict[str, Any]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.block_size,)

    @property
    def num_classes(self) -> int:
        return self.corpus.vocab_size

    @property
    def bytes_per_token(self) -> float:
        """1 for byte-level tokens; a vocabulary's average over the corpus (for bits per byte)."""
        tokens = len(self.corpus.tokens)
        if self.data_config.get("tokenizer") is None or not tokens or not self.corpus.source_bytes:
            return 1.0
        return self.corpus.source_bytes / tokens

    def shard_sections(self, shard_ids: list[int]) -> dict[str, np.ndarray]:
        return {}

    def node_meta(self) -> dict[str, Any] | None:
        return {
            "kind": "corpus",
            "name": self.corpus.name,
            "fingerprint": self.corpus.fingerprint,
            "dtype": self.corpus.dtype.name,
            "vocab_size": self.corpus.vocab_size,
            "block_size": self.block_size,
            "url": self.url,
            "data": self.data_config,
            "shards": [s.as_meta() for s in self.manager.shards],
        }

    def describe(self) -> dict[str, Any]:
        return {**self.corpus.describe(), "shards": len(self.manager.shards),
                "block_size": self.block_size, "eval_blocks": int(self.eval_indices.size)}


def prepare_run_data(config: HyperGPUConfig) -> ArrayRunData | CorpusRunData:
    """The run's shards and held-out samples, prepared (and cached) once."""
    d, t = config.data, config.training
    num_shards = d.shards or config.nodes.count
    if config.task == "lm":
        block = t.gpt.block_size
        corpus = load_corpus(d, vocab_size=t.gpt.vocab_size if t.model == "gpt" else None)
        infos = corpus.shards(num_shards, block)
        test = TokenWindows(corpus.heldout, block)
        cap = d.eval_samples or DEFAULT_LM_EVAL_SAMPLES
        url = None if d.source_url == NODE_LOCAL else shard_url(d.source_url, corpus)
        return CorpusRunData(
            corpus, ShardManager(infos), test, even_stride(len(test), cap), block, url,
            d.model_dump(mode="json"),
        )
    prepared = prepare_data(d, t.seed, num_shards)
    test_samples = ArraySamples(prepared.test.x, prepared.test.y)
    return ArrayRunData(prepared, test_samples, even_stride(len(test_samples), d.eval_samples),
                        d.model_dump(mode="json"), t.seed, node_local=d.source_url == NODE_LOCAL)
