"""Datasets, the train/test split, shards and their on-disk cache.

The coordinator calls :func:`prepare_run_data` once: labelled arrays are
cut into shards shipped to nodes as checksummed bytes
(:meth:`Shard.to_bytes` / :meth:`Shard.from_bytes`); a token corpus is cut
into byte ranges nodes read themselves (:mod:`hypergpu.data.corpus`).
:class:`WorkSampler` decides which samples each node trains on per round.
"""

from hypergpu.data.datasets import (
    Dataset,
    load_cifar10,
    load_dataset,
    load_digits,
    load_idx_dir,
    make_synthetic,
    read_cifar_batch,
    read_idx,
    split_train_test,
)
from hypergpu.data.corpus import Corpus, TokenShardInfo, TokenWindows, load_corpus
from hypergpu.data.prepare import CacheStats, PreparedData, ShardCache, prepare_data
from hypergpu.data.run_data import ArrayRunData, CorpusRunData, prepare_run_data
from hypergpu.data.sampler import WorkSampler
from hypergpu.data.samples import ArraySamples, SampleSource, ShardSet
from hypergpu.data.shards import Shard, ShardManager, partition

__all__ = [
    "ArrayRunData",
    "ArraySamples",
    "CacheStats",
    "Corpus",
    "CorpusRunData",
    "Dataset",
    "PreparedData",
    "SampleSource",
    "Shard",
    "ShardCache",
    "ShardManager",
    "ShardSet",
    "TokenShardInfo",
    "TokenWindows",
    "WorkSampler",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_corpus",
    "load_idx_dir",
    "make_synthetic",
    "partition",
    "prepare_data",
    "prepare_run_data",
    "read_cifar_batch",
    "read_idx",
    "split_train_test",
]
