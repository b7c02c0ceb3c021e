"""The coordinator: node registry, shards, rounds, checkpoints."""

from hypergpu.coordinator.coordinator import Coordinator, Summary
from hypergpu.coordinator.plan import Assignment, Planner, RoundPlan, StaticPlanner
from hypergpu.coordinator.registry import NodeInfo, NodeRegistry, NodeStatus
from hypergpu.coordinator.rounds import LatePolicy, RoundBook, Verdict

__all__ = [
    "Assignment",
    "Coordinator",
    "LatePolicy",
    "NodeInfo",
    "NodeRegistry",
    "NodeStatus",
    "Planner",
    "RoundBook",
    "RoundPlan",
    "StaticPlanner",
    "Summary",
    "Verdict",
]
