"""What a round's accepted updates become: the configured aggregation rule.

``coordinator.aggregation`` names the rule (fields in
:mod:`hypergpu.config.aggregation`); :func:`aggregate` applies it with the
Rust kernels of :mod:`hypergpu.update.aggregate`. For a round of ``n``
updates of ``P`` float32 values each:

================  =====================================  ========================  =========================
rule              what must be held                      weights                   resists
================  =====================================  ========================  =========================
``mean``          streamed: the Accumulator's P floats   samples × staleness       nothing
``clipped-mean``  the n updates (every norm is needed    samples × staleness       any update's pull beyond
                  before the first one is clipped)                                 k × the median norm
``trimmed-mean``  the n updates (sorted per coordinate,  none: one vote each       ⌊trim·n⌋ updates
                  a block at a time)
``median``        the n updates                          none: one vote each       fewer than n/2
``krum``          the n updates and n × n distances      samples × staleness,      f updates, n ≥ 2f + 3
                  (float64)                              over the n − f selected
================  =====================================  ========================  =========================

Every rule also writes one P-float result. Weights mean what they mean in
the mean (shares of the work done, shrunk by staleness) wherever updates are
averaged; the order statistics take none, since a weight there would let one
node outvote the others — exactly what they exist to prevent.

``clipped-mean`` clips against the round's own median norm rather than
streaming against the previous round's: the round holds its updates anyway
(for its cosine with the result, and then its effect scoring), and a previous round's
reference is missing in the first round and wrong whenever the honest scale
moves (the planner changes local steps or batch sizes). The unclipped
running sum is kept as well, so a round where no update is over the bound —
the honest case — costs no second pass: it is the same mean, bit for bit.

With fewer updates than a rule needs, it does what the round allows: Krum
lowers ``f`` to ``(n - 3) // 2`` (all updates kept when that is 0), and
trimming ``⌊trim·n⌋`` values may trim none.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np

from hypergpu.config.aggregation import AggregationRule
from hypergpu.config.schema import CoordinatorConfig
from hypergpu.errors import InvalidArgumentError
from hypergpu.update.aggregate import Accumulator, krum, median, trimmed_mean, weighted_mean

__all__ = ["RULES", "Aggregate", "Rule", "aggregate"]

#: Every rule :func:`aggregate` knows, by its configuration name.
RULES: tuple[str, ...] = get_args(AggregationRule)


@dataclass(frozen=True)
class Rule:
    """An aggregation rule and its parameters (see the module's table)."""

    name: AggregationRule = "clipped-mean"
    clip_factor: float = 1.5  # clipped-mean: the bound is this many median norms
    trim_fraction: float = 0.2  # trimmed-mean: cut from each end of every coordinate
    krum_f: int = 2  # krum: hostile updates tolerated (lowered to what a round allows)

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise InvalidArgumentError(f"unknown aggregation {self.name!r}; expected one of {', '.join(RULES)}")
        if not (0 < float(self.clip_factor) < float("inf")):
            raise InvalidArgumentError(f"clip_factor must be a positive number, got {self.clip_factor}")
        if not 0 <= float(self.trim_fraction) < 0.5:
            raise InvalidArgumentError(f"trim_fraction must be in [0, 0.5), got {self.trim_fraction}")
        try:
            f = operator.index(self.krum_f)
        except TypeError:
            raise InvalidArgumentError(f"krum_f must be an integer, got {self.krum_f!r}") from None
        if f < 0:
            raise InvalidArgumentError(f"krum_f must be >= 0, got {f}")

    @classmethod
    def of(cls, settings: CoordinatorConfig) -> Rule:
        """The rule ``[coordinator]`` configures."""
        return cls(settings.aggregation, settings.clip_factor, settings.trim_fraction, settings.krum_f)

    @property
    def streams(self) -> bool:
        """Whether the running weighted sum is all the rule needs (no update has to be held)."""
        return self.name == "mean"


@dataclass(frozen=True)
class Aggregate:
    """What :func:`aggregate` made of a round's updates. Indices are positions in the list given."""

    value: np.ndarray
    rule: str
    clip_norm: float | None = None  # clipped-mean: the bound every update was held to
    clipped: tuple[int, ...] = ()  # scaled down to clip_norm
    dropped: tuple[int, ...] = ()  # left out entirely (Krum's n - f selection)
    trimmed: int = 0  # values cut from each end of every coordinate (trimmed-mean, median)


def aggregate(rule: Rule, updates: Sequence[np.ndarray], weights: Sequence[float],
              norms: Sequence[float], streamed: Accumulator | None = None) -> Aggregate:
    """Apply ``rule`` to ``updates`` (finite, of one shape) with their ``weights`` and L2 ``norms``.

    ``streamed``, when given, holds exactly these updates with these weights, in this
    order: the rules whose result is their weighted mean read it from there. The ``mean``
    rule needs nothing else (``updates`` may then be empty)."""
    if rule.name == "mean":
        return Aggregate(_mean(updates, weights, streamed), rule.name)
    n = len(updates)
    if n == 0:
        raise InvalidArgumentError(f"{rule.name} needs the round's updates; none were given")
    if len(weights) != n or len(norms) != n:
        raise InvalidArgumentError(f"{n} updates, {len(weights)} weights and {len(norms)} norms")
    if rule.name == "clipped-mean":
        return _clipped_mean(rule, updates, weights, np.asarray(norms, dtype=np.float64), streamed)
    if rule.name == "trimmed-mean":
        k = int(np.floor(rule.trim_fraction * n))
        return Aggregate(trimmed_mean(updates, rule.trim_fraction).value, rule.name, trimmed=k)
    if rule.name == "median":
        return Aggregate(median(updates).value, rule.name, trimmed=(n - 1) // 2)
    return _krum(rule, updates, weights, streamed)


def _mean(updates: Sequence[np.ndarray], weights: Sequence[float], streamed: Accumulator | None) -> np.ndarray:
    if streamed is not None:
        return streamed.finalize()
    return weighted_mean(updates, weights).mean


def _clipped_mean(rule: Rule, updates: Sequence[np.ndarray], weights: Sequence[float],
                  norms: np.ndarray, streamed: Accumulator | None) -> Aggregate:
    bound = rule.clip_factor * float(np.median(norms))
    over = tuple(int(i) for i in np.flatnonzero(norms > bound))
    if not over:
        return Aggregate(_mean(updates, weights, streamed), rule.name, clip_norm=bound)
    if bound == 0.0:
        # Most updates are exactly zero: every other one is clipped to nothing.
        return Aggregate(np.zeros_like(updates[0], dtype=np.float32), rule.name, clip_norm=0.0, clipped=over)
    result = weighted_mean(updates, weights, clip_norm=bound)
    return Aggregate(result.mean, rule.name, clip_norm=bound, clipped=result.clipped)


def _krum(rule: Rule, updates: Sequence[np.ndarray], weights: Sequence[float],
          streamed: Accumulator | None) -> Aggregate:
    n = len(updates)
    f = min(rule.krum_f, max(0, (n - 3) // 2))
    if f == 0:
        return Aggregate(_mean(updates, weights, streamed), rule.name)
    scores = krum(updates, f=f).scores
    order = np.argsort(scores, kind="stable")
    kept = sorted(int(i) for i in order[: n - f])
    result = weighted_mean([updates[i] for i in kept], [weights[i] for i in kept]).mean
    return Aggregate(result, rule.name, dropped=tuple(sorted(int(i) for i in order[n - f:])))
