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
    "clipped-mean (the default): the same weights, each update first scaled down to clip_factor x the round's median "
    "update norm, so no update pulls harder than that (holds the round's n updates: the norms come "
    "before the first clip); trimmed-mean: per coordinate, the trim_fraction largest and smallest "
    "values dropped, the rest averaged one vote each (holds n updates); median: per coordinate, one vote "
    "each, resists fewer than half (holds n updates); krum: the n - f updates nearest their neighbours "
    "(multi-Krum), weighted as the mean, the f others dropped (holds n updates and n x n distances)",
)]
# 1.5: f hostile updates of n then pull at most (f/n) x 1.5 median norms per round against the
# honest (1 - f/n) x rho median norms (rho: how aligned honest updates are), so at f/n = 0.2 progress
# holds for rho > 0.375 (2.0 needs rho > 0.5), while honest updates stayed within 1.6 x the median
# in the engine, adaptive and language-model runs (1.0 would clip half of them every round).
ClipFactor = Annotated[float, Field(
    gt=0, le=1000,
    description="clipped-mean: an update's norm is capped at this many times the round's median norm",
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
