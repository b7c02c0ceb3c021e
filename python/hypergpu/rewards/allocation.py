"""Splitting a reward pool among nodes in integer wei.

Every split goes through :func:`largest_remainder`, so the amounts are
integers that sum to exactly the pool (or to zero when nobody earned
anything) and never exceed it.

Edge cases, by definition:
* one node with a positive weight receives the whole pool;
* equal weights get equal shares, the indivisible remainder going one wei
  each to the first nodes in sorted order;
* all weights zero: nothing is allocated, every amount is 0 and the pool
  stays funded for a later epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from hypergpu.errors import InvalidArgumentError
from hypergpu.rewards.scoring import NodeScore


def exact_weights(weights: Mapping[str, float | int]) -> dict[str, int]:
    """Weights as integers with exactly the same ratios; a float is read as its
    shortest decimal form (0.1 as 1/10), so simple inputs give simple splits."""
    fractions: dict[str, Fraction] = {}
    for node, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise InvalidArgumentError(f"weight of {node!r} must be a finite non-negative number, got {w!r}")
        fractions[node] = Fraction(repr(w)) if isinstance(w, float) else Fraction(w)
    scale = math.lcm(*(f.denominator for f in fractions.values())) if fractions else 1
    return {node: int(f * scale) for node, f in fractions.items()}


def largest_remainder(pool: int, weights: Mapping[str, float | int]) -> dict[str, int]:
    """``pool`` split in proportion to ``weights`` (Hamilton's method, exact)."""
    if isinstance(pool, bool) or not isinstance(pool, int) or pool < 0:
        raise InvalidArgumentError(f"pool must be a non-negative integer amount of wei, got {pool!r}")
    ints = exact_weights(weights)
    total = sum(ints.values())
    if total == 0:
        return {node: 0 for node in ints}
    shares = {node: divmod(pool * w, total) for node, w in ints.items()}
    amounts = {node: q for node, (q, _) in shares.items()}
    leftover = pool - sum(amounts.values())
    by_remainder = sorted(ints, key=lambda n: (-shares[n][1], n))
    for node in by_remainder[:leftover]:
        amounts[node] += 1
    return amounts


class RewardPolicy(BaseModel):
    """How a pool is split.

    * proportional: by base credit (verified work only);
    * performance: by score (credit x quality x reliability);
    * tiered: ``tier_bonus_share`` of the pool goes to the top
      ``top_fraction`` of nodes by score, the rest by performance;
    * minimum: each node with a positive score first gets ``minimum_wei``
      (an equal split if the pool cannot cover it), the rest by performance.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["proportional", "performance", "tiered", "minimum"] = "performance"
    top_fraction: float = Field(default=0.1, gt=0.0, le=1.0)
    tier_bonus_share: float = Field(default=0.2, ge=0.0, le=1.0)
    minimum_wei: int = Field(default=0, ge=0)


def _add(a: dict[str, int], b: Mapping[str, int]) -> dict[str, int]:
    return {n: a.get(n, 0) + b.get(n, 0) for n in a.keys() | b.keys()}


def allocate(pool: int, scores: Mapping[str, NodeScore], policy: RewardPolicy | None = None) -> dict[str, int]:
    """Each node's reward in wei; the amounts sum to ``pool`` unless every score is zero."""
    policy = policy or RewardPolicy()
    performance = {n: s.score for n, s in scores.items()}
    if policy.mode == "proportional":
        return largest_remainder(pool, {n: s.base_credit for n, s in scores.items()})
    if policy.mode == "performance":
        return largest_remainder(pool, performance)
    earners = sorted((n for n, w in performance.items() if w > 0), key=lambda n: (-performance[n], n))
    if policy.mode == "tiered":
        if not earners:
            return {n: 0 for n in scores}
        top = earners[: max(1, math.ceil(policy.top_fraction * len(earners)))]
        bonus_pool = int(Fraction(pool) * Fraction(policy.tier_bonus_share))
        bonus = largest_remainder(bonus_pool, {n: performance[n] for n in top})
        return _add(largest_remainder(pool - bonus_pool, performance), bonus)
    # minimum guarantee
    guaranteed = policy.minimum_wei * len(earners)
    if guaranteed > pool:
        floor = largest_remainder(pool, {n: 1 for n in earners})
        return _add({n: 0 for n in scores}, floor)
    floor = {n: policy.minimum_wei for n in earners}
    return _add(largest_remainder(pool - guaranteed, performance), floor)


def nonzero(amounts: Mapping[str, int]) -> dict[str, int]:
    """The amounts worth a chain write (zero entries dropped)."""
    return {n: a for n, a in amounts.items() if a > 0}
