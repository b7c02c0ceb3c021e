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

from hypergpu.config.schema import HyperGPUConfig


@dataclass
class TrialResult:
    accuracy: float | None
    wall_s: float
    rounds: list[dict[str, Any]] = field(default_factory=list)  # per round: t_s, accuracy, participants, ...
    nodes: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    overhead: float | None = None
    planner_status: dict[str, Any] | None = None

    def time_to(self, accuracy: float) -> float | None:
        """Seconds from the start until the test accuracy first reached ``accuracy``."""
        for r in self.rounds:
            if r["accuracy"] is not None and r["accuracy"] >= accuracy:
                return float(r["t_s"])
        return None

    def final_accuracy(self, last: int = 1) -> float | None:
        """Mean test accuracy of the last ``last`` evaluated rounds."""
        evaluated = [r["accuracy"] for r in self.rounds if r["accuracy"] is not None][-last:]
        return sum(evaluated) / len(evaluated) if evaluated else None


async def run_trial(config: HyperGPUConfig, planner: Any = None, log_dir: Path | None = None) -> TrialResult:
    from hypergpu.cluster import LocalNodes
    from hypergpu.coordinator import Coordinator

    cfg = config.model_copy(update={"coordinator": config.coordinator.model_copy(update={"port": 0})})
    coord = Coordinator(cfg, planner=planner)
    join = await coord.start()
    nodes = LocalNodes(cfg, join, coord.token, log_dir)
    nodes.start_all()
    rounds: list[dict[str, Any]] = []
    started: list[float] = []

    def follow(_: Any, record: dict[str, Any]) -> None:
        rounds.append({
            "round": record["round"],
            "t_s": time.perf_counter() - started[0],
            "duration_s": record["duration_s"],
            "accuracy": record.get("test_accuracy"),
            "participants": record["participants"],
            "reported": record["reported"],
            "excluded": record["excluded"],
            "assignments": record["assignments"],
        })

    coord.observers.append(follow)
    try:
        # The clock starts when training can start: every node has joined.
        waiter = asyncio.ensure_future(coord.run())
        while len(coord.registry.alive()) < cfg.nodes.count and not waiter.done() and coord.round == 0:
            await asyncio.sleep(0.01)
        started.append(time.perf_counter())
        summary = await waiter
    finally:
        await coord.close()
        await asyncio.to_thread(nodes.stop)
    status = planner.status() if hasattr(planner, "status") else None
    return TrialResult(
        accuracy=summary.accuracy,
        wall_s=summary.wall_s,
        rounds=rounds,
        nodes=summary.nodes,
        events=[e.as_dict() for e in coord.events.since(0)],
        overhead=getattr(planner, "overhead", None),
        planner_status=status,
    )
