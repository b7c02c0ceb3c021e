"""Contribution scoring: what each node's work in an epoch is worth.

score = base credit x quality multiplier (0.5-1.5) x reliability multiplier (0.8-1.2)

* Base credit counts only verified work: samples whose update the
  coordinator accepted and did not judge harmful, and compute time the
  coordinator measured (a node's own report can lower it, never raise it).
  A round whose update made the held-out loss worse beyond noise adds no
  credit: the node earns nothing for it (its round quality is 0). And a node
  with a harmful round earns nothing for the whole epoch unless its effects
  summed over the epoch are positive beyond noise (``forfeited``,
  :mod:`hypergpu.rewards.tally`): repairing its own harm is no help.
* Quality comes from each scored update's verified effect on a held-out loss
  (:mod:`hypergpu.rewards.effect`: the update applied alone to the round's
  base parameters, on samples no node trains on): the epoch's multiplier is
  the sample-weighted mean of its not-harmful rounds' qualities (1.0 for an
  effect within noise, up to 1.5 for an improvement beyond it); neutral (1.0)
  when no update of the node was scored, the minimum (0.5) when every scored
  one was harmful. Agreement with the aggregate (cosine) is not scored: a node
  that owns the mean would agree best with it.
* Reliability comes from uptime and the share of exchanges that succeeded.
* Flagged (``outlier``, with reasons): harmful updates, implausible
  throughput (robust z-score on median and MAD), over-reported compute.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from statistics import median

from hypergpu.errors import InvalidArgumentError

QUALITY_MIN, QUALITY_MAX = 0.5, 1.5
RELIABILITY_MIN, RELIABILITY_MAX = 0.8, 1.2
# On chain, compute credit is stored in milliseconds of verified compute.
CREDIT_SCALE = 1000


@dataclass(frozen=True)
class NodeEpochStats:
    """What the coordinator measured about one node during one epoch."""

    node: str
    samples_accepted: int
    compute_seconds: float  # measured by the coordinator
    reported_seconds: float | None = None  # the node's own claim, if it sent one
    rounds_succeeded: int = 0
    # sample-weighted mean quality of its scored, not harmful rounds (rewards.effect); None: none scored
    effect_quality: float | None = None
    harmful_rounds: int = 0  # rounds its update was judged harmful (their work is not in the counts above)
    uptime: float = 1.0  # share of the epoch it was reachable
    exchanges_ok: int = 0
    exchanges_total: int = 0
    # its scored effects summed over the epoch and that sum's noise (None: none scored)
    net_effect: float | None = None
    net_noise: float | None = None
    # harmful rounds not outweighed: the net effect was not positive beyond noise, nothing earned
    forfeited: bool = False

    def validate(self) -> None:
        def bad(what: str) -> InvalidArgumentError:
            return InvalidArgumentError(f"node {self.node!r}: {what}")

        if self.samples_accepted < 0 or self.rounds_succeeded < 0 or self.harmful_rounds < 0:
            raise bad("sample and round counts must be non-negative")
        for name in ("compute_seconds", "reported_seconds", "effect_quality", "uptime", "net_effect", "net_noise"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise bad(f"{name} is not finite: {value}")
        if self.compute_seconds < 0 or (self.reported_seconds is not None and self.reported_seconds < 0):
            raise bad("compute time must be non-negative")
        if self.effect_quality is not None and not 0.0 <= self.effect_quality <= QUALITY_MAX:
            raise bad(f"effect quality {self.effect_quality} is outside [0, {QUALITY_MAX}]")
        if not 0.0 <= self.uptime <= 1.0:
            raise bad(f"uptime {self.uptime} is outside [0, 1]")
        if not 0 <= self.exchanges_ok <= self.exchanges_total:
            raise bad(f"exchanges_ok={self.exchanges_ok} must lie in [0, exchanges_total={self.exchanges_total}]")


@dataclass(frozen=True)
class ScoringWeights:
    per_sample: float = 1.0  # credit per accepted sample
    per_second: float = 1.0  # credit per verified compute second
    outlier_z: float = 3.5  # modified z-score beyond which a value is an outlier
    report_tolerance: float = 0.10  # self-reported time this far above measured is flagged


@dataclass(frozen=True)
class NodeScore:
    node: str
    samples_accepted: int
    verified_seconds: float
    rounds_succeeded: int
    base_credit: float
    quality: float
    reliability: float
    score: float
    outlier: bool = False
    reasons: tuple[str, ...] = ()
    harmful_rounds: int = 0  # rounds that earned nothing: the update made the held-out loss worse

    # The contract's units (see chain.types.ContributionEntry).
    @property
    def compute_credit(self) -> int:
        """Verified compute, fixed-point."""
        return round(self.verified_seconds * CREDIT_SCALE)

    @property
    def quality_bps(self) -> int:
        """The quality multiplier in basis points."""
        return round(self.quality * 10_000)


@dataclass(frozen=True)
class EpochScores:
    epoch: int
    nodes: dict[str, NodeScore] = field(default_factory=dict)

    @property
    def total_score(self) -> float:
        return sum(s.score for s in self.nodes.values())

    @property
    def outliers(self) -> list[str]:
        return [n for n, s in self.nodes.items() if s.outlier]


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def quality_multiplier(effect_quality: float | None, harmful_rounds: int = 0) -> float:
    """0.5..1.5 from the epoch's effect quality; neutral (1.0) when nothing was scored,
    the minimum when nothing scored was anything but harmful."""
    if effect_quality is None:
        return QUALITY_MIN if harmful_rounds else 1.0
    return _clip(effect_quality, QUALITY_MIN, QUALITY_MAX)


def reliability_multiplier(uptime: float, exchanges_ok: int, exchanges_total: int) -> float:
    """0.8..1.2 from uptime and exchange success (no exchanges counts as uptime alone)."""
    success = exchanges_ok / exchanges_total if exchanges_total else uptime
    return _clip(RELIABILITY_MIN + 0.4 * (0.5 * uptime + 0.5 * success), RELIABILITY_MIN, RELIABILITY_MAX)


def robust_z(values: Mapping[str, float]) -> dict[str, float]:
    """Modified z-scores (0.6745 (x - median) / MAD); all zero when fewer than 3 values or MAD is 0."""
    if len(values) < 3:
        return {k: 0.0 for k in values}
    mid = median(values.values())
    mad = median(abs(v - mid) for v in values.values())
    if mad == 0:
        return {k: 0.0 for k in values}
    return {k: 0.6745 * (v - mid) / mad for k, v in values.items()}


def score_epoch(epoch: int, stats: Sequence[NodeEpochStats], weights: ScoringWeights | None = None) -> EpochScores:
    weights = weights or ScoringWeights()
    seen: set[str] = set()
    for s in stats:
        s.validate()
        if s.node in seen:
            raise InvalidArgumentError(f"node {s.node!r} appears twice in epoch {epoch}")
        seen.add(s.node)

    throughput_z = robust_z({s.node: s.samples_accepted / s.compute_seconds for s in stats if s.compute_seconds > 0})

    nodes: dict[str, NodeScore] = {}
    for s in stats:
        reasons: list[str] = []
        verified = s.compute_seconds
        if s.reported_seconds is not None:
            if s.reported_seconds > s.compute_seconds * (1 + weights.report_tolerance):
                reasons.append(f"reported {s.reported_seconds:.1f}s of compute, measured {s.compute_seconds:.1f}s")
            verified = min(verified, s.reported_seconds)
        quality = quality_multiplier(s.effect_quality, s.harmful_rounds)
        if s.forfeited:
            net = "not measured (a broken model)" if s.net_effect is None else (
                f"{s.net_effect:.3g} against noise {s.net_noise or 0.0:.3g}")
            reasons.append(f"{s.harmful_rounds} harmful update(s) not outweighed: net effect over the epoch "
                           f"{net} (no credit for the epoch)")
        elif s.harmful_rounds:
            reasons.append(f"{s.harmful_rounds} update(s) made the held-out loss worse beyond noise "
                           "(no credit for those rounds)")
        if throughput_z.get(s.node, 0.0) > weights.outlier_z:
            reasons.append(f"implausible throughput (z {throughput_z[s.node]:.1f})")
        reliability = reliability_multiplier(s.uptime, s.exchanges_ok, s.exchanges_total)
        base = weights.per_sample * s.samples_accepted + weights.per_second * verified
        nodes[s.node] = NodeScore(
            node=s.node,
            samples_accepted=s.samples_accepted,
            verified_seconds=verified,
            rounds_succeeded=s.rounds_succeeded,
            base_credit=base,
            quality=quality,
            reliability=reliability,
            score=base * quality * reliability,
            outlier=bool(reasons),
            reasons=tuple(reasons),
            harmful_rounds=s.harmful_rounds,
        )
    return EpochScores(epoch, nodes)


def session_totals(epochs: Iterable[EpochScores]) -> dict[str, float]:
    """Each node's summed score over the given epochs."""
    totals: dict[str, float] = {}
    for e in epochs:
        for node, s in e.nodes.items():
            totals[node] = totals.get(node, 0.0) + s.score
    return totals
