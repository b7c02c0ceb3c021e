"""The adaptive planner: before each round, decide per node from its link.

Pre-round: poll the transport's counters for every live link, re-score the links, choose the
participants (strategy, quarantine, fairness), then per participant the codec, the local steps, the
batch split and the fragments an update goes up in (with overlap: every node's configured batch,
local steps that fill the round's period, codecs as loose as keeps its transfers within a tenth of
that work: meanwhile its next work runs from older parameters).
Post-round: fold the round's exchanges (and late updates' own upload measures) into the monitor,
judge who hurt the round (not a node that did on the planner's own settings: chosen before its link
was measured, or just made heavier, a change then undone), and undo a node's latest change when its
throughput or loss got worse because of it. "Because of it" matters: a change is usually made
because the link got worse, and then throughput falls whatever the settings. So the throughput a
change delivered is compared with what the previous settings would give on the link as measured
before that round (the model of the link that chose the change), not with the rate before it. With
overlap the rate is the node's own (samples over its work and waiting), since the turnaround also
holds the next round's work, and the old settings' rate is that of the longer of compute and
transfers. Every decision is recorded with its reason and published as a ``decision`` event; the
time spent deciding is measured against the round time."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hypergpu.adapt.batch import BatchBounds, BatchSizer
from hypergpu.adapt.compression import RAW, CodecChoice, CodecChooser, fragments_for
from hypergpu.adapt.knobs import Knobs, Trial, codec_name, describe, heavier, rollback_reason
from hypergpu.adapt.local_steps import LocalStepChooser
from hypergpu.adapt.monitor import NetworkMonitor
from hypergpu.adapt.policy import POLICIES, Policy
from hypergpu.adapt.quality import Quality
from hypergpu.adapt.selection import Candidate, NodeSelector, SelectionRules
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.protocol import Assignment
from hypergpu.round import NodeAnswer, NodeView, PlanView, RoundPlan, RoundRecord


#: Round deadline: this multiple of the expected exchange of the quorum's slowest node, plus a margin.
DEADLINE_FACTOR = 2.0
DEADLINE_MARGIN_S = 2.0
#: With overlap, the most of a node's work its update's upload (and its next parameters' download) may
#: take. Until the parameters its update went into arrive, the node's next work runs from older ones;
#: on the WAN bench's GPT (10 nodes, H 20, ``benches/bench_fold_delay.py``) a fold 10 steps into the
#: next work cost +0.073 in loss after round 2, 4 steps in +0.012 (even by round 3), and int4 with
#: error feedback +0.009 against fp16. So a codec tighter than the compute could hide is chosen.
FRESH_SHARE = 0.1


class AdaptivePlanner:
    """A :class:`~hypergpu.round.Planner` driven by link measurements.

    It reads only what each :class:`~hypergpu.round.PlanView` and
    :class:`~hypergpu.round.RoundRecord` hand it, and reports its decisions
    through ``publish`` (an :meth:`~hypergpu.events.EventBus.publish`).
    """

    label = "adaptive"

    def __init__(self, config: HyperGPUConfig, *, policy: str | None = None,
                 publish: Callable[..., Any] | None = None):
        a = config.adapt
        self.config = config
        self.policy: Policy = POLICIES[policy or a.policy]
        p = self.policy
        self.overlap, self.publish = config.training.overlap, publish
        self.monitor = NetworkMonitor(history=a.history, margin=p.margin, dwell=p.dwell, publish=publish,
                                      loss_limited=config.network.congestion != "bbr")
        self.selector = NodeSelector(SelectionRules(
            strategy=a.strategy, threshold=Quality(a.quality_threshold), top_n=a.top_n, slack=p.slack,
            strikes_to_quarantine=p.strikes_to_quarantine, quarantine_rounds=a.quarantine_rounds,
            probation_rounds=a.probation_rounds, fairness_rounds=a.fairness_rounds,
        ), history=a.history)
        self.batches = BatchSizer(
            BatchBounds(a.min_batch, a.max_batch, a.powers_of_two, p.step, p.deadband),
            global_batch=config.training.batch_size * config.nodes.count,
        )
        self.codecs = CodecChooser(budget_s=p.upload_budget_s, allowed=tuple(a.codecs), dwell=p.dwell)
        self.down_codecs = CodecChooser(
            budget_s=p.upload_budget_s, allowed=tuple(a.param_codecs), dwell=p.dwell
        )
        initial = config.training.local_steps or a.min_local_steps
        self.steps = LocalStepChooser(
            a.min_local_steps, a.max_local_steps, initial, p.compute_ratio, p.step, p.deadband
        )
        self.decisions: deque[dict[str, Any]] = deque(maxlen=a.history)
        self.knobs: dict[int, Knobs] = {}
        self.trials: dict[int, Trial] = {}
        self.frozen_until: dict[int, int] = {}
        self.outstanding: dict[int, int] = {}  # node -> the round it missed and may still be working on
        self.overhead_s = 0.0
        self.round_s = 0.0
        self._last_plan: RoundPlan | None = None
        self._rate: dict[int, float] = {}  # node -> samples per second of its latest exchange
        self._loss: dict[int, float] = {}
        self._shard: dict[int, int | None] = {}  # node -> samples in the shards it holds
        self._blind: dict[int, set[int]] = {}  # round -> its nodes whose settings were chosen on no measure
        self.param_bytes = 0

    @property
    def overhead(self) -> float:
        """Time spent planning and observing over the time spent in rounds."""
        return self.overhead_s / self.round_s if self.round_s > 0 else 0.0

    # --- before the round --------------------------------------------------------------

    def plan(self, round_id: int, view: PlanView) -> RoundPlan:
        started = time.perf_counter()
        try:
            return self._plan(round_id, view)
        finally:
            self.overhead_s += time.perf_counter() - started

    def _plan(self, round_id: int, view: PlanView) -> RoundPlan:
        self.param_bytes = 4 * view.num_params
        plan = RoundPlan(round_id)
        candidates = [c for c in (self._candidate(round_id, node, plan) for node in view.nodes) if c is not None]
        chosen, excluded = self.selector.select(round_id, candidates)
        for n, reason in excluded.items():
            plan.excluded[n] = reason
            if self._last_plan is None or n in self._last_plan.assignments:
                self._decide(round_id, n, "selection", "in", "out", reason)
        for n in chosen:
            if self._last_plan is not None and n not in self._last_plan.assignments:
                why = "fairness bound" if n in self.selector.forced else "link within bounds again"
                self._decide(round_id, n, "selection", "out", "in", why)
        # With overlap a node's transfers hide under its work: a larger batch would amortise nothing, only
        # lengthen the round and leave fewer inner steps per second of work.
        targets = ({n: self.config.training.batch_size for n in chosen} if self.overlap
                   else self.batches.targets({n: self._down_s(n) for n in chosen}))
        # Nodes in only for fairness set neither the round's period nor its deadline.
        paced = [n for n in chosen if n not in self.selector.forced] or chosen
        period = self._period_s(paced) if self.overlap else 0.0
        for n in chosen:
            plan.assignments[n] = self._assign(round_id, n, targets[n], period)
        self._blind[round_id] = {n for n in chosen if self.monitor.link(n).throughput_Bps is None}
        if chosen:
            # The round waits for the quorum's slowest expected node (twice its expected exchange, plus
            # a margin), not for the slowest of all: a node slower than that hurt the round (a strike),
            # and its update still counts, stale-weighted, when it comes.
            times = sorted(self._expected_s(n) for n in paced)
            quorum = min(len(times), max(1, math.ceil(self.config.coordinator.quorum * len(times))))
            plan.deadline_s = DEADLINE_FACTOR * times[quorum - 1] + DEADLINE_MARGIN_S
            if period > 0:
                # With overlap the round after next is dealt when this one closes: past about a period of waiting
                # on a straggler, the quorum's nodes run out of work. Its update counts in the next round.
                plan.deadline_s = min(plan.deadline_s, period + DEADLINE_MARGIN_S)
            plan.optional = set(chosen) - set(paced)
        self._last_plan = plan
        return plan

    def _candidate(self, round_id: int, node: NodeView, plan: RoundPlan) -> Candidate | None:
        """Refresh the node's link from the transport's latest figures; None if it sits out."""
        n = node.node_id
        self._shard[n] = node.shard_samples
        if node.link is not None:
            self.monitor.observe_stats(n, node.link)
        link = self.monitor.refresh(n, round_id)
        behind = round_id - self.outstanding.get(n, -10)  # since the round it missed, if any
        # With overlap the round after the miss was dealt already: a node late only in its upload needs this
        # plan's work (WAN bench run 24: such hosts idled ~60 s). It sits out once two rounds behind.
        if behind <= 3 and (behind > 2 or not self.overlap):
            plan.excluded[n] = f"still working on round {round_id - behind}"
            return None
        if behind > 3:
            self.outstanding.pop(n, None)
        return Candidate(n, link.quality, link.score or 0.0, self._prospective_s(n))

    def _down_s(self, n: int) -> float:
        knobs = self.knobs.get(n)
        factor = knobs.down.size_factor if knobs is not None else 1.0
        return self.monitor.link(n).transfer_s(self.param_bytes * factor)

    def _predicted_rate(self, n: int, knobs: Knobs) -> float | None:
        """Samples per second ``knobs`` would give on node ``n``'s link as now measured."""
        link = self.monitor.link(n)
        if not link.sample_s:
            return None
        samples = knobs.local_steps * knobs.effective_batch
        if self.overlap:  # the transfers travel under the next work: the longer of the two sets the pace
            return samples / max(link.sample_s * samples,
                                 self._exchange_s(n, knobs.down, knobs.codec, 0.0, knobs.fragments))
        return samples / self._exchange_s(n, knobs.down, knobs.codec, link.sample_s * samples, knobs.fragments)

    def _exchange_s(self, n: int, down: CodecChoice, up: CodecChoice, compute_s: float, fragments: int = 1) -> float:
        """Parameters down in ``down``, ``compute_s`` of work, the update up in ``up`` (one of its
        ``fragments``), on ``n``'s link."""
        link = self.monitor.link(n)
        return (link.transfer_s(self.param_bytes * down.size_factor)
                + link.transfer_s(self.param_bytes * up.size_factor / fragments) + compute_s)

    def _fragments(self, n: int, raw_s: float, up: CodecChoice, budget_s: float | None) -> int:
        """The fragments the update goes up in, in ``up``, within the budget (training.link_fragments);
        1 until ``n``'s link is measured (on the loss bound's guess fast links were cut, and loss rose)."""
        return 1 if self.monitor.link(n).throughput_Bps is None else fragments_for(raw_s * up.size_factor, self.codecs.budget_for(budget_s),
                             self.config.training.link_fragments)

    def _prospective_s(self, n: int) -> float:
        """The exchange node ``n`` would have with the codecs its link calls for.

        Selection weighs this rather than the current settings: a node is
        not left out for being slow with settings it is about to leave.
        """
        return self._lean_exchange_s(n, self.monitor.link(n).wall_s or 0.0)

    def _lean_exchange_s(self, n: int, compute_s: float) -> float:
        """The exchange with the codecs the plain budget calls for on ``n``'s link (the most it needs)."""
        raw_s = self.monitor.link(n).transfer_s(self.param_bytes)
        up, down = self.codecs.ideal(raw_s), self.down_codecs.ideal(raw_s)
        return self._exchange_s(n, down, up, compute_s, self._fragments(n, raw_s, up, None))

    def _expected_s(self, n: int) -> float:
        """The exchange node ``n`` should have with its current settings (raw before any)."""
        knobs = self.knobs.get(n)
        down, up = (knobs.down, knobs.codec) if knobs is not None else (RAW, RAW)
        return self._exchange_s(n, down, up, self.monitor.link(n).wall_s or 0.0, knobs.fragments if knobs else 1)

    def _period_s(self, paced: list[int]) -> float:
        """With overlap: how long a round should last so that no node waits for its next work.

        A node's transfers travel while it computes, so the slowest link sets the pace:
        the longest of each paced node's exchange (its transfers, in the codecs the plain
        budget calls for, at the compute ratio) and its shortest work (the configured H). The period does not
        follow the codecs the overlap budget then allows (that loop would only lengthen
        rounds). Nodes not yet measured (compute, or a link's exchange) add nothing."""
        period = 0.0
        for n in paced:
            link, knobs = self.monitor.link(n), self.knobs.get(n)
            if knobs is None or not link.sample_s or link.throughput_Bps is None:
                continue
            comm = self._lean_exchange_s(n, 0.0)
            shortest = self.steps.initial * knobs.effective_batch * link.sample_s
            period = max(period, self.policy.compute_ratio * comm, shortest)
        return period

    def _fresh_s(self, n: int, samples: int) -> float | None:
        """With overlap: how long node ``n``'s transfers may take, for ``samples`` samples of work
        (the work it is about to be given, not its last).

        Its next work runs from older parameters until the ones its update went into arrive: the
        upload and the download are that delay. A share of the work (``FRESH_SHARE``) keeps it
        short; error-fed codecs lose next to nothing, stale starts lose rounds (module doc)."""
        link = self.monitor.link(n)
        if not self.overlap or n not in self.knobs or not link.sample_s:
            return None
        return samples * link.sample_s * FRESH_SHARE

    def _assign(self, round_id: int, n: int, batch_target: int, period_s: float = 0.0) -> Assignment:
        link = self.monitor.link(n)
        old = self.knobs.get(n)
        if old is not None and self.frozen_until.get(n, 0) >= round_id:
            knobs = old
        else:
            raw_s = link.transfer_s(self.param_bytes)  # the whole vector, either way
            shard = self._shard.get(n)
            split = self.batches.choose(n, batch_target, shard)
            step_s = link.sample_s * split.effective if link.sample_s else None
            # Amortising a slow link with more local steps stops at a few passes
            # over the node's own shard: beyond that it overfits its slice of the data.
            limit = int(self.config.adapt.max_local_epochs * shard / split.effective) if shard else None
            budget, guess = None, link.throughput_Bps is None
            if self.overlap:
                # H follows what the link needs at the plain budget; the codecs then relax within
                # the compute of the work H gives (following the relaxed ones would feed back).
                comm = self._lean_exchange_s(n, 0.0)
                # Until the link carried a measured exchange its figure is a guess (by the loss
                # bound, a shaper's queue drops can read as a link 100x slower): H stays as configured.
                steps = self.steps.choose(n, comm, None if guess else step_s, limit, period_s,
                                          least=self.steps.initial)
                budget = self._fresh_s(n, steps * split.effective)
            codec = self.codecs.choose(n, raw_s, budget, guess=guess)
            down = self.down_codecs.choose(n, raw_s, budget, guess=guess)
            fragments = self._fragments(n, raw_s, codec, budget)
            if not self.overlap:  # H amortises the exchange in the codecs chosen
                comm = self._exchange_s(n, down, codec, 0.0, fragments)
                steps = self.steps.choose(n, comm, step_s, limit, period_s)
            knobs = Knobs(split, steps, codec, down, fragments)
            if old is not None and knobs != old:
                why = {"codec": f"raw upload ~{raw_s:.2f} s vs budget {self.codecs.budget_for(budget):g} s",
                       "fragments": f"{codec_name(codec)} upload ~{raw_s * codec.size_factor:.2f} s vs budget "
                       f"{self.codecs.budget_for(budget):g} s",
                       "down_codec": f"raw download ~{raw_s:.2f} s vs budget {self.down_codecs.budget_for(budget):g} s",
                       "local_steps": f"communication ~{comm:.2f} s, step ~{(step_s or 0) * 1e3:.1f} ms"
                       + (f", round period ~{period_s:.1f} s" if period_s else ""),
                       "batch": f"exchange ~{comm:.2f} s; share of the global batch {self.batches.global_batch}"}
                self._changed(round_id, n, old, knobs, why)
        self.knobs[n] = knobs
        return Assignment(
            batch_size=knobs.batch.batch_size, local_steps=knobs.local_steps, accumulation=knobs.batch.accumulation,
            codec=knobs.codec.codec, codec_ratio=knobs.codec.ratio, down_codec=knobs.down.codec,
            fragments=knobs.fragments,
        )

    def _changed(self, round_id: int, n: int, old: Knobs, knobs: Knobs, why: dict[str, str]) -> None:
        """Record each knob that moved, with its reason, and watch the change as a trial."""
        moved = [(knob, before, after, reason) for knob, before, after, reason in (
            ("codec", codec_name(old.codec), codec_name(knobs.codec), why["codec"]),
            ("down_codec", codec_name(old.down), codec_name(knobs.down), why["down_codec"]),
            ("local_steps", old.local_steps, knobs.local_steps, why["local_steps"]),
            ("batch", old.effective_batch, knobs.effective_batch, why["batch"]),
            ("fragments", old.fragments, knobs.fragments, why["fragments"]),
        ) if before != after]
        for knob, before, after, reason in moved:
            self._decide(round_id, n, knob, before, after, reason)
        faster = (knobs.codec != old.codec or knobs.down != old.down or knobs.local_steps > old.local_steps
                  or knobs.effective_batch > old.effective_batch or knobs.fragments > old.fragments)
        self.trials[n] = Trial(round_id, old, self._loss.get(n), [m[0] for m in moved], faster,
                               heavier(old, knobs))

    # --- after the round ---------------------------------------------------------------

    def observe(self, record: RoundRecord) -> None:
        started = time.perf_counter()
        try:
            self._observe(record)
        finally:
            self.overhead_s += time.perf_counter() - started
            self.round_s += record.duration_s

    def _observe(self, record: RoundRecord) -> None:
        round_id = record.round
        answers = record.answers
        asked = record.participants
        for n, late in record.late.items():  # a node that missed a round delivered after all
            self.outstanding.pop(n, None)
            self.selector.delivered(n, late.round)
            self.monitor.observe_upload(n, late.upload_s, late.upload_bytes)
        # What the old settings would give, from the link as measured before this
        # round: the exchange under judgement must not vouch for itself.
        would = {n: self._predicted_rate(n, t.before) for n, t in self.trials.items() if t.round == round_id}
        for n in asked:
            answer = answers.get(n)
            if answer is None:
                self.monitor.observe_exchange(n, round_id=round_id, ok=False)
                self.outstanding[n] = round_id
                continue
            moved = (answer.params_bytes or self.param_bytes) + answer.update_bytes
            self.monitor.observe_exchange(
                n, round_id=round_id, ok=True, turnaround_s=answer.turnaround_s,
                compute_s=answer.compute_s, wall_s=answer.wall_s, samples=answer.samples,
                bytes_moved=moved, upload=(answer.upload_s, answer.upload_bytes) if answer.upload_s else None,
            )
            # With overlap the turnaround holds the next round's work too: the node's own clock
            # (work and waiting since its last update) says what its settings gave.
            took = answer.compute_s + answer.idle_s if self.overlap else answer.turnaround_s
            if took:
                self._rate[n] = answer.samples / took
            if answer.loss is not None:
                self._loss[n] = answer.loss
        hurt, blind = self.selector.hurt(asked, answers), self._blind.pop(round_id, set())
        own = {n: w for n, w in hurt.items() if (t := self.trials.get(n)) and t.round == round_id and t.heavier}
        pardon = {**{n: "on settings chosen before its link was measured" for n in hurt if n in blind},
                  **{n: "under settings the planner just made heavier" for n in own}}
        for n, what in self.selector.judge(round_id, asked, answers, pardon, late_counts=self.overlap).items():
            self._decide(round_id, n, "standing", None, self.selector.state(n).standing.value, what)
        self._check_trials(round_id, answers, would, own)

    def _check_trials(self, round_id: int, answers: dict[int, NodeAnswer],
                      predicted: dict[int, float | None], own: dict[int, str]) -> None:
        for n, trial in list(self.trials.items()):
            if trial.round != round_id:
                continue
            del self.trials[n]
            why = rollback_reason(trial, self.policy, answered=n in answers, rate=self._rate.get(n), loss=self._loss.get(n),
                                  would=predicted.get(n), own=own.get(n))
            if why is None:
                continue
            now = self.knobs.get(n)
            self.knobs[n] = trial.before
            self.codecs.restore(n, trial.before.codec)
            self.down_codecs.restore(n, trial.before.down)
            self.steps.restore(n, trial.before.local_steps)
            self.batches.restore(n, trial.before.effective_batch)
            self.frozen_until[n] = round_id + self.policy.freeze_rounds
            self._decide(round_id, n, "rollback", describe(now), describe(trial.before),
                         f"{', '.join(trial.what)} change undone: {why}")

    # --- records ---------------------------------------------------------------------

    def _decide(self, round_id: int, node: int, knob: str, old: Any, new: Any, reason: str) -> None:
        entry = {"round": round_id, "node": node, "knob": knob, "old": old, "new": new, "reason": reason}
        self.decisions.append(entry)
        if self.publish is not None:
            self.publish("decision", **entry)

    def status(self) -> dict[str, Any]:
        """Links, standings, current settings and recent decisions, for the dashboard."""
        return {
            "policy": self.policy.name, "links": self.monitor.snapshot(), "overhead": self.overhead,
            "standing": {n: {"standing": s.standing.value, "contribution": s.contribution,
                             "excluded_streak": s.excluded_streak} for n, s in self.selector.standing.items()},
            "knobs": {n: describe(k) for n, k in self.knobs.items()},
            "decisions": list(self.decisions)[-50:], "exclusions": list(self.selector.exclusions)[-50:],
        }
