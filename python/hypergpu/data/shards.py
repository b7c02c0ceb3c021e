"""Shards of the training set and which node holds which.

A shard is a fixed, stratified slice of the training set with a checksum
over its indices and data, so a node can prove it received it intact.
:class:`ShardManager` maps nodes to shards: each live node owns one shard
for as long as it lives; shards of nodes that leave are *orphans* and are
lent to the survivors until a new node joins and takes one back.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from hypergpu.data.datasets import Dataset
from hypergpu.errors import DataError, UnknownNodeError


class _Sized(Protocol):
    def __len__(self) -> int: ...


S = TypeVar("S", bound=_Sized)


@dataclass(frozen=True, eq=False)
class Shard:
    """One slice of the training set; ``indices`` point into the full train set."""

    index: int
    indices: np.ndarray  # int64
    x: np.ndarray  # float32
    y: np.ndarray  # int64
    num_classes: int
    dataset: str
    checksum: str = field(default="")

    def __post_init__(self) -> None:
        if not self.checksum:
            object.__setattr__(self, "checksum", self.compute_checksum())

    def __len__(self) -> int:
        return len(self.y)

    def compute_checksum(self) -> str:
        """sha256 over the shard's index, sample indices, samples and labels."""
        h = hashlib.sha256()
        h.update(struct.pack("<qq", self.index, self.num_classes))
        h.update(repr(tuple(self.x.shape)).encode())
        for arr, dtype in ((self.indices, "<i8"), (self.x, "<f4"), (self.y, "<i8")):
            h.update(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        return h.hexdigest()

    def verify(self) -> None:
        """Raise :class:`DataError` unless the content matches ``checksum``."""
        actual = self.compute_checksum()
        if actual != self.checksum:
            raise DataError(
                f"shard {self.index} fails its checksum: expected {self.checksum[:16]}…, "
                f"content hashes to {actual[:16]}… (corrupted or tampered with)"
            )

    def as_dataset(self) -> Dataset:
        return Dataset(self.dataset, self.x, self.y, self.num_classes)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.y, minlength=self.num_classes)

    def to_bytes(self) -> bytes:
        """safetensors bytes carrying the data and, in the header, the checksum."""
        meta = {
            "index": str(self.index),
            "num_classes": str(self.num_classes),
            "dataset": self.dataset,
            "checksum": self.checksum,
        }
        tensors = {"indices": self.indices, "x": self.x, "y": self.y}
        return st_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=meta)

    @classmethod
    def from_bytes(cls, data: bytes) -> Shard:
        """Inverse of :meth:`to_bytes`; refuses bytes whose content fails the checksum."""
        meta = safetensors_metadata(data)
        try:
            tensors = st_load(bytes(data))
            shard = cls(
                index=int(meta["index"]),
                indices=tensors["indices"],
                x=tensors["x"],
                y=tensors["y"],
                num_classes=int(meta["num_classes"]),
                dataset=meta["dataset"],
                checksum=meta["checksum"],
            )
        except DataError:
            raise
        except Exception as exc:  # safetensors raises its own error types
            raise DataError(f"shard bytes are malformed: {type(exc).__name__}: {exc}") from None
        if shard.x.dtype != np.float32 or shard.y.dtype != np.int64 or shard.indices.dtype != np.int64:
            raise DataError("shard bytes hold tensors of the wrong element type")
        shard.verify()
        return shard

    @staticmethod
    def concat(shards: Sequence[Shard]) -> Shard:
        """One shard holding several (for a node that was lent orphans)."""
        if not shards:
            raise DataError("cannot concatenate zero shards")
        if len(shards) == 1:
            return shards[0]
        return Shard(
            index=shards[0].index,
            indices=np.concatenate([s.indices for s in shards]),
            x=np.concatenate([s.x for s in shards]),
            y=np.concatenate([s.y for s in shards]),
            num_classes=shards[0].num_classes,
            dataset=shards[0].dataset,
        )


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (8-byte length + JSON header)."""
    view = memoryview(data)
    if len(view) < 8:
        raise DataError("safetensors bytes are truncated (no header length)")
    (length,) = struct.unpack("<Q", view[:8])
    if length > len(view) - 8:
        raise DataError(f"safetensors header claims {length} bytes but only {len(view) - 8} follow")
    try:
        header = json.loads(bytes(view[8 : 8 + length]))
        meta = header["__metadata__"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"safetensors header is malformed: {exc}") from None
    if not isinstance(meta, dict):
        raise DataError("safetensors metadata is not a mapping")
    return meta


def partition(train: Dataset, num_shards: int, seed: int) -> list[Shard]:
    """Split ``train`` into ``num_shards`` stratified shards, every sample exactly once.

    Samples are shuffled within each class (seeded), laid out class after
    class, and dealt round-robin, so shard sizes differ by at most one and
    each class is spread over the shards as evenly as it can be.
    """
    if num_shards < 1:
        raise DataError(f"num_shards must be >= 1, got {num_shards}")
    if num_shards > len(train):
        raise DataError(f"cannot cut {len(train)} samples into {num_shards} non-empty shards")
    rng = np.random.default_rng(seed)
    order = np.concatenate(
        [rng.permutation(np.flatnonzero(train.y == c)) for c in range(train.num_classes)]
    )
    shards = []
    for k in range(num_shards):
        idx = np.sort(order[k::num_shards]).astype(np.int64)
        shards.append(
            Shard(k, idx, train.x[idx], train.y[idx], train.num_classes, train.name)
        )
    return shards


class ShardManager(Generic[S]):
    """Which node holds which shard; reassigns only orphaned shards.

    A shard is anything with a length in samples: labelled arrays
    (:class:`Shard`) or a corpus's token ranges
    (:class:`~hypergpu.data.corpus.TokenShardInfo`).
    """

    def __init__(self, shards: Sequence[S]):
        if not shards:
            raise DataError("a ShardManager needs at least one shard")
        self.shards: list[S] = list(shards)
        self._owner: dict[int, int] = {}  # node -> its own shard
        self._lent: dict[int, list[int]] = {}  # node -> orphans it holds for now

    @classmethod
    def from_dataset(cls, train: Dataset, num_shards: int, seed: int) -> ShardManager[Shard]:
        return ShardManager(partition(train, num_shards, seed))

    # --- queries ------------------------------------------------------------

    @property
    def nodes(self) -> list[int]:
        return sorted(self._owner)

    def assignment(self) -> dict[int, list[int]]:
        """node → shard indices it holds (its own first)."""
        return {n: [self._owner[n], *self._lent.get(n, [])] for n in self.nodes}

    def shard_ids_of(self, node: int) -> list[int]:
        if node not in self._owner:
            raise UnknownNodeError(f"node {node} holds no shard")
        return [self._owner[node], *self._lent.get(node, [])]

    def shards_of(self, node: int) -> list[S]:
        return [self.shards[i] for i in self.shard_ids_of(node)]

    def orphans(self) -> list[int]:
        """Shards no live node owns (lent ones included)."""
        owned = set(self._owner.values())
        return [i for i in range(len(self.shards)) if i not in owned]

    # --- changes ------------------------------------------------------------

    def assign(self, nodes: Iterable[int]) -> dict[int, list[int]]:
        """Let each of ``nodes`` join in order; returns the resulting assignment."""
        for node in nodes:
            self.join(node)
        return self.assignment()

    def join(self, node: int) -> list[int]:
        """Give ``node`` a shard of its own; returns the shard indices it now holds.

        A node that already holds shards keeps them. A new node takes the
        shard of its own number if free, else the lowest free shard, else an orphan lent to the node holding the most.
        When every shard is owned the node gets nothing (an empty list); the
        caller decides whether to re-partition.
        """
        if node in self._owner:
            return self.shard_ids_of(node)
        owned = set(self._owner.values())
        lent = {i for held in self._lent.values() for i in held}
        free = [i for i in range(len(self.shards)) if i not in owned and i not in lent]
        if free:
            # Node i takes shard i when it is free, so who holds what does not hang on who
            # connected first (a deterministic run, a resumed one, must deal the same work).
            shard = node if node in free else free[0]
        else:
            donors = [n for n in self.nodes if self._lent.get(n)]
            if not donors:
                return []
            donor = max(donors, key=lambda n: (len(self._lent[n]), -n))
            shard = self._lent[donor].pop()
            if not self._lent[donor]:
                del self._lent[donor]
        self._owner[node] = shard
        return [shard]

    def leave(self, node: int) -> dict[int, list[int]]:
        """Remove ``node``; lend its shards to the survivors with the fewest.

        Returns survivor → shard indices it newly received. With no
        survivors the shards just become free.
        """
        if node not in self._owner:
            raise UnknownNodeError(f"node {node} is not registered with the shard manager")
        orphaned = [self._owner.pop(node), *self._lent.pop(node, [])]
        moved: dict[int, list[int]] = {}
        for shard in orphaned:
            if not self._owner:
                break
            taker = min(self.nodes, key=lambda n: (1 + len(self._lent.get(n, [])), n))
            self._lent.setdefault(taker, []).append(shard)
            moved.setdefault(taker, []).append(shard)
        return moved
