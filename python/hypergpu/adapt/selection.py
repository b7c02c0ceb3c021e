"""Which nodes take part in a round.

Strategies: ``all``; ``threshold`` (link class at least a given class);
``top_n`` (the N best scores); ``adaptive`` (nodes whose expected exchange
time is within a slack factor of the typical node's, so one slow link does
not set the pace of the round). The reference is the median node, not the
fastest few: each node holds its own slice of the data, and a round run
by the fastest two or three alone would keep training on those slices
only. On top of the strategy:

- quarantine: a node that hurt a round (did not answer, or took far
  longer than the rest) collects a strike; enough strikes sit it out for
  a number of rounds, doubled on each repeat; a node that hurt a round
  only because of the planner's settings (a change that asked more of its
  link, or any before its link was measured: a first download of the whole
  model on a slow link) takes no strike; with overlap (``late_counts``) a
  node that missed a round is judged a round later, on whether its update
  came late after all (it then counts, stale-weighted, and the round did not
  wait past its grace for it): only one that never came is struck;
- probation: after quarantine a node takes part again but on probation;
  a clean run of rounds returns it to full standing, another strike sends
  it back to quarantine;
- fairness: no node is left out more than K rounds in a row, whatever the
  reason, and every exclusion is kept in a bounded history.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hypergpu.adapt.quality import Quality
from hypergpu.round import NodeAnswer


class Standing(str, enum.Enum):
    ACTIVE = "active"
    QUARANTINED = "quarantined"
    PROBATION = "probation"


@dataclass
class Candidate:
    node_id: int
    quality: Quality
    score: float
    expected_s: float  # expected exchange time (transfer + compute) this round


@dataclass
class NodeStanding:
    standing: Standing = Standing.ACTIVE
    strikes: int = 0
    until_round: int = 0  # quarantine ends after this round
    quarantines: int = 0
    clean_rounds: int = 0
    excluded_streak: int = 0
    useful_s: float = 0.0
    total_s: float = 0.0

    @property
    def contribution(self) -> float:
        """Useful compute time over total exchange time (1.0 before any)."""
        return self.useful_s / self.total_s if self.total_s > 0 else 1.0


@dataclass
class SelectionRules:
    strategy: str = "adaptive"
    threshold: Quality = Quality.FAIR
    top_n: int = 8
    slack: float = 2.5  # adaptive: allowed multiple of the reference exchange time
    reference_share: float = 0.5  # adaptive: the reference is this quantile of expected times
    floor_s: float = 1.0  # adaptive: exchanges this short are never worth leaving out
    strikes_to_quarantine: int = 2
    quarantine_rounds: int = 3
    probation_rounds: int = 2
    fairness_rounds: int = 10  # K: longest run of rounds a node may be left out
    hurt_factor: float = 3.0  # an answer this many times slower than the median hurt the round
    min_nodes: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in ("all", "threshold", "top_n", "adaptive"):
            raise ValueError(f"unknown selection strategy {self.strategy!r}")


class NodeSelector:
    def __init__(self, rules: SelectionRules, history: int = 1000):
        self.rules = rules
        self.standing: dict[int, NodeStanding] = {}
        self.exclusions: deque[dict[str, Any]] = deque(maxlen=history)
        #: Nodes in the last round only because of the fairness bound.
        self.forced: set[int] = set()
        #: With late updates counting: node -> the round it missed, judged once the next round closes.
        self.owed: dict[int, int] = {}

    def state(self, node_id: int) -> NodeStanding:
        return self.standing.setdefault(node_id, NodeStanding())

    def select(self, round_id: int, candidates: list[Candidate]) -> tuple[list[int], dict[int, str]]:
        """Participants and, for each node left out, why."""
        r = self.rules
        chosen: set[int] = set()
        excluded: dict[int, str] = {}
        self.forced = set()
        pool = []
        for c in candidates:
            st = self.state(c.node_id)
            if st.standing is Standing.QUARANTINED and round_id > st.until_round:
                st.standing, st.clean_rounds = Standing.PROBATION, 0
            if st.standing is Standing.QUARANTINED:
                excluded[c.node_id] = f"quarantined until round {st.until_round + 1}"
            else:
                pool.append(c)
        chosen.update(c.node_id for c in self._by_strategy(pool, excluded))
        if len(chosen) < r.min_nodes:  # never run a round with nobody: take the best left
            for c in sorted(candidates, key=lambda c: c.expected_s)[: r.min_nodes - len(chosen)]:
                chosen.add(c.node_id)
                excluded.pop(c.node_id, None)
        for c in candidates:
            st = self.state(c.node_id)
            if c.node_id in excluded and st.excluded_streak >= r.fairness_rounds:
                chosen.add(c.node_id)
                self.forced.add(c.node_id)
                excluded.pop(c.node_id)
                self.exclusions.append({"round": round_id, "node": c.node_id, "event": "fairness-return"})
        for c in candidates:
            st = self.state(c.node_id)
            if c.node_id in chosen:
                st.excluded_streak = 0
            else:
                st.excluded_streak += 1
                self.exclusions.append({"round": round_id, "node": c.node_id, "reason": excluded[c.node_id]})
        return sorted(chosen), excluded

    def _by_strategy(self, pool: list[Candidate], excluded: dict[int, str]) -> list[Candidate]:
        r = self.rules
        if r.strategy == "all" or not pool:
            return pool
        if r.strategy == "threshold":
            keep = [c for c in pool if c.quality.at_least(r.threshold)]
            reason = f"link below {r.threshold.value}"
        elif r.strategy == "top_n":
            keep = sorted(pool, key=lambda c: -c.score)[: r.top_n]
            reason = f"not among the best {r.top_n} links"
        else:
            times = sorted(c.expected_s for c in pool)
            reference = times[min(len(times) - 1, max(0, math.ceil(r.reference_share * len(times)) - 1))]
            limit = max(r.slack * reference, r.floor_s)
            keep = [c for c in pool if c.expected_s <= limit]
            reason = f"expected exchange over {limit:.2f} s ({r.slack:g}x the typical node's)"
        kept = {c.node_id for c in keep}
        for c in pool:
            if c.node_id not in kept:
                excluded[c.node_id] = reason
        return keep

    # --- after the round --------------------------------------------------------------

    def hurt(self, asked: list[int], answers: dict[int, NodeAnswer]) -> dict[int, str]:
        """The round's nodes that hurt it, and how: no answer, or far slower than the median."""
        turnarounds = [a.turnaround_s for a in answers.values() if a.turnaround_s]
        median = sorted(turnarounds)[len(turnarounds) // 2] if turnarounds else None
        hurt: dict[int, str] = {}
        for node_id in asked:
            answer = answers.get(node_id)
            if answer is None:
                hurt[node_id] = "did not answer"
                continue
            took = answer.turnaround_s or 0.0
            if median and len(turnarounds) >= 3 and took > self.rules.hurt_factor * median:
                hurt[node_id] = f"took {took:.1f} s, {took / median:.1f}x the median"
        return hurt

    def delivered(self, node_id: int, round_id: int) -> None:
        """``node_id``'s update for ``round_id`` came after that round closed, and counted."""
        if self.owed.get(node_id) == round_id:
            del self.owed[node_id]

    def judge(self, round_id: int, asked: list[int], answers: dict[int, NodeAnswer],
              pardoned: Mapping[int, str] | None = None, *, late_counts: bool = False) -> dict[int, str]:
        """Strikes, quarantines and probation outcomes after a round; returns what changed.

        A node in ``pardoned`` (with why) hurt the round through no fault of its own (the
        planner's settings for it asked more of its link than it gave, or were chosen before
        the link was measured): neither a strike nor a clean round. ``late_counts`` (overlap):
        a node that did not answer is owed a verdict, given when the next round closes unless
        its update came late in between (:meth:`delivered`)."""
        pardoned = pardoned or {}
        changes: dict[int, str] = {}
        for node_id, missed in [(n, m) for n, m in self.owed.items() if m < round_id]:
            del self.owed[node_id]
            changes[node_id] = self._strike(round_id, node_id, f"did not answer round {missed}, nor late")
        hurts = self.hurt(asked, answers)
        for node_id in asked:
            st = self.state(node_id)
            answer = answers.get(node_id)
            if answer is not None:
                st.useful_s += answer.compute_s
                st.total_s += answer.turnaround_s or 0.0
            hurt = hurts.get(node_id)
            if hurt is None:
                st.clean_rounds += 1
                if st.standing is Standing.PROBATION and st.clean_rounds >= self.rules.probation_rounds:
                    st.standing, st.strikes = Standing.ACTIVE, 0
                    changes[node_id] = "probation passed: back to full standing"
                continue
            if node_id in pardoned:
                said = f"no strike: {hurt} {pardoned[node_id]}"
            elif late_counts and answer is None:
                self.owed[node_id] = round_id
                said = f"no strike yet: {hurt} (its update still counts if it comes late)"
            else:
                said = self._strike(round_id, node_id, hurt)
            changes[node_id] = f"{changes[node_id]}; {said}" if node_id in changes else said
        return changes

    def _strike(self, round_id: int, node_id: int, hurt: str) -> str:
        """One strike for ``node_id``; enough of them (or one on probation) quarantine it."""
        r, st = self.rules, self.state(node_id)
        st.strikes += 1
        st.clean_rounds = 0
        if st.standing is Standing.PROBATION or st.strikes >= r.strikes_to_quarantine:
            length = r.quarantine_rounds * 2**st.quarantines
            st.quarantines += 1
            st.standing, st.strikes, st.until_round = Standing.QUARANTINED, 0, round_id + length
            return f"quarantined for {length} rounds: {hurt}"
        return f"strike {st.strikes}: {hurt}"
