"""Link quality: a weighted score in [0, 100] and a class with hysteresis.

The score blends latency, loss, reliability and throughput; the class
(excellent … critical) only moves once the score has cleared a class
boundary by a margin for several observations in a row, so a noisy link
does not flap between classes every round.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass


class Quality(str, enum.Enum):
    EXCELLENT = "excellent"
    GOOD = "good"
    FAIR = "fair"
    POOR = "poor"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for excellent … 4 for critical."""
        return _ORDER.index(self)

    def at_least(self, other: Quality) -> bool:
        return self.rank <= other.rank


_ORDER = [Quality.EXCELLENT, Quality.GOOD, Quality.FAIR, Quality.POOR, Quality.CRITICAL]
#: Lowest score of each class, best first (critical is anything below poor).
BOUNDS = {Quality.EXCELLENT: 80.0, Quality.GOOD: 60.0, Quality.FAIR: 40.0, Quality.POOR: 20.0, Quality.CRITICAL: 0.0}


@dataclass(frozen=True)
class ScoreWeights:
    rtt: float = 0.3
    loss: float = 0.3
    reliability: float = 0.25
    throughput: float = 0.15


def _log_scale(value: float, best: float, worst: float) -> float:
    """100 at or below ``best``, 0 at or above ``worst``, log-linear between."""
    if value <= best:
        return 100.0
    if value >= worst:
        return 0.0
    return 100.0 * (1.0 - math.log(value / best) / math.log(worst / best))


def link_score(
    rtt_ms: float,
    loss: float | None,
    reliability: float,
    throughput_bps: float | None,
    weights: ScoreWeights = ScoreWeights(),
) -> float:
    """Weighted link score in [0, 100]; higher is better.

    RTT 10 ms scores 100 and 1 s scores 0; loss 0 scores 100 and 10 %
    scores 0; reliability is the share of exchanges that completed;
    throughput 100 Mbit/s scores 100 and 100 kbit/s scores 0. An unknown
    throughput, or a loss that says nothing of the link (None: under BBR,
    whose own probing loses a few percent and whose rate loss does not
    bound), leaves its weight to the other terms.
    """
    parts = [
        (weights.rtt, _log_scale(max(rtt_ms, 0.0), 10.0, 1000.0)),
        (weights.reliability, 100.0 * min(max(reliability, 0.0), 1.0)),
    ]
    if loss is not None:
        parts.append((weights.loss, 100.0 * max(0.0, 1.0 - loss / 0.10)))
    if throughput_bps is not None and throughput_bps > 0:
        parts.append((weights.throughput, 100.0 - _log_scale(throughput_bps, 1e5, 1e8)))
    total = sum(w for w, _ in parts)
    return sum(w * s for w, s in parts) / total if total else 0.0


def class_of(score: float) -> Quality:
    for quality in _ORDER:
        if score >= BOUNDS[quality]:
            return quality
    return Quality.CRITICAL


class QualityTracker:
    """A link's class, moved only by sustained evidence.

    A new class is adopted once ``dwell`` consecutive scores fall inside it
    by at least ``margin`` points past the boundary with the current class.
    A drop of two classes or more is adopted after one observation: a link
    that collapses should not wait.
    """

    def __init__(self, margin: float = 5.0, dwell: int = 2, initial: Quality | None = None):
        if margin < 0 or dwell < 1:
            raise ValueError(f"margin must be >= 0 and dwell >= 1, got {margin}, {dwell}")
        self.margin = margin
        self.dwell = dwell
        self.current = initial
        self._candidate: Quality | None = None
        self._streak = 0

    def update(self, score: float) -> Quality:
        raw = class_of(score)
        if self.current is None:
            self.current = raw
            return raw
        if raw is self.current or not self._clears_margin(score, raw):
            self._candidate, self._streak = None, 0
            return self.current
        if raw.rank - self.current.rank >= 2:
            self.current, self._candidate, self._streak = raw, None, 0
            return raw
        if raw is self._candidate:
            self._streak += 1
        else:
            self._candidate, self._streak = raw, 1
        if self._streak >= self.dwell:
            self.current, self._candidate, self._streak = raw, None, 0
        return self.current

    def _clears_margin(self, score: float, raw: Quality) -> bool:
        assert self.current is not None
        if raw.rank < self.current.rank:  # better: must exceed the current class's upper bound
            upper = BOUNDS[_ORDER[self.current.rank - 1]]
            return score >= upper + self.margin
        lower = BOUNDS[self.current]  # worse: must fall below the current class's lower bound
        return score < lower - self.margin
