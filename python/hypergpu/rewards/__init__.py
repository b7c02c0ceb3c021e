"""Contribution scoring and reward splitting (pure Python, no chain needed)."""

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
    "EpochScores",
    "EpochTally",
    "NodeEpochStats",
    "NodeScore",
    "NodeTally",
    "RewardPolicy",
    "ScoreBook",
    "ScoringWeights",
    "allocate",
    "largest_remainder",
    "nonzero",
    "quality_multiplier",
    "reliability_multiplier",
    "robust_z",
    "score_epoch",
    "session_totals",
]
