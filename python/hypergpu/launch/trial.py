"""Run one local training (coordinator here, node processes) and time it.

Shared by the benchmark and the end-to-end tests: it records, after each
round, the wall time since the run started, the test accuracy and what
each node was asked to do, so time-to-accuracy can be read off.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hypergpu.adapt import AdaptivePlanner
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator import Coordinator
from hypergpu.events import EventBus
from hypergpu.launch.local import local_run
from hypergpu.protocol import Assignment
from hypergpu.round import Planner, RoundRecord


@dataclass(frozen=True)
class TrialRound:
    """One round of a trial, on the trial's clock."""

    round: int
    t_s: float  # since every node had joined
    duration_s: float
    accuracy: float | None  # None: not evaluated this round
    participants: list[int]
    reported: list[int]
    excluded: dict[int, str]
    assignments: dict[int, Assignment]
    loss: float | None = None  # held-out loss (None: not evaluated this round)
    samples: int = 0  # trained into this round's applied update


@dataclass
class TrialResult:
    accuracy: float | None
    wall_s: float
    rounds: list[TrialRound] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    overhead: float | None = None
    planner_status: dict[str, Any] | None = None
    params: np.ndarray | None = None  # the trained model's flat parameters at the end

    def time_to(self, accuracy: float) -> float | None:
        """Seconds from the start until the test accuracy first reached ``accuracy``."""
        for r in self.rounds:
            if r.accuracy is not None and r.accuracy >= accuracy:
                return r.t_s
        return None

    def time_to_loss(self, loss: float) -> float | None:
        """Seconds from the start until the held-out loss first fell to ``loss``."""
        for r in self.rounds:
            if r.loss is not None and r.loss <= loss:
                return r.t_s
        return None

    def final_accuracy(self, last: int = 1) -> float | None:
        """Mean test accuracy of the last ``last`` evaluated rounds."""
        evaluated = [r.accuracy for r in self.rounds if r.accuracy is not None][-last:]
        return sum(evaluated) / len(evaluated) if evaluated else None


async def run_trial(config: HyperGPUConfig, planner: Planner | None = None, log_dir: Path | None = None, *,
                    events: EventBus | None = None) -> TrialResult:
    """Trains ``config`` locally with ``planner`` (default: the configured one), without the chain.

    Give ``events`` to have a planner built with ``publish=events.publish`` report to the run's bus.
    """
    rounds: list[TrialRound] = []
    started: list[float] = []

    def follow(_: Coordinator, record: RoundRecord) -> None:
        rounds.append(TrialRound(
            round=record.round, t_s=time.perf_counter() - started[0], duration_s=record.duration_s,
            accuracy=record.test_accuracy, participants=list(record.participants), reported=list(record.reported),
            excluded=dict(record.excluded), assignments=dict(record.assignments),
            loss=record.test_loss, samples=record.samples if record.applied else 0,
        ))

    async with local_run(config, log_dir=log_dir, events=events, planner=planner, observers=[follow],
                         chain=False) as run:
        coord = run.coordinator
        # The clock starts when training can start: every node has joined.
        waiter = asyncio.ensure_future(run.train())
        while len(coord.registry.alive()) < config.nodes.count and not waiter.done() and coord.round == 0:
            await asyncio.sleep(0.01)
        started.append(time.perf_counter())
        summary = await waiter
    used = coord.planner
    return TrialResult(
        accuracy=summary.accuracy,
        wall_s=summary.wall_s,
        rounds=rounds,
        nodes=summary.nodes,
        events=[e.as_dict() for e in coord.events.since(0)],
        overhead=used.overhead if isinstance(used, AdaptivePlanner) else None,
        planner_status=used.status(),
        params=coord.model.flat_parameters(),
    )
