"""How a round's updates become one (``coordinator.aggregation`` and its parameters).

The fields are declared here and used by ``CoordinatorConfig`` so that their
descriptions — which state what each rule resists and what it must hold in
memory — are written once, next to each other. ``hypergpu.update.robust``
applies them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

AggregationRule = Literal["mean", "clipped-mean", "trimmed-mean", "median", "krum"]

Aggregation = Annotated[AggregationRule, Field(
    description="how the round's accepted updates become one (n updates of P floats each): "
    "mean: weighted by samples x staleness, streamed (one P-float sum), resists nothing; "
    "clipped-mean (the default): the same weights, centred clipping: each update's distance from the round's "
    "coordinate-wise median held to clip_factor x the median distance, so no update pulls farther from the "
    "median than the honest updates disagree (holds the round's n updates: the median and the distances "
    "come before the first clip); trimmed-mean: per coordinate, the trim_fraction largest and smallest "
    "values dropped, the rest averaged one vote each (holds n updates); median: per coordinate, one vote "
    "each, resists fewer than half (holds n updates); krum: the n - f updates nearest their neighbours "
    "(multi-Krum), weighted as the mean, the f others dropped (holds n updates and n x n distances)",
)]
# 1.5: f hostile updates of n then pull at most (f/n) x 1.5 median distances from the median per
# round — a bound set by how much honest updates disagree, not by how long they are (an update's own
# norm, the first bound, grew with the damage honest updates were repairing and let a run diverge);
# 1.0 would clip half of the honest updates every round. Two sign-flipped x100 poisoners of ten
# (digits, in-process, 8 rounds): 0.983 in round 3 at 1.5, against 0.964 with the norm bound.
ClipFactor = Annotated[float, Field(
    gt=0, le=1000,
    description="clipped-mean: an update's distance from the round's coordinate-wise median is capped at "
    "this many times the median distance",
)]
TrimFraction = Annotated[float, Field(
    ge=0, lt=0.5,
    description="trimmed-mean: the fraction of values dropped at each end of every coordinate "
    "(floor(fraction x n) each side: that many hostile updates are resisted)",
)]
KrumF = Annotated[int, Field(
    ge=0, le=1000,
    description="krum: hostile updates to tolerate; a round of n updates uses at most (n - 3) // 2",
)]
