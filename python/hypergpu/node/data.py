"""The shards a node holds: shipped to it, or read by it from where the data lives.

Labelled arrays arrive as checksummed shard bytes in the welcome and with
the work that lends them — or, with ``data.source_url = "node-local"``, the
node prepares the same shards from its own copy of the dataset and checks
each against the coordinator's checksum. A corpus's shards never travel over the link: the
welcome lists each shard's token range and checksum, and the node reads a
shard the first time a round's work names it — by byte range from the URL
the coordinator gave (``file://`` on a shared filesystem, or http(s)) or,
without one, from the same corpus prepared from the node's own files,
whose fingerprint must match the coordinator's.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from typing import Protocol

from hypergpu.config.schema import DataConfig
from hypergpu.data.corpus import Corpus, TokenShardInfo, TokenWindows, check_fingerprint, load_corpus, read_shard
from hypergpu.data.prepare import prepare_data
from hypergpu.data.samples import ArraySamples, SampleSource, ShardSet
from hypergpu.data.shards import Shard
from hypergpu.errors import DataError, HyperGPUError

log = logging.getLogger("hypergpu.node")


class ShardReader(Protocol):
    def read(self, shard_id: int) -> SampleSource: ...


def reader_for(meta: dict[str, Any], who: str) -> ShardReader:
    """The reader a welcome's data description calls for."""
    if meta.get("kind") == "arrays":
        return ArrayReader(meta, who)
    return CorpusReader(meta, who)


class ArrayReader:
    """Prepares a labelled dataset's shards from this machine's copy, checked by checksum."""

    def __init__(self, meta: dict[str, Any], who: str):
        try:
            cfg = DataConfig.model_validate(meta["data"])
            checksums = [str(c) for c in meta["checksums"]]
            seed = int(meta["seed"])
        except (KeyError, TypeError, ValueError, HyperGPUError) as exc:
            raise DataError(f"{who}: the welcome's data description is malformed: {exc}") from None
        shards = prepare_data(cfg, seed, len(checksums)).shards
        for shard, expected in zip(shards, checksums):
            if shard.checksum != expected:
                raise DataError(
                    f"{who}: shard {shard.index} of {cfg.dataset} prepared here hashes to {shard.checksum[:12]}…, "
                    f"the coordinator's to {expected[:12]}… (different files or versions)"
                )
        self.shards: list[Shard] = shards
        self.who = who

    def read(self, shard_id: int) -> ArraySamples:
        if not 0 <= shard_id < len(self.shards):
            raise DataError(f"{self.who}: work names shard {shard_id}, which the dataset does not have")
        shard = self.shards[shard_id]
        return ArraySamples(shard.x, shard.y)


class CorpusReader:
    """Reads a corpus's shards on demand, as the welcome describes them."""

    def __init__(self, meta: dict[str, Any], who: str):
        try:
            self.block_size = int(meta["block_size"])
            self.dtype = np.dtype(str(meta["dtype"]))
            self.fingerprint = str(meta["fingerprint"])
            self.url: str | None = meta.get("url")
            self.infos = {info.index: info for info in (TokenShardInfo.from_meta(m) for m in meta["shards"])}
            data = meta.get("data")
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{who}: the welcome's corpus description is malformed: {exc}") from None
        self.who = who
        self._local: Corpus | None = None
        if self.url is None:
            # No shared copy: prepare the same corpus from this machine's files and prove it.
            cfg = DataConfig.model_validate(data or {})
            self._local = load_corpus(cfg, vocab_size=int(meta["vocab_size"]))
            check_fingerprint(self.fingerprint, self._local, who)

    def read(self, shard_id: int) -> TokenWindows:
        info = self.infos.get(shard_id)
        if info is None:
            raise DataError(f"{self.who}: work names shard {shard_id}, which the corpus does not have")
        if self._local is not None:
            tokens = np.asarray(self._local.tokens[info.start : info.stop])
            url = self._local.path.resolve().as_uri()
        else:
            assert self.url is not None
            tokens, url = read_shard(self.url, info, self.dtype), self.url
        log.debug("%s: read corpus shard %d (%d tokens) from %s", self.who, shard_id, len(tokens), url)
        return TokenWindows(tokens, self.block_size)


def ensure_shards(held: ShardSet, reader: ShardReader | None, work: np.ndarray | None) -> None:
    """Make sure ``held`` has every shard ``work`` names (reading shards as needed)."""
    if work is None or reader is None:
        return
    for shard_id in np.unique(work[:, 0]):
        if int(shard_id) not in held:
            held.add(int(shard_id), reader.read(int(shard_id)))
