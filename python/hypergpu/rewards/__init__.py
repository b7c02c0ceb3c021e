"""Contribution scoring and reward splitting (pure Python, no chain needed)."""

from hypergpu.rewards.allocation import RewardPolicy, allocate, largest_remainder, nonzero
from hypergpu.rewards.history import Mismatch, ScoreBook
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

__all__ = [
    "EpochScores",
    "Mismatch",
    "NodeEpochStats",
    "NodeScore",
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
