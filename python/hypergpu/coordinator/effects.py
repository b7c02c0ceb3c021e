"""Measuring each accepted update's effect on a held-out loss, off the round's path.

After a round closes (its aggregate applied, the next round free to start),
:meth:`EffectScorer.begin` hands the round's own updates to one worker thread
and returns the round's record with a :class:`~hypergpu.round.effects.RoundEffects`
that the worker fills. The worker loads the round's base parameters into a
scratch copy of the model, evaluates it on ``rewards.effect_batch`` held-out
samples (256, or 32 blocks of a language model, unless set; drawn afresh
each round, unpredictably, from the samples no node trains on: the run's
held-out set), then each scored update applied alone
(``base + update``, on the round's fragment) on the same samples, and judges
each by :func:`hypergpu.rewards.effect.judge`. The chain tally waits for the
effects only when it closes an epoch.

Cost per round: (1 + k) forward passes over ``effect_batch`` samples, k the
updates scored (``rewards.effect_nodes`` caps it, drawn at random, for large
models); memory: one scratch model, the base vector and the k updates until
they are scored. At most :data:`MAX_PENDING` rounds are in flight: beyond that
:meth:`begin` waits, so a slow scorer holds up the run rather than memory
growing without bound. Late updates (for an earlier round) and rounds that
were not applied are not scored.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import secrets
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from hypergpu.config.effects import DEFAULT_EFFECT_BLOCKS, DEFAULT_EFFECT_SAMPLES
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.data.samples import SampleSource
from hypergpu.events import EventBus
from hypergpu.model.manager import ModelManager
from hypergpu.model.task import Task
from hypergpu.rewards.effect import EffectPolicy, judge
from hypergpu.round import Round, RoundRecord
from hypergpu.round.effects import NodeEffect, RoundEffects

log = logging.getLogger("hypergpu.coordinator")

#: Rounds whose effects may be measured at once before :meth:`EffectScorer.begin` waits.
MAX_PENDING = 2
#: Samples per forward pass while scoring.
CHUNK = 256


@dataclass
class EffectTotals:
    """One node's effect figures over the run (for the summary and status)."""

    scored: int = 0
    harmful: int = 0
    finite: int = 0  # scored updates after which the loss was finite
    effect_sum: float = 0.0  # over those
    last_round: int | None = None  # the latest round one of its updates was scored in
    last_effect: float | None = None  # its effect then (None: it broke the model)
    last_harmful: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"effects_scored": self.scored, "effects_harmful": self.harmful,
                "effect_mean": self.effect_sum / self.finite if self.finite else None,
                "effect_last": self.last_effect, "effect_last_round": self.last_round,
                "effect_last_harmful": self.last_harmful}


class EffectScorer:
    """Scores each applied round's updates by their effect on a held-out loss."""

    def __init__(self, config: HyperGPUConfig, model: ModelManager, heldout: SampleSource, task: Task,
                 events: EventBus | None = None):
        r = config.rewards
        wanted = r.effect_batch
        if wanted is None:
            wanted = DEFAULT_EFFECT_BLOCKS if task.name == "lm" else DEFAULT_EFFECT_SAMPLES
        self.batch = min(wanted, len(heldout))
        self.nodes = r.effect_nodes
        self.policy = EffectPolicy(noise_z=r.effect_noise_z, margin=r.effect_margin, scale=r.effect_scale)
        self.heldout = heldout
        self.task = task
        self.events = events
        self.totals: dict[int, EffectTotals] = {}
        self._manager = model
        self._scratch: torch.nn.Module | None = None
        # Not the run's seed (nodes are told it): which samples and updates are drawn must not be known ahead.
        self._rng = np.random.default_rng(secrets.randbits(64))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future[None], RoundEffects]] = deque()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.batch > 0

    async def begin(self, rnd: Round, base: np.ndarray, where: slice, record: RoundRecord) -> RoundRecord:
        """Start scoring ``rnd``'s updates (``base``: the full parameters the round began
        from, ``where``: the part its updates cover); ``record`` with its effects to come."""
        updates = rnd.take_updates()
        if not self.enabled or not record.applied or not updates:
            return record
        chosen = sorted(updates)
        if self.nodes is not None and len(chosen) > self.nodes:
            chosen = sorted(int(n) for n in self._rng.choice(chosen, self.nodes, replace=False))
        effects = RoundEffects(record.round, chosen, self.batch)
        while len(self._pending) >= MAX_PENDING:
            await asyncio.wrap_future(self._pending[0][0])
            self._pending.popleft()
        if self._scratch is None:  # copied here, on the loop, while nothing changes the model
            self._scratch = copy.deepcopy(self._manager.model)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="hypergpu-effects")
        idx = np.sort(self._rng.choice(len(self.heldout), self.batch, replace=False))
        # buffers (batch-norm statistics) are not in the flat vector: the model's, as of now
        buffers = [b.detach().clone() for b in self._manager.model.buffers()]
        job = self._pool.submit(self._score, effects, base, where, {n: updates[n] for n in chosen}, idx, buffers)
        self._pending.append((job, effects))
        return replace(record, effects=effects)

    async def settled(self) -> None:
        """Wait for every round being scored."""
        while self._pending:
            await asyncio.wrap_future(self._pending.popleft()[0])

    def close(self) -> None:
        """Stop the worker; rounds not scored yet are filled as unscored, so no one waits on them."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        while self._pending:
            self._pending.popleft()[1].fill({}, None, "the coordinator closed before they were scored")

    def of_node(self, node_id: int) -> dict[str, Any]:
        """A node's effect figures over the run (JSON-ready)."""
        with self._lock:
            return (self.totals.get(node_id) or EffectTotals()).as_dict()

    # --- on the worker thread --------------------------------------------------------

    def _score(self, effects: RoundEffects, base: np.ndarray, where: slice,
               updates: dict[int, np.ndarray], idx: np.ndarray, buffers: list[torch.Tensor]) -> None:
        by_node: dict[int, NodeEffect] = {}
        try:
            assert self._scratch is not None
            with torch.no_grad():
                for mine, theirs in zip(self._scratch.buffers(), buffers):
                    mine.copy_(theirs)
            x, y = self.heldout.batch(idx)
            before = self._losses(base, x, y)
            for node_id, update in updates.items():
                candidate = base.copy()
                candidate[where] += update
                by_node[node_id] = judge(before, self._losses(candidate, x, y), self.policy)
            effects.fill(by_node, float(before.mean()))
        except Exception as exc:  # a failed scoring leaves the round unscored, never the run ended
            log.exception("round %d: scoring the updates' effects failed", effects.round)
            effects.fill({}, None, f"{type(exc).__name__}: {exc}")
        self._record(effects)

    @torch.no_grad()
    def _losses(self, flat: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Per-sample held-out losses of the model with parameters ``flat``."""
        model = self._scratch
        assert model is not None
        self._manager.layout.load_into(model, flat)
        model.eval()
        device = next(model.parameters()).device
        out = [self.task.sample_losses(model(x[i:i + CHUNK].to(device)), y[i:i + CHUNK].to(device)).float().cpu()
               for i in range(0, len(x), CHUNK)]
        return torch.cat(out).numpy().astype(np.float64)

    def _record(self, effects: RoundEffects) -> None:
        with self._lock:
            for node_id, e in effects.items():
                t = self.totals.setdefault(node_id, EffectTotals())
                t.scored += 1
                t.harmful += e.harmful
                if e.effect is not None:
                    t.finite += 1
                    t.effect_sum += e.effect
                if t.last_round is None or effects.round >= t.last_round:
                    t.last_round, t.last_effect, t.last_harmful = effects.round, e.effect, e.harmful
        if self.events is not None:  # the bus is thread-safe
            self.events.publish("training", type="effects", round=effects.round, **effects.as_dict(),
                                nodes={str(n): e.as_dict() for n, e in effects.items()})
