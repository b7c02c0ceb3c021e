"""Round bookkeeping: which updates a round accepts, so each is applied once.

A round is open from the moment its parameters go out until it closes
(every participant answered, or the timeout passed with a quorum). Each
update is identified by ``(node_id, round)``; the book decides, for every
update that arrives, whether it is folded in now, folded in later with a
staleness weight, or refused — and counts every refusal by reason.
"""

from __future__ import annotations

import enum
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

#: (round applied in, node, round the update was for) entries the book keeps as its ledger.
LEDGER = 4096


class Verdict(enum.Enum):
    ACCEPT = "accept"  # fold into the open round at full weight
    ACCEPT_STALE = "accept-stale"  # a late update folded in with a staleness weight
    DUPLICATE = "duplicate"  # this (node, round) was already taken
    LATE = "late"  # for a closed round, and the policy drops late updates
    FUTURE = "future"  # for a round that has not started
    NOT_PARTICIPANT = "not-participant"  # the node was not asked this round
    CLOSED = "closed"  # no round is open


class LatePolicy(str, enum.Enum):
    DROP = "drop"
    STALE_WEIGHTED = "stale-weighted"


@dataclass
class Decision:
    verdict: Verdict
    weight: float = 0.0
    staleness: int = 0

    @property
    def accepted(self) -> bool:
        return self.verdict in (Verdict.ACCEPT, Verdict.ACCEPT_STALE)


@dataclass
class RoundBook:
    """Exactly-once admission of updates across rounds.

    ``max_staleness`` bounds how old a late update may be and still count
    under the stale-weighted policy; its weight is ``decay ** staleness``.
    """

    quorum: float = 0.5
    late_policy: LatePolicy = LatePolicy.DROP
    decay: float = 0.5
    max_staleness: int = 2
    current: int = 0
    is_open: bool = False
    participants: set[int] = field(default_factory=set)
    # participants the quorum does not count on (their updates still count if they come)
    optional: set[int] = field(default_factory=set)
    reported: set[int] = field(default_factory=set)
    # Every (node, round) ever taken; trimmed to the staleness window.
    _taken: set[tuple[int, int]] = field(default_factory=set)
    # Who was asked in recent rounds, and the samples each was assigned (None: no cap known),
    # to judge late updates and to weigh every update by the work it was given.
    _asked: dict[int, dict[int, int | None]] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    # (node, round) -> whether the round that took it was applied; trimmed like _taken. A node
    # that lost the ack saying so learns it from its next welcome (:meth:`outcomes`).
    _outcome: dict[tuple[int, int], bool] = field(default_factory=dict)
    #: the latest applied updates, oldest first: (round applied in, node, round it was for);
    #: checkpointed, so a resumed run can show that no update was applied twice
    ledger: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=LEDGER))

    def open(self, round_id: int, participants: set[int], optional: set[int] | None = None,
             assigned: dict[int, int] | None = None) -> None:
        if round_id <= self.current and self.current:
            raise ValueError(f"round {round_id} does not follow round {self.current}")
        self.current = round_id
        self.is_open = True
        self.participants = set(participants)
        self.optional = set(optional or ()) & self.participants
        self.reported = set()
        self._asked[round_id] = {n: (assigned or {}).get(n) for n in participants}
        horizon = round_id - self.max_staleness - 1
        self._asked = {r: p for r, p in self._asked.items() if r >= horizon}
        self._taken = {(n, r) for n, r in self._taken if r >= horizon}
        self._outcome = {k: v for k, v in self._outcome.items() if k[1] >= horizon}

    def close(self) -> None:
        self.is_open = False

    def decided(self, round_id: int, applied: bool, taken: list[tuple[int, int]]) -> None:
        """Round ``round_id`` closed: the ``(node, round)`` updates it took were applied or not."""
        for key in taken:
            self._outcome[key] = applied
            if applied:
                self.ledger.append((round_id, key[0], key[1]))

    def outcomes(self, node_id: int) -> tuple[list[int], list[int]]:
        """The rounds (still remembered) whose update from ``node_id`` was applied, and not applied."""
        mine = sorted((r, ok) for (n, r), ok in self._outcome.items() if n == node_id)
        return [r for r, ok in mine if ok], [r for r, ok in mine if not ok]

    def held(self, node_id: int) -> list[int]:
        """Rounds whose update from ``node_id`` was taken and not decided yet."""
        return sorted(r for n, r in self._taken if n == node_id and (n, r) not in self._outcome)

    # --- checkpoints ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON-ready), between rounds: the round is closed."""
        return {
            "current": self.current,
            "taken": sorted(self._taken),
            "asked": {str(r): {str(n): a for n, a in p.items()} for r, p in self._asked.items()},
            "refusals": dict(self.refusals),
            "outcome": [[n, r, ok] for (n, r), ok in sorted(self._outcome.items())],
            "ledger": [list(e) for e in self.ledger],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state` kept (the round closed, as it was when kept)."""
        self.current, self.is_open = int(state["current"]), False
        self.participants, self.optional, self.reported = set(), set(), set()
        self._taken = {(int(n), int(r)) for n, r in state["taken"]}
        self._asked = {int(r): {int(n): a for n, a in p.items()} for r, p in state["asked"].items()}
        self.refusals = Counter(state["refusals"])
        self._outcome = {(int(n), int(r)): bool(ok) for n, r, ok in state["outcome"]}
        self.ledger = deque((tuple(e) for e in state["ledger"]), maxlen=LEDGER)  # type: ignore[misc]

    def assigned(self, node_id: int, round_id: int) -> int | None:
        """The samples ``node_id`` was assigned for ``round_id`` (None: unknown, no cap)."""
        return self._asked.get(round_id, {}).get(node_id)

    @property
    def quorum_count(self) -> int:
        return max(1, math.ceil(self.quorum * len(self.participants - self.optional)))

    def has_quorum(self) -> bool:
        return len(self.reported - self.optional) >= self.quorum_count

    def complete(self) -> bool:
        return self.reported >= self.participants

    def offer(self, node_id: int, round_id: int) -> Decision:
        """Judge an update from ``node_id`` for ``round_id`` and take it if admissible."""
        decision = self.check(node_id, round_id)
        if decision.accepted:
            self.commit(node_id, round_id)
        return decision

    def check(self, node_id: int, round_id: int) -> Decision:
        """Judge an update without taking it; refusals are counted.

        The coordinator checks, then validates and folds the update, and
        only then commits: an update that fails validation is not marked
        taken, so a corrected resend can still be applied.
        """
        decision = self._judge(node_id, round_id)
        if not decision.accepted:
            self.refusals[decision.verdict.value] += 1
        return decision

    def commit(self, node_id: int, round_id: int) -> None:
        """Record that ``(node_id, round_id)`` has been applied."""
        self._taken.add((node_id, round_id))
        if round_id == self.current and self.is_open:
            self.reported.add(node_id)

    def _judge(self, node_id: int, round_id: int) -> Decision:
        if (node_id, round_id) in self._taken:
            return Decision(Verdict.DUPLICATE)
        if round_id > self.current:
            return Decision(Verdict.FUTURE)
        if not self.is_open:
            return Decision(Verdict.CLOSED)
        if round_id == self.current:
            if node_id not in self.participants:
                return Decision(Verdict.NOT_PARTICIPANT)
            return Decision(Verdict.ACCEPT, weight=1.0)
        staleness = self.current - round_id
        asked = self._asked.get(round_id)
        if asked is None or node_id not in asked:
            # Too old to judge, or never asked: either way not ours to apply.
            return Decision(Verdict.LATE if asked is None else Verdict.NOT_PARTICIPANT, staleness=staleness)
        if self.late_policy is LatePolicy.DROP or staleness > self.max_staleness:
            return Decision(Verdict.LATE, staleness=staleness)
        return Decision(Verdict.ACCEPT_STALE, weight=self.decay**staleness, staleness=staleness)
