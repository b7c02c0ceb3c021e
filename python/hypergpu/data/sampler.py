"""Which samples each node trains on this round: shards follow the work.

A shard belongs to the run, not to a node. :class:`WorkSampler` walks each
epoch through every shard in a seeded order and hands each round's
participants exactly as many ``(shard, index)`` samples as the planner gave
them work. Where shards travel to nodes, locality pays: a node's samples
come first from the shards it already holds, then from shards no
participant holds (those of nodes left out, too slow or gone), then from
any shard with samples left. Where nodes read any shard themselves (a
corpus), a node's samples are drawn across all shards in proportion to
what each has left, so every node's round sees the whole corpus rather
than one contiguous stretch of it (contiguous shards are not alike). Samples of an update that is never applied
are given back and handed out again, so every epoch covers the whole
training set whatever the planner decides. :meth:`WorkSampler.coverage`
says how much of each epoch was trained on. Sans-IO and clock-free.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hypergpu.errors import DataError


@dataclass(frozen=True)
class Drawn:
    """Samples handed to one node for one round."""

    pairs: np.ndarray  # (n, 2) int64 rows of (shard, index), shuffled
    epochs: np.ndarray  # (n,) the epoch each row belongs to

    @property
    def shards(self) -> list[int]:
        return sorted({int(s) for s in np.unique(self.pairs[:, 0])}) if len(self.pairs) else []


@dataclass(frozen=True)
class EpochCoverage:
    epoch: int
    samples: int  # in the training set
    trained: int  # distinct handouts of this epoch that went into an applied update
    complete: bool  # nothing of it is still out or waiting to be handed out again

    @property
    def fraction(self) -> float:
        return self.trained / self.samples if self.samples else 0.0


class _Pool:
    """One shard's samples still to hand out: given-back rows first, then the epoch's order."""

    def __init__(self, size: int):
        self.size = size
        self.order = np.zeros(0, dtype=np.int64)
        self.cursor = 0
        self.returned: list[tuple[int, np.ndarray]] = []  # (epoch, indices)

    def remaining(self) -> int:
        return len(self.order) - self.cursor + sum(len(i) for _, i in self.returned)

    def take(self, count: int, epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        idx, eps = [], []
        while count > 0 and self.returned:
            ep, rows = self.returned[0]
            part, rest = rows[:count], rows[count:]
            if len(rest):
                self.returned[0] = (ep, rest)
            else:
                self.returned.pop(0)
            idx.append(part)
            eps.append(np.full(len(part), ep, dtype=np.int64))
            count -= len(part)
        if count > 0:
            part = self.order[self.cursor : self.cursor + count]
            self.cursor += len(part)
            idx.append(part)
            eps.append(np.full(len(part), epoch, dtype=np.int64))
        return idx, eps


class WorkSampler:
    """Hands out every epoch's samples across the shards to whoever takes part."""

    def __init__(self, shard_sizes: Sequence[int], seed: int):
        if not shard_sizes or min(shard_sizes) < 1:
            raise DataError(f"a work sampler needs non-empty shards, got sizes {list(shard_sizes)}")
        self.sizes = [int(s) for s in shard_sizes]
        self.total = sum(self.sizes)
        self.seed = seed
        self.epoch = -1
        self._pools = [_Pool(s) for s in self.sizes]
        self._out: dict[Hashable, Drawn] = {}
        self._trained: dict[int, int] = {}
        self._rng = np.random.default_rng(seed)
        self._new_epoch()

    # --- handing out ------------------------------------------------------------

    def take(self, key: Hashable, count: int, *, prefer: Iterable[int] = (), avoid: Iterable[int] = (),
             mix: bool = False) -> Drawn:
        """``count`` samples for ``key`` (e.g. ``(round, node)``): from ``prefer``'s shards
        first, then shards outside ``avoid`` (held by other participants), then any;
        with ``mix``, from every shard in proportion to what it has left."""
        if count < 1:
            raise DataError(f"cannot hand out {count} samples")
        if key in self._out:
            raise DataError(f"samples for {key!r} were already handed out")
        prefer = [s for s in prefer if 0 <= s < len(self._pools)]
        avoid_set = set(avoid) - set(prefer)
        idx: list[np.ndarray] = []
        shard_of: list[np.ndarray] = []
        eps: list[np.ndarray] = []
        while count > 0:
            if not any(p.remaining() for p in self._pools):
                self._new_epoch()
            for shard, want in self._shares(count, prefer, avoid_set, mix):
                if count == 0:
                    break
                got, got_eps = self._pools[shard].take(min(want, count), self.epoch)
                for part, ep in zip(got, got_eps):
                    idx.append(part)
                    eps.append(ep)
                    shard_of.append(np.full(len(part), shard, dtype=np.int64))
                    count -= len(part)
        pairs = np.stack([np.concatenate(shard_of), np.concatenate(idx)], axis=1)
        # Shuffle across shards so every step mixes them (the row order is the training order).
        perm = self._rng.permutation(len(pairs))
        drawn = Drawn(pairs[perm], np.concatenate(eps)[perm])
        self._out[key] = drawn
        return drawn

    def _shares(self, count: int, prefer: list[int], avoid: set[int], mix: bool) -> list[tuple[int, int]]:
        """(shard, how many at most) in the order to take them this epoch."""
        if mix:
            left = np.array([p.remaining() for p in self._pools], dtype=np.int64)
            shares = self._rng.multivariate_hypergeometric(left, min(count, int(left.sum())))
            return [(s, int(n)) for s, n in enumerate(shares) if n]
        return [(s, count) for s in self._visit_order(prefer, avoid)]

    def _visit_order(self, prefer: list[int], avoid: set[int]) -> list[int]:
        rest = [s for s in range(len(self._pools)) if s not in prefer]
        free = sorted((s for s in rest if s not in avoid), key=lambda s: -self._pools[s].remaining())
        held = sorted((s for s in rest if s in avoid), key=lambda s: -self._pools[s].remaining())
        return [*prefer, *free, *held]

    def _new_epoch(self) -> None:
        self.epoch += 1
        for pool in self._pools:
            pool.order = self._rng.permutation(pool.size).astype(np.int64)
            pool.cursor = 0

    # --- settling ---------------------------------------------------------------

    def outstanding(self, key: Hashable) -> bool:
        return key in self._out

    def confirm(self, key: Hashable) -> int:
        """The samples handed to ``key`` went into an applied update; returns how many."""
        drawn = self._out.pop(key, None)
        if drawn is None:
            return 0
        for ep, n in zip(*np.unique(drawn.epochs, return_counts=True)):
            self._trained[int(ep)] = self._trained.get(int(ep), 0) + int(n)
        return len(drawn.pairs)

    def give_back(self, key: Hashable) -> int:
        """The samples handed to ``key`` were not trained into the model: hand them out again."""
        drawn = self._out.pop(key, None)
        if drawn is None:
            return 0
        for shard in np.unique(drawn.pairs[:, 0]):
            rows = drawn.pairs[:, 0] == shard
            for ep in np.unique(drawn.epochs[rows]):
                sel = rows & (drawn.epochs == ep)
                self._pools[int(shard)].returned.append((int(ep), drawn.pairs[sel, 1]))
        return len(drawn.pairs)

    # --- reporting --------------------------------------------------------------

    def coverage(self) -> list[EpochCoverage]:
        """How much of each epoch so far was trained on."""
        open_epochs = {int(e) for d in self._out.values() for e in np.unique(d.epochs)}
        open_epochs |= {ep for p in self._pools for ep, _ in p.returned}
        return [
            EpochCoverage(
                ep, self.total, self._trained.get(ep, 0),
                complete=ep < self.epoch and ep not in open_epochs,
            )
            for ep in range(self.epoch + 1)
        ]
