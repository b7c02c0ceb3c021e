"""A training round as data: plan, admission book, the sans-IO round, its record."""

from hypergpu.protocol import Ack, Assignment
from hypergpu.round.book import Decision, LatePolicy, RoundBook, Verdict
from hypergpu.round.plan import NodeView, Planner, PlanView, RoundPlan, StaticPlanner
from hypergpu.round.records import NodeAnswer, RoundRecord
from hypergpu.round.round import Round

__all__ = [
    "Ack",
    "Assignment",
    "Decision",
    "LatePolicy",
    "NodeAnswer",
    "NodeView",
    "PlanView",
    "Planner",
    "Round",
    "RoundBook",
    "RoundPlan",
    "RoundRecord",
    "StaticPlanner",
    "Verdict",
]
