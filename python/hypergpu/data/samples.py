"""What a trainer or an evaluator reads samples from, whatever the task.

A :class:`SampleSource` has a length and gives a batch of ``(inputs,
targets)`` tensors for any sample indices. Labelled arrays
(:class:`ArraySamples`) and a token stream cut into windows
(:class:`~hypergpu.data.corpus.TokenWindows`) both are one, so training and
evaluation never ask which task they serve. A :class:`ShardSet` joins the
shards a node holds under their run-wide ids, so the coordinator can name
the exact samples a node is to train on as ``(shard, index)`` pairs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from hypergpu.errors import DataError


@runtime_checkable
class SampleSource(Protocol):
    def __len__(self) -> int: ...

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the samples ``idx`` (CPU tensors)."""
        ...


class ArraySamples:
    """Samples held as arrays: ``x`` (N, ...) and integer labels ``y`` (N,)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        if len(x) != len(y):
            raise DataError(f"{len(x)} samples but {len(y)} labels")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.y)

    def batch(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        idx = np.asarray(idx)
        return torch.from_numpy(np.ascontiguousarray(self.x[idx])), torch.from_numpy(
            np.ascontiguousarray(self.y[idx])
        )


class ShardSet:
    """The shards a node holds, by run-wide shard id."""

    def __init__(self, shards: Mapping[int, SampleSource] | None = None):
        self._shards: dict[int, SampleSource] = dict(shards or {})

    def add(self, shard_id: int, source: SampleSource) -> None:
        self._shards[shard_id] = source

    def ids(self) -> list[int]:
        return sorted(self._shards)

    def __contains__(self, shard_id: object) -> bool:
        return shard_id in self._shards

    def __len__(self) -> int:
        return sum(len(s) for s in self._shards.values())

    def batch_of(self, pairs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of ``(shard, index)`` rows, in their order."""
        pairs = np.asarray(pairs)
        if pairs.ndim != 2 or pairs.shape[1] != 2:
            raise DataError(f"work must be (n, 2) rows of (shard, index), got shape {pairs.shape}")
        xs, ys, order = [], [], []
        for shard_id in np.unique(pairs[:, 0]):
            source = self._shards.get(int(shard_id))
            if source is None:
                raise DataError(f"work names shard {int(shard_id)}, which this node does not hold")
            rows = np.flatnonzero(pairs[:, 0] == shard_id)
            idx = pairs[rows, 1]
            if idx.size and (idx.min() < 0 or idx.max() >= len(source)):
                raise DataError(f"work names samples outside shard {int(shard_id)} (size {len(source)})")
            x, y = source.batch(idx)
            xs.append(x)
            ys.append(y)
            order.append(rows)
        # Put the rows back in the order the coordinator shuffled them into.
        inverse = np.argsort(np.concatenate(order), kind="stable")
        perm = torch.from_numpy(inverse)
        return torch.cat(xs)[perm], torch.cat(ys)[perm]

    def all_pairs(self) -> np.ndarray:
        """Every ``(shard, index)`` this node holds (for training on its own)."""
        parts = [
            np.stack([np.full(len(s), i, dtype=np.int64), np.arange(len(s), dtype=np.int64)], axis=1)
            for i, s in sorted(self._shards.items())
        ]
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
