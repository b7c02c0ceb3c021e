"""A round's parameters in pieces, for updates that cover only some of them.

With ``training.link_fragments`` the planner may have a node on a slow
uplink send its progress a run of pieces at a time, in turn
(:meth:`hypergpu.model.layout.ParamLayout.fragment_of`), while a fast link
sends the whole. :class:`Pieces` keeps one running sum per piece, so each
piece's mean is over the updates that sent it, and aggregates a round
whose updates do not all cover the same pieces: each piece by the rule over
the updates that cover it, the pieces none covered left out.
"""

from __future__ import annotations

import math

import numpy as np

from hypergpu.errors import NonFiniteError, UpdateError
from hypergpu.update.aggregate import Accumulator
from hypergpu.update.robust import Aggregate, Rule, aggregate

#: One held update as the pieces see it: its values, weight, and the part it covers (None: all).
Held = tuple[np.ndarray, float, slice | None]


class Pieces:
    """The pieces (contiguous slices, in order, tiling the round's parameters) and their sums."""

    def __init__(self, pieces: tuple[slice, ...]):
        self.pieces = pieces
        self.accs = [Accumulator((p.stop - p.start,)) for p in pieces]
        self.size = pieces[-1].stop

    @property
    def count(self) -> int:
        """How many pieces' worth of updates were folded in (0: none)."""
        return sum(acc.count for acc in self.accs)

    def part(self, start: int, stop: int) -> slice:
        """``[start, stop)`` as the run of pieces it must be; an :class:`UpdateError` if it is none."""
        if start not in {p.start for p in self.pieces} or stop not in {p.stop for p in self.pieces} \
                or not start < stop:
            raise UpdateError(f"update covers [{start}, {stop}), which is no run of this round's fragments")
        return slice(start, stop)

    def covered(self, part: slice | None) -> list[int]:
        """The pieces ``part`` covers (all for None)."""
        return [k for k, p in enumerate(self.pieces) if part is None or part.start <= p.start and p.stop <= part.stop]

    def fold(self, update: np.ndarray, part: slice | None, weight: float) -> float:
        """Add ``update`` (covering ``part``) to the running sums of its pieces; its L2 norm."""
        if not np.isfinite(update).all():  # checked first: no piece may keep part of a refused update
            raise NonFiniteError("update holds NaN or infinity")
        start = 0 if part is None else part.start
        squares = 0.0
        for k in self.covered(part):
            piece = self.pieces[k]
            squares += self.accs[k].add(update[piece.start - start:piece.stop - start], weight=weight) ** 2
        return math.sqrt(squares)

    def aggregate(self, rule: Rule, held: list[Held], ordered: bool) -> tuple[Aggregate, tuple[slice, ...]]:
        """Each piece by ``rule`` over the ``held`` updates that cover it (a clipped mean's bound is
        then each piece's); the result, zero where none did, and the pieces that move. Clipped or
        dropped in any piece marks the update so. ``ordered``: fold each piece's sum again in
        ``held``'s order, not the running sum's arrival order."""
        value = np.zeros(self.size, np.float32)
        moved: list[slice] = []
        clipped: set[int] = set()
        dropped: set[int] = set()
        bounds: list[float] = []
        trimmed = 0
        for k, piece in enumerate(self.pieces):
            covering = [i for i, (_, _, part) in enumerate(held) if k in self.covered(part)]
            if not covering:
                continue
            updates = [_view(held[i], piece) for i in covering]
            weights = [held[i][1] for i in covering]
            streamed = self.accs[k]
            if ordered:
                streamed = Accumulator(streamed.shape)
                for update, weight in zip(updates, weights, strict=True):
                    streamed.add(update, weight=weight)
            out = aggregate(rule, updates, weights, [float(np.linalg.norm(u)) for u in updates], streamed=streamed)
            value[piece] = out.value
            moved.append(piece)
            clipped.update(covering[i] for i in out.clipped)
            dropped.update(covering[i] for i in out.dropped)
            bounds += [out.clip_norm] if out.clip_norm is not None else []
            trimmed = max(trimmed, out.trimmed)
        outcome = Aggregate(value, rule.name, clip_norm=max(bounds) if bounds else None,
                            clipped=tuple(sorted(clipped)), dropped=tuple(sorted(dropped)), trimmed=trimmed)
        return outcome, tuple(moved)


def _view(held: Held, piece: slice) -> np.ndarray:
    """The values ``held`` carries for ``piece`` (which its part covers)."""
    update, _, part = held
    start = 0 if part is None else part.start
    return update[piece.start - start:piece.stop - start]
