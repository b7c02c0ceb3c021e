"""Load, split and shard a dataset once, caching the prepared shards on disk.

The cache key is a hash of the data config, the seed and the shard count
(:func:`hypergpu.config.data_hash`). Each entry also records a fingerprint
of the source files (size and mtime), so editing a dataset file invalidates
the entry even though the config did not change.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from safetensors.numpy import load_file, save_file

from hypergpu.config.schema import DataConfig, data_hash
from hypergpu.data.datasets import Dataset, load_dataset, split_train_test
from hypergpu.data.shards import Shard, ShardManager, partition
from hypergpu.errors import DataError

log = logging.getLogger(__name__)

CacheOutcome = Literal["hit", "miss", "invalidated", "disabled"]
_FORMAT = 1


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    invalidations: int = 0


@dataclass
class PreparedData:
    """What the coordinator needs: the shards (in a manager) and the test set."""

    manager: ShardManager
    test: Dataset
    key: str
    cache: CacheOutcome

    @property
    def shards(self) -> list[Shard]:
        return self.manager.shards

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.test.input_shape

    @property
    def num_classes(self) -> int:
        return self.test.num_classes


@dataclass
class ShardCache:
    """Prepared shards under ``root/<key>/``; counts hits, misses, invalidations."""

    root: Path
    stats: CacheStats = field(default_factory=CacheStats)

    def entry(self, key: str) -> Path:
        return Path(self.root) / key

    def load(self, key: str, fingerprint: str) -> tuple[list[Shard], Dataset] | None:
        """The cached shards and test set, or ``None`` (counted as miss/invalidation)."""
        entry = self.entry(key)
        manifest_path = entry / "manifest.json"
        if not manifest_path.exists():
            self.stats.misses += 1
            return None
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != _FORMAT or manifest.get("fingerprint") != fingerprint:
                raise DataError("source files or cache format changed")
            shards = []
            for i, checksum in enumerate(manifest["checksums"]):
                t = load_file(entry / f"shard-{i}.safetensors")
                shard = Shard(i, t["indices"], t["x"], t["y"], manifest["num_classes"],
                              manifest["dataset"], checksum)
                shard.verify()
                shards.append(shard)
            t = load_file(entry / "test.safetensors")
            test = Dataset(manifest["dataset"], t["x"], t["y"], manifest["num_classes"])
        except Exception as exc:  # any unreadable or stale entry is rebuilt
            log.info("shard cache entry %s invalidated: %s", key[:12], exc)
            self.stats.invalidations += 1
            shutil.rmtree(entry, ignore_errors=True)
            return None
        self.stats.hits += 1
        return shards, test

    def store(self, key: str, fingerprint: str, shards: list[Shard], test: Dataset) -> None:
        """Write the entry into a temp dir and rename it into place (atomic)."""
        Path(self.root).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=self.root))
        try:
            for s in shards:
                save_file({"indices": s.indices, "x": s.x, "y": s.y}, tmp / f"shard-{s.index}.safetensors")
            save_file({"x": test.x, "y": test.y}, tmp / "test.safetensors")
            manifest = {
                "format": _FORMAT,
                "fingerprint": fingerprint,
                "dataset": test.name,
                "num_classes": test.num_classes,
                "checksums": [s.checksum for s in shards],
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest))
            shutil.rmtree(self.entry(key), ignore_errors=True)
            os.replace(tmp, self.entry(key))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def source_fingerprint(cfg: DataConfig) -> str:
    """Size and mtime of every file under ``cfg.path`` (empty for built-in data)."""
    if cfg.path is None:
        return ""
    root = Path(cfg.path)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return json.dumps([(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])


def prepare_data(
    cfg: DataConfig,
    seed: int,
    num_shards: int,
    cache: ShardCache | None | Literal["auto"] = "auto",
) -> PreparedData:
    """Split ``cfg``'s dataset into a test set and ``num_shards`` stratified shards.

    ``cache="auto"`` uses ``cfg.cache_dir`` (none if unset); pass a
    :class:`ShardCache` to share its statistics, or ``None`` to skip caching.
    """
    if cache == "auto":
        cache = ShardCache(Path(cfg.cache_dir)) if cfg.cache_dir is not None else None
    key = data_hash(cfg, seed, num_shards)
    fingerprint = source_fingerprint(cfg)
    outcome: CacheOutcome = "disabled"
    if cache is not None:
        before = cache.stats.invalidations
        cached = cache.load(key, fingerprint)
        if cached is not None:
            shards, test = cached
            return PreparedData(ShardManager(shards), test, key, "hit")
        outcome = "invalidated" if cache.stats.invalidations > before else "miss"
    full = load_dataset(cfg, seed)
    train, test = split_train_test(full, cfg.test_fraction, seed)
    shards = partition(train, num_shards, seed)
    if cache is not None:
        cache.store(key, fingerprint, shards, test)
    return PreparedData(ShardManager(shards), test, key, outcome)

