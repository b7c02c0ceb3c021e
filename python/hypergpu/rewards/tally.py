"""Round records folded, node by node, into the figures an epoch is scored on.

Per round this only adds numbers (microseconds); at the epoch's end
:meth:`EpochTally.take` turns them into :class:`NodeEpochStats` for
:func:`~hypergpu.rewards.scoring.score_epoch`. Nodes are keyed by name, the
identity that is paid, so a node that rejoins under a new id keeps its tally.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from hypergpu.rewards.scoring import NodeEpochStats
from hypergpu.round.records import RoundRecord


@dataclass
class NodeTally:
    """One node's figures over the rounds of the open epoch."""

    samples: int = 0
    turnaround_s: float = 0.0
    compute_s: float = 0.0
    rounds_ok: int = 0
    participated: int = 0
    cosines: list[float] = field(default_factory=list)
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
            tally.rounds_ok += 1
            tally.samples += answer.samples
            tally.compute_s += answer.compute_s
            tally.turnaround_s += answer.turnaround_s or answer.compute_s
            if answer.cosine is not None:
                tally.cosines.append(answer.cosine)

    def take(self, refusals: Mapping[str, int]) -> tuple[int, list[NodeEpochStats]]:
        """The open epoch and its stats; the tally starts over for the next epoch."""
        epoch = self.epoch if self.epoch is not None else 0
        stats = []
        for name, t in sorted(self.nodes.items()):
            refused = refusals[name] - t.refusals_at_start if name in refusals else 0
            stats.append(NodeEpochStats(
                node=name,
                samples_accepted=t.samples,
                compute_seconds=t.turnaround_s,  # measured by the coordinator: params out -> update in
                reported_seconds=t.compute_s,  # the node's own figure; the lower one counts
                rounds_succeeded=t.rounds_ok,
                cosine=sum(t.cosines) / len(t.cosines) if t.cosines else None,
                uptime=t.participated / max(1, self.rounds),
                exchanges_ok=t.rounds_ok,
                exchanges_total=t.participated + max(0, refused),
            ))
        self.nodes, self.rounds, self.epoch = {}, 0, None
        return epoch, stats
