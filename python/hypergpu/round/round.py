"""One training round as a plain object: no sockets, no asyncio, no clock.

A :class:`Round` holds the plan, the parameters the round started from,
the accumulator its accepted updates fold into and the answers it got.
The coordinator's I/O drives it — it hands over each ``update`` message as
it arrives (:meth:`Round.accept` answers with the :class:`~hypergpu.protocol.Ack`
to send back), asks :meth:`Round.expire` whether to stop waiting, and
finally :meth:`Round.close` folds it into a :class:`RoundRecord`. Every
time is passed in, so a test can drive a round through quorum, deadline,
late and duplicate updates directly.

Admission across rounds (exactly once, staleness) is the shared
:class:`~hypergpu.round.book.RoundBook`'s; a round opens it on creation.

What the accepted updates become is the configured rule's
(:mod:`hypergpu.update.robust`, applied in :meth:`Round.close`). Every update
is folded into the running weighted sum as it arrives — that scan is also its
non-finite check and gives its norm — and the current round's updates are
held for their cosines and, after the close, handed over for their effect
scoring (:meth:`Round.take_updates`); the rules other than ``mean`` hold the late
updates they also aggregate. The module table of :mod:`hypergpu.update.robust`
says what each rule needs in memory.

With ``training.link_fragments`` an update may cover a run of the round's
pieces only (its meta's ``part``; :mod:`hypergpu.round.pieces`): every
update is then held, and when some update is partial each piece is
aggregated over the updates that sent it, and only the pieces some update
covered move (:attr:`Round.moved`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from hypergpu.errors import HyperGPUError, ShapeMismatchError, UpdateError
from hypergpu.protocol import Ack, Message, UpdateMeta, parse_meta
from hypergpu.round.book import Decision, RoundBook, Verdict
from hypergpu.round.pieces import Pieces
from hypergpu.round.plan import RoundPlan
from hypergpu.round.records import NodeAnswer, RoundRecord
from hypergpu.update.aggregate import Accumulator, cosines
from hypergpu.update.codec import decode as decode_update
from hypergpu.update.robust import Aggregate, Rule, aggregate

#: Refusal reason for an update that cannot be decoded or whose meta does not fit.
INVALID = "invalid"
#: Refusal reason for an update claiming more samples than its node was assigned.
OVERCLAIM = "overclaim"
#: The least a round waits past its quorum under ``coordinator.quorum_grace`` (a few more
#: answers are often a moment behind the last one the quorum needed).
QUORUM_GRACE_MIN_S = 2.0
#: Refusal reason for an update that began from a model more versions behind than allowed.
STALE = "stale"


class Round:
    """The state of one open round and the updates it takes."""

    def __init__(self, plan: RoundPlan, params: np.ndarray, book: RoundBook, *, now: float, timeout_s: float,
                 assigned: dict[int, int] | None = None, version: int | None = None,
                 sent: dict[int, tuple[float, int]] | None = None, aggregation: Rule | None = None,
                 fragments: int = 1, deterministic: bool = False, quorum_grace: float | None = None,
                 pieces: tuple[slice, ...] | None = None):
        self.plan = plan
        self.id = plan.round
        self.params = params
        self.book = book
        self.opened_at = now
        self.timeout_s = timeout_s
        # Stop waiting at the plan's deadline once a quorum is in; without one,
        # wait a second timeout before giving up on the round.
        self.deadline = now + min(timeout_s, plan.deadline_s or timeout_s)
        # With overlap: stop this fraction of the quorum's time after it is in (QUORUM_GRACE_MIN_S at least)
        self.quorum_grace = quorum_grace
        self._quorum_at: float | None = None
        # training.link_fragments: the pieces an update may cover a run of (its meta's ``part``);
        # each keeps its own running sum, so there is none over the whole
        self.pieces = Pieces(pieces) if pieces is not None and len(pieces) > 1 else None
        self.acc = Accumulator(params.shape) if self.pieces is None else None
        self._parts: dict[tuple[int, int], slice] = {}  # the held updates that cover less than the whole
        # with pieces, after the aggregate: the slices of ``params`` some update covered (only they move)
        self.moved: tuple[slice, ...] | None = None
        self.answers: dict[int, NodeAnswer] = {}
        self.late: dict[int, NodeAnswer] = {}
        self.mean: np.ndarray | None = None
        # the model version ``params`` are: an update that began from an older one is stale
        self.version = version
        # Streaming DiLoCo: rounds take turns over this many fragments; ``params`` is this one's
        self.fragments = fragments
        # node -> (when, bytes) of the message that gave it this round's work (sent ahead, with overlap)
        # (the dealer's own dict: sends still running record into it)
        self._sent: dict[int, tuple[float, int]] = sent if sent is not None else {}
        self.rule = aggregation or Rule()
        # coordinator.deterministic: the updates are summed in (round, node) order at close, not in
        # arrival order, so the result does not depend on which node's bytes came first
        self.deterministic = deterministic
        # (round, node) -> (update, weight, norm) in the order they were folded in: this
        # round's for cosines, and late ones too for the rules that need more than the sum
        self._held: dict[tuple[int, int], tuple[np.ndarray, float, float]] = {}
        self._sealed = False
        self._own: dict[int, np.ndarray] = {}  # after close: this round's updates, by node
        # What each node was given to do caps what its update may claim and weighs it:
        # the coordinator's count, else the plan's steps x batch x accumulation.
        if assigned is None:
            assigned = {n: a.local_steps * a.batch_size * a.accumulation
                        for n, a in plan.assignments.items() if a.local_steps > 0}
        book.open(self.id, plan.participants, plan.optional, assigned)

    # --- while open -------------------------------------------------------------

    def sent(self, node_id: int, nbytes: int, now: float) -> None:
        """The node's parameters for this round went out at ``now`` (``nbytes`` on the wire)."""
        self._sent[node_id] = (now, nbytes)

    def owes(self, node_id: int) -> bool:
        """Whether ``node_id`` was asked and has not answered yet."""
        return not self._sealed and node_id in self.plan.assignments and node_id not in self.book.reported

    def accept(self, node_id: int, msg: Message, size: int, now: float) -> Ack:
        """Judge, decode and fold one ``update`` message; the ack says what became of it."""
        decision = self.book.check(node_id, msg.round) if not self._sealed else None
        if decision is not None and decision.accepted and (self.id - msg.round) % self.fragments:
            decision = Decision(Verdict.LATE, staleness=self.id - msg.round)  # another fragment's: too late
        if decision is None or not decision.accepted:
            reason = decision.verdict.value if decision is not None else Verdict.CLOSED.value
            return Ack(round=msg.round, accepted=False, reason=reason)
        try:
            meta = parse_meta(UpdateMeta, msg)
        except HyperGPUError as exc:
            return Ack(round=msg.round, accepted=False, reason=INVALID, detail=str(exc))
        cap = self.book.assigned(node_id, msg.round)
        if cap is not None and meta.samples > cap:
            # Weighted by its own claim, one update could outweigh all the others.
            return Ack(round=msg.round, accepted=False, reason=OVERCLAIM,
                       detail=f"claims {meta.samples} samples; it was assigned {cap}")
        lag = self._lag(meta)
        if lag > self.book.max_staleness:
            return Ack(round=msg.round, accepted=False, reason=STALE,
                       detail=f"began {lag} model versions back; at most {self.book.max_staleness} are taken")
        # Weighed by how far behind it began: a late update under overlap began a version
        # before its round's on-time ones, so it weighs less than they do.
        weight = self.book.decay ** max(decision.staleness, lag)
        try:
            part = self._part(meta)
            update = self._decode(msg, part)
            w = meta.samples * weight
            norm = self.acc.add(update, weight=w) if self.acc is not None else self._pieces().fold(update, part, w)
        except HyperGPUError as exc:
            return Ack(round=msg.round, accepted=False, reason=INVALID, detail=str(exc))
        self.book.commit(node_id, msg.round)
        if self._quorum_at is None and self.book.has_quorum():
            self._quorum_at = now
        sent = self._sent.get(node_id) if msg.round == self.id else None
        answer = NodeAnswer(
            node_id=node_id,
            round=msg.round,
            samples=meta.samples,
            loss=meta.loss if meta.loss is not None and math.isfinite(meta.loss) else None,
            compute_s=meta.compute_s,
            wall_s=meta.wall_s,
            turnaround_s=now - sent[0] if sent is not None else None,
            update_bytes=size,
            params_bytes=sent[1] if sent is not None else None,
            codec=msg.codec,
            weight=weight,
            idle_s=meta.idle_s,
            norm=norm,
            upload_s=meta.upload_s,
            upload_bytes=meta.upload_bytes,
        )
        late = msg.round != self.id
        (self.late if late else self.answers)[node_id] = answer
        if not late or not self.rule.streams or self.deterministic or self.pieces is not None:
            self._held[(msg.round, node_id)] = (update, meta.samples * weight, norm)
            if part is not None:
                self._parts[(msg.round, node_id)] = part
        # This round opened as the late update's round closed: the time since is how late it is.
        return Ack(round=msg.round, accepted=True, late_s=max(0.0, now - self.opened_at) if late else None)

    def _pieces(self) -> Pieces:
        assert self.pieces is not None  # a round without pieces has its running sum (``acc``)
        return self.pieces

    def _part(self, meta: UpdateMeta) -> slice | None:
        """The run of pieces an update covers (None: all of the round's parameters)."""
        if meta.part is None or meta.part == (0, self.params.size):
            return None
        if self.pieces is None:
            raise UpdateError(f"update covers {list(meta.part)}: this round takes whole updates only")
        return self.pieces.part(*meta.part)

    def _lag(self, meta: UpdateMeta) -> int:
        """Model versions an update missed before it began, against this round's: 0 for an
        on-time one without overlap, 1 with it (a node starts the next work before the last
        outer step reaches it), one more for each round it is late."""
        if self.version is None or meta.version is None:
            return 0
        return max(0, self.version - meta.version)

    def _decode(self, msg: Message, part: slice | None) -> np.ndarray:
        raw = msg.sections.get("update")
        if raw is None:
            raise UpdateError("update message has no 'update' section")
        expected = self.params.shape if part is None else (part.stop - part.start,)
        update = raw if msg.codec == "raw" else decode_update(raw, msg.codec, zstd=msg.zstd, shape=expected)
        if update.shape != expected:
            raise ShapeMismatchError(f"update has shape {update.shape}, the model has {expected}")
        return update

    def expire(self, now: float) -> bool:
        """Whether to stop waiting: everyone answered, or the deadline passed with a
        quorum, or a second timeout passed without one."""
        if self._sealed or self.book.complete():
            return True
        if now < self.deadline:
            return now >= self._grace_end()
        return self.book.has_quorum() or now > self.deadline + self.timeout_s

    def _grace_end(self) -> float:
        """When the quorum's grace runs out (never without a grace or a quorum)."""
        if self.quorum_grace is None or self._quorum_at is None:
            return math.inf
        took = self._quorum_at - self.opened_at
        return self._quorum_at + max(QUORUM_GRACE_MIN_S, self.quorum_grace * took)

    def wait_s(self, now: float) -> float:
        """How long the driver may sleep before asking :meth:`expire` again (absent updates)."""
        end = min(self.deadline, self._grace_end())
        return max(0.05, end - now) if now < end else 0.25

    # --- closing ------------------------------------------------------------------

    @property
    def sealed(self) -> bool:
        """Whether the round takes no more updates (it is closing, or closed)."""
        return self._sealed

    def seal(self) -> None:
        """Take no more updates (the driver calls this on its own thread before :meth:`close`)."""
        if not self._sealed:
            self._sealed = True
            self.book.close()

    @property
    def applicable(self) -> bool:
        """Whether the round has something to apply: accepted updates and a quorum."""
        return (self.acc if self.acc is not None else self._pieces()).count > 0 and self.book.has_quorum()

    def close(self, now: float, apply: Callable[[np.ndarray], int], model_version: int) -> RoundRecord:
        """Aggregate the updates by the configured rule and apply the result (through ``apply``,
        which returns the new model version; with pieces only :attr:`moved` may move) if the
        round has a quorum, score each answer against it, and record the round. A result the
        kernels refuse (a sum that overflows float32) or ``apply`` refuses (parameters out of
        bounds) is not applied: the round is recorded as such, with why, and the run goes on."""
        self.seal()
        applied = self.applicable
        answers, late = dict(self.answers), dict(self.late)
        outcome: Aggregate | None = None
        failure = None
        if applied:
            try:
                outcome = self._aggregate()
                model_version = apply(outcome.value)
            except HyperGPUError as exc:
                applied, outcome, failure = False, None, f"{self.rule.name}: {exc}"
        if outcome is not None:
            self.mean = outcome.value
            self._mark(outcome, answers, late)
        # This round's own updates stay for their effect scoring until the driver takes them.
        self._own = {n: self._whole((r, n)) for (r, n) in self._held if r == self.id}
        self._held, self._parts = {}, {}
        # An update the rule dropped (Krum) is not in the model: not applied, its samples not trained.
        kept = [a for a in [*answers.values(), *late.values()] if not a.dropped]
        self.book.decided(self.id, applied, [(a.node_id, a.round) for a in kept])
        self.book.decided(self.id, False, [(a.node_id, a.round) for a in [*answers.values(), *late.values()]
                                           if a.dropped])
        reported = self.book.reported
        losses = [a.loss for a in self.answers.values() if a.loss is not None]
        return RoundRecord(
            round=self.id,
            applied=applied,
            participants=sorted(self.plan.participants),
            reported=sorted(reported),
            missing=sorted(self.plan.participants - reported),
            excluded=dict(self.plan.excluded),
            train_loss=float(np.mean(losses)) if losses else None,
            samples=sum(a.samples for a in kept),
            duration_s=now - self.opened_at,
            model_version=model_version,
            assignments=dict(self.plan.assignments),
            answers=answers,
            late=late,
            aggregation=self.rule.name,
            clip_norm=outcome.clip_norm if outcome is not None else None,
            clipped=len(outcome.clipped) if outcome is not None else 0,
            dropped=len(outcome.dropped) if outcome is not None else 0,
            trimmed=outcome.trimmed if outcome is not None else 0,
            not_applied=failure,
        )

    def take_updates(self) -> dict[int, np.ndarray]:
        """This round's own accepted updates by node (after :meth:`close`), handed over once:
        the round keeps no reference, so they live only as long as the taker holds them."""
        own, self._own = self._own, {}
        return own

    def _whole(self, key: tuple[int, int]) -> np.ndarray:
        """A held update over the whole of the round's parameters (zero where it sent nothing)."""
        update, part = self._held[key][0], self._parts.get(key)
        if part is None:
            return update
        whole = np.zeros(self.params.shape, np.float32)
        whole[part] = update
        return whole

    def _aggregate(self) -> Aggregate:
        if self.deterministic:
            self._held = dict(sorted(self._held.items()))
        if self.pieces is not None and self._parts:
            parted = [(u, w, self._parts.get(key)) for key, (u, w, _) in self._held.items()]
            outcome, self.moved = self.pieces.aggregate(self.rule, parted, ordered=self.deterministic)
            return outcome
        streamed = self.acc
        if self.deterministic or streamed is None:
            # float sums depend on their order: fold again in (round, node) order (with pieces
            # the running sums are per piece, and every update whole: fold the whole here)
            streamed = Accumulator(self.params.shape)
            for update, weight, _ in self._held.values():
                streamed.add(update, weight=weight)
        held = list(self._held.values())
        if self.rule.streams:
            return aggregate(self.rule, [], [], [], streamed=streamed)
        # Current and late updates alike: what the running sum holds, in its order.
        updates, weights, norms = zip(*held) if held else ((), (), ())
        return aggregate(self.rule, list(updates), list(weights), list(norms), streamed=streamed)

    def _mark(self, outcome: Aggregate, answers: dict[int, NodeAnswer], late: dict[int, NodeAnswer]) -> None:
        """Each answer with its cosine against the result, and whether the rule clipped or dropped it."""
        keys = list(self._held)
        current = [k for k in keys if k[0] == self.id]
        groups: dict[tuple[int, int] | None, list[tuple[int, int]]] = {}
        for k in current:  # each against the result where it was sent
            part = self._parts.get(k)
            groups.setdefault(None if part is None else (part.start, part.stop), []).append(k)
        for bounds, mine in groups.items():
            where = slice(None) if bounds is None else slice(*bounds)
            scores = cosines([self._held[k][0] for k in mine], outcome.value.reshape(-1)[where])
            for (_, n), c in zip(mine, scores):
                if math.isfinite(c):
                    answers[n] = replace(answers[n], cosine=float(c))
        for i, (r, n) in enumerate(keys):
            book = answers if r == self.id else late
            if (i in outcome.clipped or i in outcome.dropped) and n in book and book[n].round == r:
                book[n] = replace(book[n], clipped=i in outcome.clipped, dropped=i in outcome.dropped)
