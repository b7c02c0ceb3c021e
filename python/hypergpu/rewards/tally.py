"""Round records folded, node by node, into the figures an epoch is scored on.

Per round this only adds numbers and keeps a reference to the round's
:class:`~hypergpu.round.effects.RoundEffects` (microseconds); at the epoch's
end :meth:`EpochTally.take` waits for the effects still being measured, and
turns it all into :class:`NodeEpochStats` for
:func:`~hypergpu.rewards.scoring.score_epoch`: a round whose update was
judged harmful adds no work to the credit, the others' effect qualities are
averaged weighted by their samples. Nodes are keyed by name, the identity that
is paid, so a node that rejoins under a new id keeps its tally.

**The epoch is judged by its net effect.** Round by round, an attacker that
alternates a harmful update with one that undoes it is scored helpful on
every repair round and would earn about half its rounds. So a node with any
harmful round in the epoch earns for the epoch only if the sum of its scored
effects over the epoch — harmful rounds included, counting against it — is
positive beyond that sum's noise (each round's noise threshold, combined in
quadrature); a harmful round whose model was broken (no finite effect)
forfeits the epoch. Help that only repairs its own harm sums to about zero
and earns nothing; a node never judged harmful is judged round by round as
before (an effect within noise is neither rewarded nor punished). The price:
an honest node whose update is judged harmful by chance (past ``noise_z``
standard errors and the margin) in an epoch where its other updates are
within noise — late in training — loses that epoch's credit.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from hypergpu.rewards.scoring import NodeEpochStats
from hypergpu.round.effects import NodeEffect, RoundEffects
from hypergpu.round.records import RoundRecord

log = logging.getLogger("hypergpu.rewards")

#: How long :meth:`EpochTally.take` waits in all for effects still being measured; a round
#: whose effects are not in by then counts as unscored (neither rewarded nor punished).
EFFECT_WAIT_S = 300.0


@dataclass
class _Answered:
    """One applied round a node answered: its work, and where its effect will be."""

    node_id: int
    samples: int
    compute_s: float
    turnaround_s: float
    effects: RoundEffects | None


@dataclass
class NodeTally:
    """One node's figures over the rounds of the open epoch."""

    participated: int = 0
    answered: list[_Answered] = field(default_factory=list)
    refusals_at_start: int = 0


class EpochTally:
    """The open epoch's per-node figures."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeTally] = {}
        self.rounds = 0
        self.epoch: int | None = None

    def add_round(self, epoch: int, record: RoundRecord, names: Mapping[int, str],
                  refusals: Mapping[str, int]) -> None:
        """Fold in one round of ``epoch``; ``names`` maps node ids to names, ``refusals``
        each name to its updates refused so far."""
        if self.epoch is None:
            self.epoch = epoch
        self.rounds += 1
        reported = set(record.reported)
        for node_id in record.participants:
            name = names.get(node_id)
            if name is None:
                continue
            tally = self.nodes.get(name)
            if tally is None:
                tally = self.nodes[name] = NodeTally(refusals_at_start=refusals.get(name, 0))
            tally.participated += 1
            answer = record.answers.get(node_id)
            if not record.applied or node_id not in reported or answer is None:
                continue
            tally.answered.append(_Answered(node_id, answer.samples, answer.compute_s,
                                            answer.turnaround_s or answer.compute_s, record.effects))

    def take(self, refusals: Mapping[str, int], wait_s: float = EFFECT_WAIT_S) -> tuple[int, list[NodeEpochStats]]:
        """The open epoch and its stats (waiting, at most ``wait_s`` in all, for effects still
        being measured: call it off the event loop); the tally starts over for the next epoch."""
        epoch = self.epoch if self.epoch is not None else 0
        self._wait(wait_s)
        stats = [_stats(name, t, self.rounds, refusals) for name, t in sorted(self.nodes.items())]
        self.nodes, self.rounds, self.epoch = {}, 0, None
        return epoch, stats

    def _wait(self, wait_s: float) -> None:
        pending = {id(a.effects): a.effects for t in self.nodes.values() for a in t.answered
                   if a.effects is not None and not a.effects.ready}
        if not pending:
            return
        deadline = time.monotonic() + wait_s
        for effects in pending.values():
            if not effects.wait(max(0.0, deadline - time.monotonic())):
                log.warning("round %d: effects not measured within %.0f s; its updates count as unscored",
                            effects.round, wait_s)


def _stats(name: str, t: NodeTally, rounds: int, refusals: Mapping[str, int]) -> NodeEpochStats:
    refused = refusals[name] - t.refusals_at_start if name in refusals else 0
    harmful = sum(_harmful(a) for a in t.answered)
    net, noise = net_effect([e for a in t.answered if (e := _effect(a)) is not None])
    # With a harmful round, the epoch earns only when the net effect is positive beyond noise.
    forfeited = harmful > 0 and not (net is not None and noise is not None and net > noise)
    credited = [] if forfeited else [a for a in t.answered if not _harmful(a)]
    scored = [(a.samples, e.quality) for a in credited if (e := _effect(a)) is not None]
    weight = sum(w for w, _ in scored)
    quality = None if not scored else (
        sum(w * q for w, q in scored) / weight if weight else sum(q for _, q in scored) / len(scored))
    return NodeEpochStats(
        node=name,
        samples_accepted=sum(a.samples for a in credited),
        compute_seconds=sum(a.turnaround_s for a in credited),  # measured: params out -> update in
        reported_seconds=sum(a.compute_s for a in credited),  # the node's own figure; the lower one counts
        rounds_succeeded=len(credited),
        effect_quality=quality,
        harmful_rounds=harmful,
        uptime=t.participated / max(1, rounds),
        exchanges_ok=len(t.answered),
        exchanges_total=t.participated + max(0, refused),
        net_effect=net,
        net_noise=noise,
        forfeited=forfeited,
    )


def net_effect(effects: list[NodeEffect]) -> tuple[float | None, float | None]:
    """A node's scored effects summed over an epoch, and that sum's noise (each round's noise
    threshold, in quadrature); ``(None, None)`` when none was scored or one broke the model."""
    if not effects or any(e.effect is None for e in effects):
        return None, None
    net = sum(float(e.effect) for e in effects if e.effect is not None)
    noise = math.sqrt(sum((e.noise if e.noise is not None else 0.0) ** 2 for e in effects))
    return net, noise


def _effect(a: _Answered) -> NodeEffect | None:
    return a.effects.get(a.node_id) if a.effects is not None else None


def _harmful(a: _Answered) -> bool:
    effect = _effect(a)
    return effect is not None and effect.harmful
