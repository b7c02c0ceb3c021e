"""Contribution scoring and reward splitting (pure Python, no chain needed)."""

from hypergpu.rewards.effect import EffectPolicy, judge
from hypergpu.rewards.allocation import RewardPolicy, allocate, largest_remainder, nonzero
from hypergpu.rewards.history import ScoreBook
from hypergpu.rewards.scoring import (
    EpochScores,
    NodeEpochStats,
    NodeScore,
    ScoringWeights,
    quality_multiplier,
    reliability_multiplier,
    robust_z,
    score_epoch,
    session_totals,
)
from hypergpu.rewards.tally import EpochTally, NodeTally

__all__ = [
    "EffectPolicy",
    "EpochScores",
    "EpochTally",
    "NodeEpochStats",
    "NodeScore",
    "NodeTally",
    "RewardPolicy",
    "ScoreBook",
    "ScoringWeights",
    "allocate",
    "judge",
    "largest_remainder",
    "nonzero",
    "quality_multiplier",
    "reliability_multiplier",
    "robust_z",
    "score_epoch",
    "session_totals",
]
