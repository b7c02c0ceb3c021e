"""What a round's accepted updates become: the configured aggregation rule.

``coordinator.aggregation`` names the rule (fields in
:mod:`hypergpu.config.aggregation`); :func:`aggregate` applies it with the
Rust kernels of :mod:`hypergpu.update.aggregate`. For a round of ``n``
updates of ``P`` float32 values each:

================  =====================================  ========================  =========================
rule              what must be held                      weights                   resists
================  =====================================  ========================  =========================
``mean``          streamed: the Accumulator's P floats   samples × staleness       nothing
``clipped-mean``  the n updates (the median and every    samples × staleness       any update's pull beyond
                  distance come before the first clip)                             k × the median distance
                                                                                   from the median
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

``clipped-mean`` is centred clipping: with ``m`` the round's coordinate-wise
median, the result is ``m + Σ wᵢ clip(uᵢ − m, τ) / Σ wᵢ`` where ``τ`` is
``clip_factor`` × the median of the distances ``‖uᵢ − m‖``. Clipping each
update's own norm to k × the median norm (the rule's first form) bounded how
far a hostile update pulls, not where: an update of one sign in every
coordinate, held to 1.5 median norms, still wrecked the model — one ±5.0
poisoner of four (two honest nodes and one at noise level) took digits' held-out
loss to 25 in round 1 and the run diverged, its honest updates growing with
the damage and the bound with them; centred on the median, the same run
held its loss at 6.1 in round 1 and reached 0.978 in round 8, dipping to 0.83
on the way (digits, in-process trainers through this function and the Nesterov
outer step, ``training.local_steps=15``, ``lr=0.003``). Two sign-flipped x100
poisoners of ten: 0.983 in round 3 against 0.964 with the norm bound. A pull towards the honest updates is short from the median and
is not clipped; a pull away from them is. When no update is farther than
``τ``, ``m`` + the mean of the differences is the plain weighted mean, so that
round — the honest case — reads the streamed sum: the same mean, bit for bit.
The bound is the round's own rather than the previous round's: the round holds its
updates anyway (for its cosine with the result, and then its effect scoring), and a
previous round's reference is missing in the first round and wrong whenever the honest
scale moves (the planner changes local steps or batch sizes).

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
    clip_factor: float = 1.5  # clipped-mean: the bound is this many median distances from the median
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
    clip_norm: float | None = None  # clipped-mean: the bound on every update's distance from the median
    clipped: tuple[int, ...] = ()  # its distance from the median scaled down to clip_norm
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
    # Centred on the coordinate-wise median: each update's distance from it is held to k x the
    # median distance (``norms``, the updates' own lengths, are only recorded).
    center = median(updates).value
    distances = np.array([_distance(u, center) for u in updates])
    bound = rule.clip_factor * float(np.median(distances))
    over = tuple(int(i) for i in np.flatnonzero(distances > bound))
    if not over:  # center + the mean of the distances: the plain weighted mean
        return Aggregate(_mean(updates, weights, streamed), rule.name, clip_norm=bound)
    if bound == 0.0:
        # Most updates are the median exactly: every other one is clipped onto it.
        return Aggregate(center.astype(np.float32, copy=False), rule.name, clip_norm=0.0, clipped=over)
    pulls = Accumulator(center.shape)
    for u, w in zip(updates, weights):  # one difference at a time: no second copy of the round
        pulls.add(np.subtract(u, center, dtype=np.float32), weight=w, clip_norm=bound)
    return Aggregate((center + pulls.finalize()).astype(np.float32, copy=False), rule.name,
                     clip_norm=bound, clipped=over)


def _distance(update: np.ndarray, center: np.ndarray) -> float:
    # float32, one difference at a time: a float64 copy would be 2P floats per update (a bound
    # needs no more precision than the float32 updates it is measured on)
    return float(np.linalg.norm(np.subtract(update, center, dtype=np.float32)))


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
